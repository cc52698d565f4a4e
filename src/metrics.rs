//! The registry's Prometheus metrics: one `Metrics` value, built at start-up
//! and shared; recorders are plain counter/histogram updates (atomics, no
//! locks, no allocation on the request path beyond label lookup).
//!
//! Owns: metric names, labels and buckets, and the text exposition.
//! Must not: serve HTTP (the ops listener does) or decide anything.

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

pub struct Metrics {
    registry: Registry,
    pub requests: IntCounterVec,
    pub request_seconds: HistogramVec,
    pub received_bytes: IntCounter,
    pub sent_bytes: IntCounter,
    pub upload_sessions_open: IntGauge,
    pub commit_seconds: Histogram,
    pub blob_commits: IntCounterVec,
    pub gc_runs: IntCounterVec,
    pub gc_freed_bytes: IntCounter,
    pub store_bytes: IntGauge,
    pub store_blobs: IntGauge,
    pub auth_failures: IntCounterVec,
    pub rate_limited: IntCounter,
    pub connections_open: IntGauge,
    pub connections_cut: IntCounterVec,
    pub tls_reloads: IntCounterVec,
    pub disk_full: IntGauge,
    pub read_cache: ReadCacheMetrics,
    pub proxy: ProxyMetrics,
    pub notifications: NotificationMetrics,
    pub database: DatabaseMetrics,
    /// `[[quota]]` usage and limits by quota (its pattern), set at each
    /// scrape.
    pub quota_used: IntGaugeVec,
    pub quota_limit: IntGaugeVec,
}

/// The PostgreSQL pool's figures (cluster mode), copied in at each scrape.
pub struct DatabaseMetrics {
    /// Connections by state: in_use, idle; and the pool's maximum.
    pub connections: IntGaugeVec,
    pub connections_max: IntGauge,
    /// Callers waiting for a connection now.
    pub waiting: IntGauge,
    pub checkouts: IntCounter,
    pub wait_seconds: prometheus::Counter,
}

/// What webhook delivery reports, by endpoint URL.
pub struct NotificationMetrics {
    pub pending: IntGaugeVec,
    pub dropped: IntGaugeVec,
    pub delivered: IntCounterVec,
    pub failed: IntCounterVec,
}

/// What the pull-through cache reports, by `[[proxy]]` prefix.
pub struct ProxyMetrics {
    /// Manifest and blob requests under a prefix: result=hit (served from
    /// what is cached), miss (fetched from upstream) or stale (served
    /// cached while the upstream failed).
    pub requests: IntCounterVec,
    pub upstream_bytes: IntCounterVec,
    /// Upstream calls that failed: kind=unavailable (down, 5xx, 429),
    /// invalid (wrong digest, cut body, bad answer), denied (401/403).
    pub upstream_errors: IntCounterVec,
}

/// What the object-store mode's read cache reports (see
/// `storage::read_cache`); cloned into it, registered here.
#[derive(Clone)]
pub struct ReadCacheMetrics {
    pub reads: IntCounterVec,
    pub copies: IntCounterVec,
    pub bytes: IntGauge,
}

impl ReadCacheMetrics {
    pub fn new() -> Result<ReadCacheMetrics, MetricsError> {
        Ok(ReadCacheMetrics {
            reads: IntCounterVec::new(
                Opts::new(
                    "read_cache_reads_total",
                    "Blob and manifest reads in object-store mode: result=hit (served from this node's copy) or miss (from the bucket).",
                ),
                &["result"],
            )?,
            copies: IntCounterVec::new(
                Opts::new(
                    "read_cache_copies_total",
                    "Copies the read cache started: result=kept, dropped (fell behind its response, cut short, or failed) or mismatch (bytes did not hash to the digest).",
                ),
                &["result"],
            )?,
            bytes: IntGauge::new("read_cache_bytes", "Bytes held by this node's read cache.")?,
        })
    }
}

#[derive(Debug, thiserror::Error)]
#[error("metrics: {0}")]
pub struct MetricsError(#[from] prometheus::Error);

const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0,
];

impl Metrics {
    pub fn new() -> Result<Metrics, MetricsError> {
        let registry = Registry::new_custom(Some("wharf".into()), None)?;
        let requests = IntCounterVec::new(
            Opts::new(
                "http_requests_total",
                "Requests answered, by route, method and status.",
            ),
            &["route", "method", "status"],
        )?;
        let request_seconds = HistogramVec::new(
            HistogramOpts::new(
                "http_request_duration_seconds",
                "Time from request head to response head, by route.",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["route"],
        )?;
        let received_bytes = IntCounter::new(
            "http_received_bytes_total",
            "Request-body bytes read (blob uploads and manifests).",
        )?;
        let sent_bytes = IntCounter::new(
            "http_sent_bytes_total",
            "Response-body bytes sent (by declared length).",
        )?;
        let upload_sessions_open =
            IntGauge::new("upload_sessions_open", "Upload sessions currently open.")?;
        let commit_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "blob_commit_duration_seconds",
                "Time to verify, store and link a completed upload.",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
        )?;
        let blob_commits = IntCounterVec::new(
            Opts::new(
                "blob_commits_total",
                "Completed uploads: result=stored (new content) or deduplicated.",
            ),
            &["result"],
        )?;
        let gc_runs = IntCounterVec::new(
            Opts::new(
                "gc_runs_total",
                "Garbage collections, by result (ok, error).",
            ),
            &["result"],
        )?;
        let gc_freed_bytes = IntCounter::new(
            "gc_freed_bytes_total",
            "Blob bytes freed by garbage collection.",
        )?;
        let store_bytes = IntGauge::new("store_bytes", "Bytes of blob content in the store.")?;
        let store_blobs = IntGauge::new("store_blobs", "Blobs in the store.")?;
        let auth_failures = IntCounterVec::new(
            Opts::new(
                "auth_failures_total",
                "Refused requests: kind=unauthenticated (401) or denied (403).",
            ),
            &["kind"],
        )?;
        let rate_limited = IntCounter::new(
            "rate_limited_total",
            "Requests refused with 429 by the per-client rate limit.",
        )?;
        let connections_open = IntGauge::new("connections_open", "Client connections open.")?;
        let connections_cut = IntCounterVec::new(
            Opts::new(
                "connections_cut_total",
                "Connections closed by the server: reason=idle, tls_handshake, per_client_limit.",
            ),
            &["reason"],
        )?;
        let quota_used = IntGaugeVec::new(
            Opts::new("quota_used_bytes", "Bytes a quota's repositories hold."),
            &["quota"],
        )?;
        let quota_limit = IntGaugeVec::new(
            Opts::new("quota_limit_bytes", "A quota's limit."),
            &["quota"],
        )?;
        let tls_reloads = IntCounterVec::new(
            Opts::new("tls_reloads_total", "Certificate reloads, by result."),
            &["result"],
        )?;
        let disk_full = IntGauge::new(
            "disk_full",
            "1 while the data folder is full (uploads and manifests refused with 507).",
        )?;
        let read_cache = ReadCacheMetrics::new()?;
        let proxy = ProxyMetrics {
            requests: IntCounterVec::new(
                Opts::new(
                    "proxy_requests_total",
                    "Manifest and blob reads under a [[proxy]] prefix: result=hit, miss or stale (cached copy served while the upstream failed).",
                ),
                &["prefix", "kind", "result"],
            )?,
            upstream_bytes: IntCounterVec::new(
                Opts::new(
                    "proxy_upstream_bytes_total",
                    "Blob and manifest bytes received from upstream registries.",
                ),
                &["prefix"],
            )?,
            upstream_errors: IntCounterVec::new(
                Opts::new(
                    "proxy_upstream_errors_total",
                    "Failed upstream calls: kind=unavailable (down, 5xx, 429), invalid (bad or cut answer, wrong digest) or denied (401, 403).",
                ),
                &["prefix", "kind"],
            )?,
        };
        let notifications = NotificationMetrics {
            pending: IntGaugeVec::new(
                Opts::new(
                    "notifications_pending",
                    "Events queued for an endpoint (as of its last delivery round).",
                ),
                &["endpoint"],
            )?,
            dropped: IntGaugeVec::new(
                Opts::new(
                    "notifications_dropped",
                    "Events dropped because the endpoint's queue was full (max_pending), since the queue was created.",
                ),
                &["endpoint"],
            )?,
            delivered: IntCounterVec::new(
                Opts::new(
                    "notifications_delivered_total",
                    "Events an endpoint accepted (2xx).",
                ),
                &["endpoint"],
            )?,
            failed: IntCounterVec::new(
                Opts::new(
                    "notifications_failed_total",
                    "Delivery attempts that failed (error, non-2xx, timeout); each is retried.",
                ),
                &["endpoint"],
            )?,
        };
        let database = DatabaseMetrics {
            connections: IntGaugeVec::new(
                Opts::new(
                    "postgres_connections",
                    "PostgreSQL connections of this node's pool, by state (in_use, idle).",
                ),
                &["state"],
            )?,
            connections_max: IntGauge::new(
                "postgres_connections_max",
                "The pool's size limit (metadata.pool_size).",
            )?,
            waiting: IntGauge::new(
                "postgres_pool_waiting",
                "Callers waiting for a free PostgreSQL connection.",
            )?,
            checkouts: IntCounter::new(
                "postgres_pool_checkouts_total",
                "Connections taken from the pool.",
            )?,
            wait_seconds: prometheus::Counter::new(
                "postgres_pool_wait_seconds_total",
                "Time callers spent waiting for a connection (including new logins).",
            )?,
        };
        let m = Metrics {
            database,
            proxy,
            notifications,
            read_cache,
            registry,
            requests,
            request_seconds,
            received_bytes,
            sent_bytes,
            upload_sessions_open,
            commit_seconds,
            blob_commits,
            gc_runs,
            gc_freed_bytes,
            store_bytes,
            store_blobs,
            auth_failures,
            rate_limited,
            connections_open,
            connections_cut,
            tls_reloads,
            quota_used,
            quota_limit,
            disk_full,
        };
        let r = &m.registry;
        r.register(Box::new(m.requests.clone()))?;
        r.register(Box::new(m.request_seconds.clone()))?;
        r.register(Box::new(m.received_bytes.clone()))?;
        r.register(Box::new(m.sent_bytes.clone()))?;
        r.register(Box::new(m.upload_sessions_open.clone()))?;
        r.register(Box::new(m.disk_full.clone()))?;
        r.register(Box::new(m.commit_seconds.clone()))?;
        r.register(Box::new(m.blob_commits.clone()))?;
        r.register(Box::new(m.gc_runs.clone()))?;
        r.register(Box::new(m.gc_freed_bytes.clone()))?;
        r.register(Box::new(m.store_bytes.clone()))?;
        r.register(Box::new(m.store_blobs.clone()))?;
        r.register(Box::new(m.auth_failures.clone()))?;
        r.register(Box::new(m.rate_limited.clone()))?;
        r.register(Box::new(m.connections_open.clone()))?;
        r.register(Box::new(m.connections_cut.clone()))?;
        r.register(Box::new(m.tls_reloads.clone()))?;
        r.register(Box::new(m.read_cache.reads.clone()))?;
        r.register(Box::new(m.read_cache.copies.clone()))?;
        r.register(Box::new(m.read_cache.bytes.clone()))?;
        r.register(Box::new(m.proxy.requests.clone()))?;
        r.register(Box::new(m.proxy.upstream_bytes.clone()))?;
        r.register(Box::new(m.proxy.upstream_errors.clone()))?;
        r.register(Box::new(m.notifications.pending.clone()))?;
        r.register(Box::new(m.notifications.dropped.clone()))?;
        r.register(Box::new(m.notifications.delivered.clone()))?;
        r.register(Box::new(m.notifications.failed.clone()))?;
        r.register(Box::new(m.database.connections.clone()))?;
        r.register(Box::new(m.database.connections_max.clone()))?;
        r.register(Box::new(m.database.waiting.clone()))?;
        r.register(Box::new(m.database.checkouts.clone()))?;
        r.register(Box::new(m.database.wait_seconds.clone()))?;
        r.register(Box::new(m.quota_used.clone()))?;
        r.register(Box::new(m.quota_limit.clone()))?;
        Ok(m)
    }

    /// The text exposition format (version 0.0.4).
    pub fn render(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(16 * 1024);
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        out
    }

    pub fn record_completed(
        &self,
        placement: crate::content::Placement,
        size: u64,
        took: std::time::Duration,
    ) {
        self.commit_seconds.observe(took.as_secs_f64());
        match placement {
            crate::content::Placement::Stored => {
                self.blob_commits.with_label_values(&["stored"]).inc();
                self.store_bytes.add(size as i64);
                self.store_blobs.inc();
            }
            crate::content::Placement::Deduplicated => {
                self.blob_commits.with_label_values(&["deduplicated"]).inc();
            }
        }
    }

    /// A garbage collection run: whether it finished, and what it freed
    /// (nothing for a dry run).
    pub fn record_gc(&self, ok: bool, bytes_freed: u64, blobs_removed: u64) {
        if !ok {
            self.gc_runs.with_label_values(&["error"]).inc();
            return;
        }
        self.gc_runs.with_label_values(&["ok"]).inc();
        self.gc_freed_bytes.inc_by(bytes_freed);
        self.store_bytes.sub(bytes_freed as i64);
        self.store_blobs.sub(blobs_removed as i64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_family_with_the_prefix() {
        let m = Metrics::new().unwrap();
        m.requests
            .with_label_values(&["blob_get", "GET", "200"])
            .inc();
        m.blob_commits.with_label_values(&["deduplicated"]).inc();
        let text = String::from_utf8(m.render()).unwrap();
        assert!(text.contains(
            "wharf_http_requests_total{method=\"GET\",route=\"blob_get\",status=\"200\"} 1"
        ));
        assert!(text.contains("wharf_blob_commits_total{result=\"deduplicated\"} 1"));
        assert!(text.contains("# TYPE wharf_store_bytes gauge"));
    }
}
