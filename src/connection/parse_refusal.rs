//! A body for the answers hyper writes by itself. When a request head
//! cannot be parsed because it is too long (a request line over 65,534
//! bytes: 414; a head beyond the read buffer: 431), hyper answers before
//! any handler runs, with an empty body. Every Wharf error is OCI JSON, so
//! this stream, just under hyper, gives that answer a body. The read
//! buffer (64 KiB) is smaller than a request line hyper would call too
//! long, so hyper says 431 for it; a 431 whose request line never ended
//! is answered as the 414 it is.
//!
//! Owns: recognising hyper's own 414/431 head and writing it with a body.
//! Must not: touch any other byte. Two conditions keep it off real
//! traffic: the head must be exactly hyper's (that status, `content-length:
//! 0`, head only), and at least `MAX_URI` bytes must have arrived since
//! the last byte went out (a long request still being read). A blob whose
//! bytes look like such a head is served to a short GET, so it never
//! meets both.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// hyper refuses longer request targets (the `http` crate's limit).
const MAX_URI: usize = u16::MAX as usize - 1;

pub struct ParseRefusalBody<S> {
    inner: S,
    read_since_write: usize,
    /// Whether a line feed arrived since the last write: the request
    /// line ended.
    line_ended: bool,
    /// The rewritten answer being written, and how much of it went out;
    /// with the length hyper asked to write, reported once it is done.
    pending: Option<(Vec<u8>, usize, usize)>,
}

impl<S> ParseRefusalBody<S> {
    pub fn new(inner: S) -> Self {
        ParseRefusalBody {
            inner,
            read_since_write: 0,
            line_ended: false,
            pending: None,
        }
    }
}

/// hyper's own head for `status`, as it would write it, turned into an OCI
/// error with a body (a 431 into a 414 when `line_ended` is false: the
/// request line alone was too long); `None` for any other bytes.
pub fn with_body(head: &[u8], line_ended: bool) -> Option<Vec<u8>> {
    let text = std::str::from_utf8(head).ok()?;
    const LONG_LINE: &str = "the request line is longer than 65,534 bytes";
    let (status, message, status_line) = if text.starts_with("HTTP/1.1 414 ") {
        (414, LONG_LINE, None)
    } else if text.starts_with("HTTP/1.1 431 ") && !line_ended {
        (414, LONG_LINE, Some("HTTP/1.1 414 URI Too Long"))
    } else if text.starts_with("HTTP/1.1 431 ") {
        (
            431,
            "the request head is larger than the server reads",
            None,
        )
    } else {
        return None;
    };
    let lower = text.to_ascii_lowercase();
    if !lower.contains("\r\ncontent-length: 0\r\n") || !text.ends_with("\r\n\r\n") {
        return None;
    }
    let body = format!(
        r#"{{"errors":[{{"code":"SIZE_INVALID","message":"{message}","detail":{{"status":{status}}}}}]}}"#
    );
    let head = text.trim_end_matches("\r\n");
    let mut out = String::new();
    for (i, line) in head.split("\r\n").enumerate() {
        if let (0, Some(replaced)) = (i, status_line) {
            out.push_str(replaced);
            out.push_str("\r\n");
        } else if line.to_ascii_lowercase().starts_with("content-length:") {
            out.push_str(&format!("content-length: {}\r\n", body.len()));
            out.push_str("content-type: application/json\r\n");
        } else {
            out.push_str(line);
            out.push_str("\r\n");
        }
    }
    out.push_str("\r\n");
    out.push_str(&body);
    Some(out.into_bytes())
}

impl<S: AsyncRead + Unpin> AsyncRead for ParseRefusalBody<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let filled = buf.filled().len();
        let polled = Pin::new(&mut this.inner).poll_read(cx, buf);
        let fresh = &buf.filled()[filled..];
        // Scanned only until the request line ends: a body is not read.
        if !this.line_ended && fresh.contains(&b'\n') {
            this.line_ended = true;
        }
        this.read_since_write = this.read_since_write.saturating_add(fresh.len());
        polled
    }
}

impl<S: AsyncWrite + Unpin> ParseRefusalBody<S> {
    /// Writes the rewritten answer to its end; then says `asked` bytes
    /// went out, as hyper expects of the head it gave.
    fn drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        while let Some((bytes, done, asked)) = &mut self.pending {
            if *done == bytes.len() {
                let asked = *asked;
                self.pending = None;
                return Poll::Ready(Ok(asked));
            }
            match Pin::new(&mut self.inner).poll_write(cx, &bytes[*done..]) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => *done += n,
                other => return other,
            }
        }
        Poll::Ready(Ok(0))
    }

    fn rewrite(&mut self, buf: &[u8]) -> Option<Vec<u8>> {
        (self.read_since_write >= MAX_URI)
            .then(|| with_body(buf, self.line_ended))
            .flatten()
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for ParseRefusalBody<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if this.pending.is_none() {
            if let Some(bytes) = this.rewrite(buf) {
                this.pending = Some((bytes, 0, buf.len()));
            }
        }
        if this.pending.is_some() {
            return this.drain(cx);
        }
        this.read_since_write = 0;
        this.line_ended = false;
        Pin::new(&mut this.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if this.pending.is_none() && this.read_since_write >= MAX_URI {
            let whole: Vec<u8> = bufs.iter().flat_map(|b| b.iter().copied()).collect();
            if let Some(bytes) = this.rewrite(&whole) {
                this.pending = Some((bytes, 0, whole.len()));
            }
        }
        if this.pending.is_some() {
            return this.drain(cx);
        }
        this.read_since_write = 0;
        this.line_ended = false;
        Pin::new(&mut this.inner).poll_write_vectored(cx, bufs)
    }

    // The rest passes through: hyper's vectored writes stay vectored.
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_hypers_own_empty_414_and_431_get_a_body() {
        let hyper = b"HTTP/1.1 414 URI Too Long\r\ncontent-length: 0\r\ndate: Sat, 05 Dec 2026 10:00:00 GMT\r\n\r\n";
        let out = String::from_utf8(with_body(hyper, false).unwrap()).unwrap();
        let (head, body) = out.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 414 URI Too Long\r\n"), "{head}");
        assert!(
            head.contains(&format!("content-length: {}", body.len())),
            "{head}"
        );
        assert!(head.contains("content-type: application/json") && head.contains("date: "));
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(v["errors"][0]["code"], "SIZE_INVALID");
        let h431 = b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\n\r\n";
        let headers = String::from_utf8(with_body(h431, true).unwrap()).unwrap();
        assert!(headers.starts_with("HTTP/1.1 431 "), "{headers}");
        // A request line that never ended within the buffer: its 414.
        let line = String::from_utf8(with_body(h431, false).unwrap()).unwrap();
        assert!(line.starts_with("HTTP/1.1 414 URI Too Long\r\n"), "{line}");
        assert!(line.contains("longer than 65,534"), "{line}");
        // Ours (with a body), other statuses, and a head with its body.
        let ours = b"HTTP/1.1 414 URI Too Long\r\ncontent-length: 12\r\n\r\n";
        assert!(with_body(ours, false).is_none());
        assert!(with_body(
            b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n",
            false
        )
        .is_none());
        assert!(with_body(
            b"HTTP/1.1 414 URI Too Long\r\ncontent-length: 0\r\n\r\nx",
            false
        )
        .is_none());
    }
}
