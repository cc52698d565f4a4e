//! The operator listener: Prometheus metrics that move with traffic,
//! health and readiness, and nothing of it on the registry address.

use crate::common::*;

fn metric(text: &str, line_start: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(line_start))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

/// One metric's value in a fresh scrape of the ops listener at `ops`.
pub(crate) async fn scraped(ops: &str, line_start: &str) -> f64 {
    let text = reqwest::get(format!("{ops}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    metric(&text, line_start)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_move_with_traffic() {
    if skip_in_cluster("each node has its own /metrics") {
        return;
    }
    let reg =
        TestRegistry::start_with(|c| c.metrics.addr = Some("127.0.0.1:0".parse().unwrap())).await;
    let ops = format!(
        "http://{}",
        reg.server.as_ref().unwrap().metrics_addr().unwrap()
    );
    let scrape = || async {
        let r = reqwest::get(format!("{ops}/metrics")).await.unwrap();
        assert_eq!(r.status(), 200);
        assert!(header(&r, "content-type")
            .unwrap()
            .starts_with("text/plain"));
        r.text().await.unwrap()
    };
    let before = scrape().await;
    let data = payload(300_000, 5);
    reg.push_mono("m/x", &data).await;
    reg.push_mono("m/y", &data).await;
    let open = reg.start_upload("m/z").await;
    reg.get_blob("m/x", &digest(&data))
        .await
        .bytes()
        .await
        .unwrap();
    let _ = reg.get("/v2/m/x/manifests/nope").await;
    let after = scrape().await;

    let grew = |name: &str| metric(&after, name) - metric(&before, name);
    assert_eq!(grew("wharf_blob_commits_total{result=\"stored\"}"), 1.0);
    assert_eq!(
        grew("wharf_blob_commits_total{result=\"deduplicated\"}"),
        1.0
    );
    assert!(grew("wharf_http_received_bytes_total") >= 600_000.0);
    assert!(grew("wharf_http_sent_bytes_total") >= 300_000.0);
    assert_eq!(
        grew("wharf_http_requests_total{method=\"GET\",route=\"manifest\",status=\"404\"}"),
        1.0
    );
    assert_eq!(
        grew("wharf_http_requests_total{method=\"POST\",route=\"upload_start\",status=\"201\"}"),
        2.0
    );
    assert!(metric(&after, "wharf_store_bytes") >= 300_000.0);
    assert_eq!(metric(&after, "wharf_upload_sessions_open"), 1.0);
    assert_eq!(grew("wharf_blob_commit_duration_seconds_count"), 2.0);
    assert!(after.contains("wharf_http_request_duration_seconds_bucket{route=\"blob\""));
    assert!(after.contains("wharf_connections_open"));

    // A made-up method does not mint a new series.
    let (status, _) = raw_request(
        &reg.base,
        "FROBNICATE /v2/ HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status, 405);
    let text = scrape().await;
    assert!(!text.contains("FROBNICATE"));
    assert!(text.contains("method=\"other\""));

    // GC runs are counted.
    let r = reg
        .client
        .post(reg.url("/_wharf/gc?dry_run=true"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        metric(&scrape().await, "wharf_gc_runs_total{result=\"ok\"}"),
        1.0
    );
    assert_eq!(reg.delete(&open).await.status(), 204);

    // Health and readiness on the operator address (and on the registry
    // port for balancers that probe only that); no metrics there.
    for path in ["/healthz", "/readyz"] {
        assert_eq!(
            reqwest::get(format!("{ops}{path}")).await.unwrap().status(),
            200
        );
        assert_eq!(reg.get(path).await.status(), 200);
    }
    assert_eq!(reg.get("/metrics").await.status(), 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_gauges_count_existing_content_after_restart() {
    if skip_in_cluster("each node has its own /metrics") {
        return;
    }
    let mut reg =
        TestRegistry::start_with(|c| c.metrics.addr = Some("127.0.0.1:0".parse().unwrap())).await;
    let data = payload(123_456, 8);
    reg.push_mono("m/x", &data).await;
    reg.server.take().unwrap().shutdown().await;
    let mut cfg = config_for(reg.root.clone());
    cfg.metrics.addr = Some("127.0.0.1:0".parse().unwrap());
    let server = wharf::Server::start(cfg).await.unwrap();
    let ops = format!("http://{}", server.metrics_addr().unwrap());
    let mut bytes = 0.0;
    for _ in 0..50 {
        bytes = scraped(&ops, "wharf_store_bytes").await;
        if bytes > 0.0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(bytes, 123_456.0);
    reg.server = Some(server);
}

/// JSON logs: one object per line, one access line per request with the
/// documented fields, and no credential anywhere in the log.
#[test]
fn json_access_log_without_secrets() {
    use crate::common::pki::*;
    let dir = tempfile::tempdir().unwrap();
    let file = htpasswd(dir.path(), &[("alice", "s3cret-pw")]);
    let w = WharfProcess::start_with_toml(
        dir.path(),
        &format!("[auth]\nhtpasswd = {file:?}\n[log]\nformat = \"json\"\n"),
    );
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let c = reqwest::Client::new();
        let ok = c
            .get(format!("{}/v2/logs/x/tags/list", w.base))
            .basic_auth("alice", Some("s3cret-pw"))
            .send()
            .await
            .unwrap();
        assert_eq!(ok.status(), 404);
        let bad = c
            .get(format!("{}/v2/", w.base))
            .basic_auth("alice", Some("wrong-s3cret"))
            .send()
            .await
            .unwrap();
        assert_eq!(bad.status(), 401);
        let bearer = c
            .get(format!("{}/v2/", w.base))
            .bearer_auth("eyJhbGciOiJIUzI1NiJ9.e30.c2VjcmV0LXRva2Vu")
            .send()
            .await
            .unwrap();
        assert_eq!(bearer.status(), 401);
    });
    let mut access = Vec::new();
    for _ in 0..50 {
        access = w
            .log_lines()
            .into_iter()
            .filter(|l| l.contains("wharf::access"))
            .collect();
        if access.len() >= 3 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert_eq!(access.len(), 3, "{access:?}");
    let first: serde_json::Value = serde_json::from_str(&access[0]).expect("a JSON line");
    assert_eq!(first["method"], "GET");
    assert_eq!(first["route"], "tags");
    assert_eq!(first["repository"], "logs/x");
    assert_eq!(first["user"], "alice");
    assert_eq!(first["status"], 404);
    assert!(first["latency_ms"].as_f64().is_some());
    assert!(first["bytes_out"].as_u64().is_some());
    for line in w.log_lines() {
        serde_json::from_str::<serde_json::Value>(&line).expect("every line is JSON");
        for secret in ["s3cret", "c2VjcmV0LXRva2Vu", "YWxpY2U6czNjcmV0LXB3"] {
            assert!(!line.contains(secret), "secret in log: {line}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_sessions_gauge_counts_sessions() {
    // In cluster mode the sessions land on different nodes and node 0's
    // gauge counts the cluster's, refreshed each purge (every second here).
    let reg = TestRegistry::start_with(|c| {
        c.metrics.addr = Some("127.0.0.1:0".parse().unwrap());
        c.upload_purge_interval_secs = 1;
    })
    .await;
    let ops = format!(
        "http://{}",
        reg.server.as_ref().unwrap().metrics_addr().unwrap()
    );
    let gauge_reaches = |want: f64| {
        let ops = ops.clone();
        async move {
            let mut seen = -1.0;
            for _ in 0..50 {
                seen = scraped(&ops, "wharf_upload_sessions_open ").await;
                if seen == want {
                    return;
                }
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
            panic!("wharf_upload_sessions_open stayed {seen}, wanted {want}");
        }
    };
    let first = reg.start_upload("gauge/a").await;
    reg.start_upload("gauge/b").await;
    gauge_reaches(2.0).await;
    assert_eq!(reg.delete(&first).await.status(), 204);
    gauge_reaches(1.0).await;
}
