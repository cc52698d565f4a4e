//! One keep-alive HTTP/1.1 connection to the registry, as one client of a
//! build farm holds it. Requests are sent one at a time; every response body
//! is read to the end and counted.

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;

pub struct Conn {
    host: String,
    sender: SendRequest<Full<Bytes>>,
}

pub struct Reply {
    pub status: StatusCode,
    pub headers: http::HeaderMap,
    pub body_len: u64,
    pub body: Option<Bytes>,
}

pub type Error = Box<dyn std::error::Error + Send + Sync>;

/// `Authorization` value every request carries (HTTP Basic), set once at
/// start-up from `--user`; unset: anonymous.
pub static AUTHORIZATION: std::sync::OnceLock<String> = std::sync::OnceLock::new();

impl Conn {
    pub async fn open(host: &str) -> Result<Conn, Error> {
        let stream = tokio::net::TcpStream::connect(host).await?;
        stream.set_nodelay(true)?;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(Conn {
            host: host.to_owned(),
            sender,
        })
    }

    /// Sends a request; keeps the body only when `keep_body` (small JSON),
    /// otherwise just counts its bytes.
    pub async fn send(
        &mut self,
        method: Method,
        path: &str,
        headers: &[(&str, String)],
        body: Bytes,
        keep_body: bool,
    ) -> Result<Reply, Error> {
        if self.sender.ready().await.is_err() {
            *self = Conn::open(&self.host.clone()).await?;
        }
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header("host", &self.host);
        if let Some(a) = AUTHORIZATION.get() {
            req = req.header("authorization", a);
        }
        for (k, v) in headers {
            req = req.header(*k, v);
        }
        let req = req.body(Full::new(body))?;
        let resp = self.sender.send_request(req).await?;
        let (parts, mut incoming) = resp.into_parts();
        let mut body_len = 0u64;
        let mut kept = Vec::new();
        while let Some(frame) = incoming.frame().await {
            if let Ok(data) = frame?.into_data() {
                body_len += data.len() as u64;
                if keep_body {
                    kept.extend_from_slice(&data);
                }
            }
        }
        Ok(Reply {
            status: parts.status,
            headers: parts.headers,
            body_len,
            body: keep_body.then(|| Bytes::from(kept)),
        })
    }
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub fn expect(self, status: u16, what: &str) -> Result<Reply, Error> {
        if self.status.as_u16() != status {
            return Err(format!("{what}: status {} (wanted {status})", self.status).into());
        }
        Ok(self)
    }
}
