//! `wharf healthcheck`: exit 0 when the server answers `/readyz` with 200
//! (a container's HEALTHCHECK; minimal images have no curl). It asks the
//! ops listener when `[metrics] addr` is set, else the registry port,
//! which must then be plain HTTP.

use super::admin;
use crate::config::Config;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::process::ExitCode;

pub fn run(cfg: &Config, url: Option<&str>) -> ExitCode {
    let local = |a: SocketAddr| {
        let ip: IpAddr = match a.ip() {
            ip if ip.is_unspecified() && ip.is_ipv4() => Ipv4Addr::LOCALHOST.into(),
            ip if ip.is_unspecified() => Ipv6Addr::LOCALHOST.into(),
            ip => ip,
        };
        SocketAddr::new(ip, a.port()).to_string()
    };
    let host = match (url, cfg.metrics.addr, &cfg.tls) {
        (Some(u), _, _) => admin::host_of(u).to_owned(),
        (None, Some(ops), _) => local(ops),
        (None, None, None) => local(cfg.addr),
        (None, None, Some(_)) => {
            eprintln!("wharf healthcheck: the registry port speaks TLS; set [metrics] addr (plain HTTP) or --url");
            return ExitCode::from(2);
        }
    };
    match admin::call(&host, "GET", "/readyz", None) {
        Ok(a) if a.ok => ExitCode::SUCCESS,
        Ok(a) => {
            eprintln!("wharf healthcheck: {host}: {}", a.status);
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("wharf healthcheck: {host}: {e}");
            ExitCode::FAILURE
        }
    }
}
