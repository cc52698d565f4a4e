//! wharf-load: drives any OCI registry at a URL and reports ops/s, MB/s,
//! latency percentiles, errors, fairness across clients, and the server's
//! CPU time per MB when given its pid.
//!
//! Scenarios: push-mono, push-chunked, push-same, pull, pull-range,
//! blob-get, manifest-put, manifest-get, manifest-head, build-farm, tcp
//! (the loopback ceiling, served in-process), the seeded registry's
//! (`seed`, `manifest-get-seeded`, `blob-head-seeded`, `delete-big`,
//! `delete-small`: see `seeded`) and s3-put (an S3 endpoint's
//! own ingest: `--host` is the endpoint, WHARF_LOAD_S3_BUCKET and the AWS_*
//! keys say where). Each prints one `RESULT` line
//! that `loadtest/compare.sh` reads.

mod conn;
mod loopback;
mod payload;
mod scenario;
mod seeded;

use clap::Parser;
use scenario::{Params, Prepared};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Parser)]
#[command(about = "Load generator for OCI registries")]
struct Args {
    /// Registry address, host:port (plain HTTP). Several, comma-separated:
    /// nodes of one cluster; client i talks to node i mod n (setup uses the
    /// first).
    #[arg(long, default_value = "127.0.0.1:5000")]
    host: String,
    /// Scenario to run (see the crate doc).
    #[arg(long)]
    scenario: String,
    /// Concurrent clients, one keep-alive connection each.
    #[arg(long, default_value_t = 8)]
    clients: usize,
    /// Total operations across all clients.
    #[arg(long, default_value_t = 64)]
    ops: usize,
    /// Blob size in bytes (pushes, pulls; base layers in build-farm).
    #[arg(long, default_value_t = 16 << 20)]
    size: usize,
    /// PATCH size for push-chunked, range size for pull-range, unique layer
    /// size for build-farm.
    #[arg(long, default_value_t = 4 << 20)]
    chunk: usize,
    /// Server process id, to report its CPU time per MB.
    #[arg(long)]
    pid: Option<u32>,
    /// Tag for repository names, so runs do not collide.
    #[arg(long, default_value = "run")]
    run: String,
    /// Give up on the run after this many seconds.
    #[arg(long, default_value_t = 600)]
    timeout: u64,
    /// Send HTTP Basic credentials on every request, as logged-in clients
    /// do; the password is read from WHARF_LOAD_PASSWORD.
    #[arg(long)]
    user: Option<String>,
    /// Seeded layout: small repositories the manifests spread over.
    #[arg(long, default_value_t = 1000)]
    repos: usize,
    /// Seeded layout: how many manifests were seeded (reads pick among them).
    #[arg(long, default_value_t = 0)]
    seeded: usize,
    /// Seeded layout: every Nth manifest goes to the one big repository.
    #[arg(long, default_value_t = 10)]
    big_every: usize,
}

/// A `VmRSS:`-style field of /proc/<pid>/status, in KiB.
fn status_kib(pid: u32, field: &str) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find(|l| l.starts_with(field))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// utime + stime of a process, in seconds.
fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after_comm = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = after_comm.split_whitespace().collect();
    let ticks: f64 = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Some(ticks / hz)
}

struct ClientStats {
    latencies_us: Vec<u64>,
    bytes: u64,
    errors: usize,
    first_error: Option<String>,
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i] as f64 / 1000.0
}

#[tokio::main]
async fn main() {
    let a = Args::parse();
    if let Some(user) = &a.user {
        use base64::Engine as _;
        let password = std::env::var("WHARF_LOAD_PASSWORD").unwrap_or_default();
        let basic = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        let _ = conn::AUTHORIZATION.set(format!("Basic {basic}"));
    }
    let p = Params {
        size: a.size,
        chunk: a.chunk,
        ops: a.ops,
        clients: a.clients,
        run: a.run.clone(),
        repos: a.repos,
        seeded: a.seeded,
        big_every: a.big_every,
    };
    let hosts: Vec<String> = a.host.split(',').map(str::to_owned).collect();
    let first = hosts[0].clone();
    let prep = match scenario::prepare(&a.scenario, &first, &p).await {
        Ok(p) => Arc::new(p),
        Err(e) => {
            eprintln!("wharf-load: setup of {} failed: {e}", a.scenario);
            std::process::exit(2);
        }
    };
    let host_of = |client: usize| prep.host(&hosts[client % hosts.len()]).to_owned();
    let next = Arc::new(AtomicUsize::new(0));
    let cpu0 = a.pid.and_then(cpu_seconds);
    let rss0 = a.pid.and_then(|p| status_kib(p, "VmRSS:"));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for client in 0..a.clients {
        let (prep, next, host, ops) = (prep.clone(), next.clone(), host_of(client), a.ops);
        tasks.push(tokio::spawn(async move {
            let mut st = ClientStats {
                latencies_us: Vec::new(),
                bytes: 0,
                errors: 0,
                first_error: None,
            };
            let mut conn = match conn::Conn::open(&host).await {
                Ok(c) => c,
                Err(e) => {
                    st.errors += 1;
                    st.first_error = Some(e.to_string());
                    return st;
                }
            };
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= ops {
                    break;
                }
                let t = Instant::now();
                match scenario::run_op(&prep, &mut conn, client, i).await {
                    Ok(b) => {
                        st.bytes += b;
                        st.latencies_us.push(t.elapsed().as_micros() as u64);
                    }
                    Err(e) => {
                        st.errors += 1;
                        st.first_error.get_or_insert(e.to_string());
                        if let Ok(c) = conn::Conn::open(&host).await {
                            conn = c;
                        }
                    }
                }
            }
            st
        }));
    }
    let joined = tokio::time::timeout(Duration::from_secs(a.timeout), futures_join(tasks)).await;
    let secs = start.elapsed().as_secs_f64();
    let Ok(stats) = joined else {
        eprintln!(
            "wharf-load: {} did not finish within {}s",
            a.scenario, a.timeout
        );
        std::process::exit(3);
    };
    let cpu = match (a.pid.and_then(cpu_seconds), cpu0) {
        (Some(c1), Some(c0)) => Some(c1 - c0),
        _ => None,
    };
    let rss = a
        .pid
        .and_then(|p| Some((rss0?, status_kib(p, "VmRSS:")?, status_kib(p, "VmHWM:")?)));
    report(&a, &prep, stats, secs, cpu, rss);
}

async fn futures_join(tasks: Vec<tokio::task::JoinHandle<ClientStats>>) -> Vec<ClientStats> {
    let mut out = Vec::new();
    for t in tasks {
        if let Ok(s) = t.await {
            out.push(s);
        }
    }
    out
}

fn report(
    a: &Args,
    _prep: &Prepared,
    stats: Vec<ClientStats>,
    secs: f64,
    cpu: Option<f64>,
    rss: Option<(u64, u64, u64)>,
) {
    let mut all: Vec<u64> = stats
        .iter()
        .flat_map(|s| s.latencies_us.iter().copied())
        .collect();
    all.sort_unstable();
    let ok = all.len();
    let errors: usize = stats.iter().map(|s| s.errors).sum();
    let bytes: u64 = stats.iter().map(|s| s.bytes).sum();
    let per_client: Vec<usize> = stats.iter().map(|s| s.latencies_us.len()).collect();
    let mb = bytes as f64 / 1e6;
    let cpu_ms_per_mb = match cpu {
        Some(c) if mb > 0.0 => format!("{:.2}", c * 1000.0 / mb),
        _ => "-".into(),
    };
    if let Some(e) = stats.iter().find_map(|s| s.first_error.clone()) {
        eprintln!("wharf-load: first error: {e}");
    }
    println!(
        "RESULT scenario={} clients={} ok={ok} errors={errors} secs={secs:.3} ops_s={:.1} mb_s={:.1} p50_ms={:.2} p99_ms={:.2} max_ms={:.2} cpu_s={} cpu_ms_per_mb={cpu_ms_per_mb} min_client_ops={} max_client_ops={} rss_before_kib={} rss_after_kib={} rss_peak_kib={}",
        a.scenario,
        a.clients,
        ok as f64 / secs,
        mb / secs,
        percentile(&all, 0.5),
        percentile(&all, 0.99),
        all.last().map_or(0.0, |m| *m as f64 / 1000.0),
        cpu.map_or("-".into(), |c| format!("{c:.2}")),
        per_client.iter().min().unwrap_or(&0),
        per_client.iter().max().unwrap_or(&0),
        rss.map_or("-".into(), |r| r.0.to_string()),
        rss.map_or("-".into(), |r| r.1.to_string()),
        rss.map_or("-".into(), |r| r.2.to_string()),
    );
    if errors > 0 {
        std::process::exit(1);
    }
}
