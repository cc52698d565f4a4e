//! The commands' calls to a running server's operator endpoints
//! (`POST /_wharf/gc`, `/_wharf/retention`, `/_wharf/robots`, `GET
//! /readyz`): one HTTP/1.1
//! request over plain TCP, read to the end, each way bounded by 5 s.

use std::io::{Read, Write};
use std::net::ToSocketAddrs;
use std::time::Duration;

/// A server's answer: whether it was 200, its status line, its body.
pub struct Answer {
    pub ok: bool,
    pub status: String,
    pub body: String,
}

/// `host:port` from what an operator types (`http://` and a trailing
/// slash are accepted).
pub fn host_of(url: &str) -> &str {
    url.trim_start_matches("http://").trim_end_matches('/')
}

/// Sends `method path` to `host`, with Basic credentials for `user` (the
/// password from `WHARF_PASSWORD`, or the first line of the file
/// `WHARF_PASSWORD_FILE` names: never a flag, which `ps` would show) when
/// given.
pub fn call(host: &str, method: &str, path: &str, user: Option<&str>) -> std::io::Result<Answer> {
    send(host, method, path, user, None)
}

/// [`call`] with a JSON request body.
pub fn send(
    host: &str,
    method: &str,
    path: &str,
    user: Option<&str>,
    json: Option<&str>,
) -> std::io::Result<Answer> {
    use base64::Engine as _;
    let credentials = match user {
        Some(u) => {
            let password = password()?;
            let token = base64::engine::general_purpose::STANDARD.encode(format!("{u}:{password}"));
            format!("Authorization: Basic {token}\r\n")
        }
        None => String::new(),
    };
    let body = json.unwrap_or("");
    let content_type = match json {
        Some(_) => "Content-Type: application/json\r\n",
        None => "",
    };
    let timeout = Duration::from_secs(5);
    let addr = host
        .to_socket_addrs()?
        .next()
        .ok_or_else(|| std::io::Error::other("no address"))?;
    let mut s = std::net::TcpStream::connect_timeout(&addr, timeout)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\n{credentials}{content_type}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(request.as_bytes())?;
    let mut response = String::new();
    s.read_to_string(&mut response)?;
    let status = response.lines().next().unwrap_or("no answer").to_owned();
    Ok(Answer {
        ok: status.starts_with("HTTP/1.1 2"),
        body: response
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_owned())
            .unwrap_or_default(),
        status,
    })
}

/// The admin password: `WHARF_PASSWORD`, else the first line of the file
/// `WHARF_PASSWORD_FILE` names, else empty.
fn password() -> std::io::Result<String> {
    if let Ok(p) = std::env::var("WHARF_PASSWORD") {
        return Ok(p);
    }
    match std::env::var_os("WHARF_PASSWORD_FILE") {
        Some(f) => {
            let text = std::fs::read_to_string(&f).map_err(|e| {
                std::io::Error::new(
                    e.kind(),
                    format!(
                        "WHARF_PASSWORD_FILE {}: {e}",
                        std::path::Path::new(&f).display()
                    ),
                )
            })?;
            Ok(text.lines().next().unwrap_or("").to_owned())
        }
        None => Ok(String::new()),
    }
}
