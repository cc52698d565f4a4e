//! Response bodies: nothing, a small buffer, or a blob handed to hyper in
//! slices of its mapping (each slice is a refcount, not a copy).

use bytes::Bytes;
use http_body::{Frame, SizeHint};
use std::convert::Infallible;
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
}

impl Body {
    pub fn full(b: impl Into<Bytes>) -> Body {
        Body::Bytes(b.into())
    }
}

impl http_body::Body for Body {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = self.get_mut();
        match this {
            Body::Empty => Poll::Ready(None),
            Body::Bytes(b) if b.is_empty() => Poll::Ready(None),
            Body::Bytes(b) => {
                let n = b.len().min(BLOB_FRAME);
                Poll::Ready(Some(Ok(Frame::data(b.split_to(n)))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Body::Empty => true,
            Body::Bytes(b) => b.is_empty(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Body::Empty => SizeHint::with_exact(0),
            Body::Bytes(b) => SizeHint::with_exact(b.len() as u64),
        }
    }
}
