//! Webhooks (`[[notifications]]`) to a receiver on loopback: every push,
//! tag move and delete arrives in distribution's envelope, in order, at
//! least once, after the receiver's failures; events queued when a kill -9
//! hits are delivered after the restart; a hanging receiver slows no push
//! and its queue stays bounded, with what is dropped counted.

use crate::common::receiver::Receiver;
use crate::common::*;
use serde_json::Value;
use std::time::{Duration, Instant};
use wharf::config::NotificationConfig;

fn endpoint(url: String) -> NotificationConfig {
    NotificationConfig {
        url,
        events: vec!["push".into(), "delete".into()],
        repositories: vec![],
        headers: Default::default(),
        timeout_secs: 2,
        max_pending: 10_000,
    }
}

/// What a test checks of an event: action, repository, digest, tag.
fn summary(e: &Value) -> (String, String, String, String) {
    let s = |v: &Value| v.as_str().unwrap_or("").to_owned();
    (
        s(&e["action"]),
        s(&e["target"]["repository"]),
        s(&e["target"]["digest"]),
        s(&e["target"]["tag"]),
    )
}

fn expect(action: &str, repo: &str, digest: &str, tag: &str) -> (String, String, String, String) {
    (action.into(), repo.into(), digest.into(), tag.into())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushes_tag_moves_and_deletes_arrive_in_order_after_failures() {
    let receiver = Receiver::start(3).await;
    let reg = TestRegistry::start_with(|c| {
        let mut e = endpoint(receiver.url());
        e.repositories = vec!["team-a/**".into()];
        e.headers
            .insert("Authorization".into(), "Bearer hook-secret".into());
        c.notifications = vec![e];
    })
    .await;
    let first = serde_json::to_vec(&reg.image_manifest("team-a/app", 1, 1).await).unwrap();
    let second = serde_json::to_vec(&reg.image_manifest("team-a/app", 2, 1).await).unwrap();
    let (d1, d2) = (digest(&first), digest(&second));
    assert_eq!(
        reg.put_manifest("team-a/app", "v1", OCI_MANIFEST, &first)
            .await
            .status(),
        201
    );
    // The tag moves.
    assert_eq!(
        reg.put_manifest("team-a/app", "v1", OCI_MANIFEST, &second)
            .await
            .status(),
        201
    );
    // Outside the endpoint's repositories: no event.
    let other = serde_json::to_vec(&reg.image_manifest("team-b/app", 3, 1).await).unwrap();
    assert_eq!(
        reg.put_manifest("team-b/app", "v1", OCI_MANIFEST, &other)
            .await
            .status(),
        201
    );
    assert_eq!(
        reg.delete("/v2/team-a/app/manifests/v1").await.status(),
        202
    );
    assert_eq!(
        reg.delete(&format!("/v2/team-a/app/manifests/{d1}"))
            .await
            .status(),
        202
    );
    let layer = serde_json::from_slice::<Value>(&first).unwrap()["layers"][0]["digest"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        reg.delete(&format!("/v2/team-a/app/blobs/{layer}"))
            .await
            .status(),
        202
    );

    // Three failures: backoff 1 s, 2 s, 4 s, then everything.
    let events = receiver.wait_for(5, 30).await;
    let got: Vec<_> = events.iter().map(summary).collect();
    assert_eq!(
        got,
        vec![
            expect("push", "team-a/app", &d1, "v1"),
            expect("push", "team-a/app", &d2, "v1"),
            expect("delete", "team-a/app", "", "v1"),
            expect("delete", "team-a/app", &d1, ""),
            expect("delete", "team-a/app", &layer, ""),
        ]
    );
    let requests = receiver.requests();
    assert!(requests.iter().filter(|r| !r.accepted).count() == 3);
    for r in &requests {
        assert_eq!(
            r.content_type,
            "application/vnd.docker.distribution.events.v2+json"
        );
        assert_eq!(r.authorization.as_deref(), Some("Bearer hook-secret"));
    }
    // The envelope as distribution writes it.
    let push = &events[0];
    assert_eq!(push["target"]["mediaType"], OCI_MANIFEST);
    assert_eq!(push["target"]["size"], first.len());
    assert_eq!(push["target"]["length"], first.len());
    let host = reg.base.trim_start_matches("http://");
    assert_eq!(
        push["target"]["url"],
        format!("http://{host}/v2/team-a/app/manifests/{d1}")
    );
    assert_eq!(push["request"]["method"], "PUT");
    assert_eq!(push["request"]["host"], host);
    assert_eq!(push["request"]["addr"], "127.0.0.1");
    assert!(push["request"]["id"]
        .as_str()
        .is_some_and(|i| !i.is_empty()));
    assert_eq!(push["actor"]["name"], "");
    assert!(push["source"]["instanceID"]
        .as_str()
        .is_some_and(|i| !i.is_empty()));
    assert!(push["timestamp"].as_str().unwrap().ends_with('Z'));
    assert_ne!(push["id"], events[1]["id"]);
    // Nothing more comes (team-b was filtered, nothing is left queued).
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(receiver.events().len(), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_pending_at_a_kill_are_delivered_after_restart() {
    // A port with no receiver yet: every delivery fails until it listens.
    let port = services::free_port();
    let url = format!("http://127.0.0.1:{port}/events");
    let dir = tempfile::tempdir().unwrap();
    let toml = format!(
        "[log]\naccess = false\n[[notifications]]\nurl = \"{url}\"\nevents = [\"push\", \"delete\", \"pull\"]\ntimeout_secs = 1\n"
    );
    let mut wharf = WharfProcess::start_with_toml(dir.path(), &toml);
    let reg = TestRegistry::at(&wharf.base);
    let m = serde_json::to_vec(&reg.image_manifest("crash/app", 7, 1).await).unwrap();
    assert_eq!(
        reg.put_manifest("crash/app", "v7", OCI_MANIFEST, &m)
            .await
            .status(),
        201
    );
    assert_eq!(reg.get("/v2/crash/app/manifests/v7").await.status(), 200);
    assert_eq!(reg.delete("/v2/crash/app/manifests/v7").await.status(), 202);
    wharf.child.kill().unwrap();
    wharf.child.wait().unwrap();

    let receiver = Receiver::start_on(format!("127.0.0.1:{port}").parse().unwrap(), 0).await;
    let _wharf = WharfProcess::start_with_toml(dir.path(), &toml);
    let events = receiver.wait_for(3, 30).await;
    let d = digest(&m);
    assert_eq!(
        events.iter().map(summary).collect::<Vec<_>>(),
        vec![
            expect("push", "crash/app", &d, "v7"),
            expect("pull", "crash/app", &d, "v7"),
            expect("delete", "crash/app", "", "v7"),
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_receiver_slows_no_push_and_its_queue_is_bounded() {
    if skip_in_cluster("reads one node's /metrics") {
        return;
    }
    let receiver = Receiver::start(0).await;
    receiver.hang(true);
    let reg = TestRegistry::start_with(|c| {
        c.metrics.addr = Some("127.0.0.1:0".parse().unwrap());
        let mut e = endpoint(receiver.url());
        e.timeout_secs = RECEIVER_TIMEOUT.as_secs();
        e.max_pending = 5;
        c.notifications = vec![e];
    })
    .await;
    // A push that waited for its event's delivery would wait the whole
    // delivery timeout (the receiver never answers): every manifest PUT
    // must answer well inside it. A bound on waiting, not a speed figure.
    const RECEIVER_TIMEOUT: Duration = Duration::from_secs(3);
    let mut slowest = Duration::ZERO;
    for i in 0..20 {
        let m = serde_json::to_vec(&reg.image_manifest("busy/app", 100 + i, 1).await).unwrap();
        let started = Instant::now();
        let r = reg
            .put_manifest("busy/app", &format!("t{i}"), OCI_MANIFEST, &m)
            .await;
        slowest = slowest.max(started.elapsed());
        assert_eq!(r.status(), 201);
    }
    eprintln!("20 manifest PUTs beside a hanging receiver: slowest {slowest:?}");
    assert!(
        slowest < RECEIVER_TIMEOUT,
        "a manifest PUT took {slowest:?}: it waited for the hanging receiver"
    );
    let ops = format!(
        "http://{}",
        reg.server.as_ref().unwrap().metrics_addr().unwrap()
    );
    let url = receiver.url();
    let gauge = |name: &str| format!("wharf_{name}{{endpoint=\"{url}\"}}");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let pending = crate::metrics::scraped(&ops, &gauge("notifications_pending")).await;
        let dropped = crate::metrics::scraped(&ops, &gauge("notifications_dropped")).await;
        if (pending, dropped) == (5.0, 15.0) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "pending {pending}, dropped {dropped}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        crate::metrics::scraped(
            &ops,
            &format!("wharf_notifications_failed_total{{endpoint=\"{url}\"}}")
        )
        .await
            >= 1.0
    );

    // The receiver recovers: the five kept events arrive, oldest first.
    receiver.hang(false);
    let events = receiver.wait_for(5, 90).await;
    let tags: Vec<String> = events.iter().map(|e| summary(e).3).collect();
    assert_eq!(tags, vec!["t0", "t1", "t2", "t3", "t4"]);
}
