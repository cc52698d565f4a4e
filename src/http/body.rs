//! Response bodies: nothing, a small buffer, a blob handed to hyper in
//! slices of its mapping (each slice is a refcount, not a copy), or an
//! object store's answer passed through frame by frame, or a pull-through
//! cache's blob as it arrives.

use crate::storage::read_cache::CacheFill;
use bytes::Bytes;
use http_body::{Frame, SizeHint};
use std::pin::Pin;
use std::task::{Context, Poll};

/// Size of each frame a blob is streamed in: big enough to keep syscalls
/// few, small enough that one response does not pin a whole large mapping
/// in the socket buffer at once.
const BLOB_FRAME: usize = 1 << 20;

pub enum Body {
    Empty,
    /// A buffer sent as one frame, or a blob sent in `BLOB_FRAME` slices.
    Bytes(Bytes),
    /// An object store's body: `left` bytes are expected; an error or an
    /// early end cuts the response (the client sees a short body, never
    /// wrong bytes).
    Stream {
        body: hyper::body::Incoming,
        left: u64,
        /// The node's read-cache copy, fed each frame as it passes; given
        /// up (dropped) as soon as it cannot keep up.
        fill: Option<CacheFill>,
    },
    /// A blob arriving from a pull-through cache's upstream, read from its
    /// spool as it is written: `left` bytes are expected; the channel
    /// closing early cuts the response.
    Feed {
        rx: tokio::sync::mpsc::Receiver<Bytes>,
        left: u64,
    },
}

impl Body {
    pub fn full(b: impl Into<Bytes>) -> Body {
        Body::Bytes(b.into())
    }
}

impl http_body::Body for Body {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        match this {
            Body::Empty => Poll::Ready(None),
            Body::Bytes(b) if b.is_empty() => Poll::Ready(None),
            Body::Bytes(b) => {
                let n = b.len().min(BLOB_FRAME);
                Poll::Ready(Some(Ok(Frame::data(b.split_to(n)))))
            }
            Body::Stream { body, left, fill } => {
                match std::task::ready!(Pin::new(body).poll_frame(cx)) {
                    Some(Ok(frame)) => {
                        let Ok(data) = frame.into_data() else {
                            // Trailers: nothing a blob carries; skip.
                            cx.waker().wake_by_ref();
                            return Poll::Pending;
                        };
                        *left = left.saturating_sub(data.len() as u64);
                        if fill.as_ref().is_some_and(|f| !f.offer(&data)) {
                            *fill = None;
                        }
                        if *left == 0 {
                            if let Some(f) = fill.take() {
                                f.finish();
                            }
                        }
                        Poll::Ready(Some(Ok(Frame::data(data))))
                    }
                    other => Poll::Ready(other),
                }
            }
            Body::Feed { left: 0, .. } => Poll::Ready(None),
            Body::Feed { rx, left } => match std::task::ready!(rx.poll_recv(cx)) {
                Some(data) => {
                    *left = left.saturating_sub(data.len() as u64);
                    Poll::Ready(Some(Ok(Frame::data(data))))
                }
                None => Poll::Ready(None),
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Body::Empty => true,
            Body::Bytes(b) => b.is_empty(),
            Body::Stream { left, .. } | Body::Feed { left, .. } => *left == 0,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Body::Empty => SizeHint::with_exact(0),
            Body::Bytes(b) => SizeHint::with_exact(b.len() as u64),
            Body::Stream { left, .. } | Body::Feed { left, .. } => SizeHint::with_exact(*left),
        }
    }
}
