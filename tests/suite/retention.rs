//! Immutable tags and retention policies over HTTP: a moved or deleted
//! immutable tag answers 403 DENIED naming its rule (also when two pushes
//! race for a new one), and `POST /_wharf/retention` reports, then
//! applies, what a policy deletes and why.

use crate::common::*;
use std::time::Duration;

/// An image in `repo` (seed `seed`): its manifest bytes and digest.
async fn image(reg: &TestRegistry, repo: &str, seed: u64) -> (Vec<u8>, String) {
    let m = serde_json::to_vec(&reg.image_manifest(repo, seed, 1).await).unwrap();
    let d = digest(&m);
    (m, d)
}

fn immutable_release(c: &mut wharf::Config) {
    c.immutable = vec![wharf::config::ImmutableConfig {
        repositories: "release/**".into(),
        tags: vec!["^v[0-9]".into()],
    }];
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn immutable_tags_cannot_move_or_go_but_accept_the_same_digest() {
    let reg = TestRegistry::start_with(immutable_release).await;
    let (one, one_d) = image(&reg, "release/app", 1).await;
    let (two, two_d) = image(&reg, "release/app", 2).await;
    assert_eq!(
        reg.put_manifest("release/app", "v1", OCI_MANIFEST, &one)
            .await
            .status(),
        201
    );
    // The same digest again is fine.
    assert_eq!(
        reg.put_manifest("release/app", "v1", OCI_MANIFEST, &one)
            .await
            .status(),
        201
    );
    let r = reg
        .put_manifest("release/app", "v1", OCI_MANIFEST, &two)
        .await;
    assert_eq!(r.status(), 403);
    let body = r.text().await.unwrap();
    assert!(
        body.contains("DENIED") && body.contains("release/**") && body.contains("^v[0-9]"),
        "{body}"
    );
    let served = reg.get("/v2/release/app/manifests/v1").await;
    assert_eq!(
        header(&served, "docker-content-digest"),
        Some(one_d.as_str())
    );

    let r = reg.delete("/v2/release/app/manifests/v1").await;
    assert_oci_error(r, 403, "DENIED").await;
    let r = reg
        .delete(&format!("/v2/release/app/manifests/{one_d}"))
        .await;
    assert_oci_error(r, 403, "DENIED").await;
    // Tags outside the rule move and go as usual.
    assert_eq!(
        reg.put_manifest("release/app", "latest", OCI_MANIFEST, &one)
            .await
            .status(),
        201
    );
    assert_eq!(
        reg.put_manifest("release/app", "latest", OCI_MANIFEST, &two)
            .await
            .status(),
        201
    );
    assert_eq!(
        reg.delete("/v2/release/app/manifests/latest")
            .await
            .status(),
        202
    );
    assert_eq!(
        reg.delete(&format!("/v2/release/app/manifests/{two_d}"))
            .await
            .status(),
        202
    );
    let (other, _) = image(&reg, "team/app", 3).await;
    let (other2, _) = image(&reg, "team/app", 4).await;
    assert_eq!(
        reg.put_manifest("team/app", "v1", OCI_MANIFEST, &other)
            .await
            .status(),
        201
    );
    assert_eq!(
        reg.put_manifest("team/app", "v1", OCI_MANIFEST, &other2)
            .await
            .status(),
        201
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_pushes_racing_for_a_new_immutable_tag_cannot_both_win() {
    let reg = TestRegistry::start_with(immutable_release).await;
    for round in 0..8u64 {
        let (a, a_d) = image(&reg, "release/race", 10 + 2 * round).await;
        let (b, b_d) = image(&reg, "release/race", 11 + 2 * round).await;
        let tag = format!("v{round}");
        let (ra, rb) = tokio::join!(
            reg.put_manifest("release/race", &tag, OCI_MANIFEST, &a),
            reg.put_manifest("release/race", &tag, OCI_MANIFEST, &b)
        );
        let mut codes = [ra.status().as_u16(), rb.status().as_u16()];
        codes.sort();
        assert_eq!(codes, [201, 403], "round {round}");
        let winner = if ra.status() == 201 { a_d } else { b_d };
        let served = reg.get(&format!("/v2/release/race/manifests/{tag}")).await;
        assert_eq!(
            header(&served, "docker-content-digest"),
            Some(winner.as_str())
        );
    }
}

async fn retention(reg: &TestRegistry, dry_run: bool) -> serde_json::Value {
    let r = reg
        .client
        .post(reg.url(&format!("/_wharf/retention?dry_run={dry_run}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    r.json().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_reports_then_deletes_what_no_keep_condition_holds() {
    if skip_in_cluster("each node records its own pulls until its next flush (30 s)") {
        return;
    }
    let reg = TestRegistry::start_with(|c| {
        c.retention = vec![wharf::config::RetentionConfig {
            repositories: "ci/**".into(),
            keep_last: Some(2),
            keep_pulled_within_days: Some(14),
            keep_tags: vec!["^main$".into()],
            delete_untagged_after_hours: Some(0),
            dry_run: false,
        }];
    })
    .await;
    // Pushed oldest first, named so that name order is the reverse of
    // push order: only push times can rank them. Times are whole seconds.
    let mut pushed = Vec::new();
    for (i, tag) in ["z-old", "m-mid", "a-new", "main"].iter().enumerate() {
        let (m, d) = image(&reg, "ci/app", 40 + i as u64).await;
        assert_eq!(
            reg.put_manifest("ci/app", tag, OCI_MANIFEST, &m)
                .await
                .status(),
            201
        );
        pushed.push(d);
        tokio::time::sleep(Duration::from_millis(1100)).await;
    }
    // The same shape outside the policy's repositories stays whatever happens.
    let (m, _) = image(&reg, "team/app", 50).await;
    assert_eq!(
        reg.put_manifest("team/app", "old", OCI_MANIFEST, &m)
            .await
            .status(),
        201
    );
    // z-old is pulled, so it stays although it is the oldest.
    assert_eq!(reg.get("/v2/ci/app/manifests/z-old").await.status(), 200);

    let dry = retention(&reg, true).await;
    assert_eq!(dry["dry_run"], true, "{dry}");
    assert_eq!(
        dry["tags_deleted"],
        serde_json::json!([]),
        "a dry run deletes nothing"
    );
    let tags: Vec<&str> = dry["tags_would_delete"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["tag"].as_str().unwrap())
        .collect();
    assert_eq!(tags, ["m-mid"], "{dry}");
    let reason = dry["tags_would_delete"][0]["reason"].as_str().unwrap();
    assert!(
        reason.contains("not among the newest 2") && reason.contains("never pulled"),
        "{reason}"
    );
    assert_eq!(
        dry["manifests_would_delete"][0]["digest"],
        pushed[1].as_str(),
        "{dry}"
    );
    // HEAD: a GET would count as a pull and keep it.
    let head = reg
        .client
        .head(reg.url("/v2/ci/app/manifests/m-mid"))
        .send()
        .await
        .unwrap();
    assert_eq!(head.status(), 200, "a dry run deletes nothing");

    let real = retention(&reg, false).await;
    assert_eq!(real["tags_deleted"][0]["tag"], "m-mid", "{real}");
    assert_eq!(real["dry_run"], false, "{real}");
    assert_eq!(real["tags_would_delete"], serde_json::json!([]));
    assert_eq!(reg.get("/v2/ci/app/manifests/m-mid").await.status(), 404);
    // Its manifest, untagged now and older than the limit, went too.
    let gone = reg
        .get(&format!("/v2/ci/app/manifests/{}", pushed[1]))
        .await;
    assert_eq!(gone.status(), 404);
    for tag in ["z-old", "a-new", "main"] {
        assert_eq!(
            reg.get(&format!("/v2/ci/app/manifests/{tag}"))
                .await
                .status(),
            200,
            "{tag}"
        );
    }
    assert_eq!(reg.get("/v2/team/app/manifests/old").await.status(), 200);
    // Nothing more to do.
    let again = retention(&reg, false).await;
    assert_eq!(
        again["tags_deleted"].as_array().unwrap().len(),
        0,
        "{again}"
    );
}

/// A policy that is a dry run: the answer, the log and `wharf retention`
/// say nothing was deleted and what would be.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dry_run_policy_says_what_it_would_delete_and_deletes_nothing() {
    let reg = TestRegistry::start_with(|c| {
        c.retention = vec![wharf::config::RetentionConfig {
            repositories: "ci/**".into(),
            keep_last: Some(1),
            keep_pulled_within_days: None,
            keep_tags: vec![],
            delete_untagged_after_hours: None,
            dry_run: true,
        }];
    })
    .await;
    for (i, tag) in ["old", "new"].iter().enumerate() {
        let (m, _) = image(&reg, "ci/dry", 70 + i as u64).await;
        assert_eq!(
            reg.put_manifest("ci/dry", tag, OCI_MANIFEST, &m)
                .await
                .status(),
            201
        );
        tokio::time::sleep(Duration::from_millis(1100)).await;
    }
    // Not asked as a dry run: the policy is one.
    let report = retention(&reg, false).await;
    assert_eq!(report["dry_run"], true, "{report}");
    assert_eq!(report["tags_deleted"], serde_json::json!([]), "{report}");
    assert_eq!(report["tags_would_delete"][0]["tag"], "old", "{report}");

    let cli = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_wharf"))
            .arg("retention")
            .args(["--url", &reg.base])
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let human = cli(&[]);
    assert!(human.contains("WOULD DELETE ci/dry:old"), "{human}");
    assert!(
        human.contains("wharf retention: deleted 0 tags and 0 untagged manifests; a dry run would delete 1 tag"),
        "{human}"
    );
    let json: serde_json::Value = serde_json::from_str(&cli(&["--json", "--dry-run"])).unwrap();
    assert_eq!(json["dry_run"], true, "{json}");
    assert_eq!(reg.get("/v2/ci/dry/manifests/old").await.status(), 200);
}
