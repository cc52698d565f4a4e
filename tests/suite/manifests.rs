//! Manifests, tags, catalog and referrers over real sockets.

use crate::common::*;
use serde_json::{json, Value};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn put_get_head_by_tag_and_digest_return_exact_bytes() {
    let reg = TestRegistry::start().await;
    let m = reg.image_manifest("app/web", 1, 3).await;
    // Odd but valid formatting: the registry must keep it byte for byte.
    let body = format!("{}\n\n", serde_json::to_string_pretty(&m).unwrap()).into_bytes();
    let d = digest(&body);
    let r = reg.put_manifest("app/web", "v1", OCI_MANIFEST, &body).await;
    assert_eq!(r.status(), 201);
    assert_eq!(location(&r), format!("/v2/app/web/manifests/{d}"));
    assert_eq!(header(&r, "docker-content-digest"), Some(d.as_str()));
    for reference in ["v1", d.as_str()] {
        let url = reg.url(&format!("/v2/app/web/manifests/{reference}"));
        let g = reg.client.get(&url).send().await.unwrap();
        assert_eq!(g.status(), 200);
        assert_eq!(header(&g, "content-type"), Some(OCI_MANIFEST));
        assert_eq!(header(&g, "docker-content-digest"), Some(d.as_str()));
        assert_eq!(g.bytes().await.unwrap(), body);
        let h = reg.client.head(&url).send().await.unwrap();
        assert_eq!(h.status(), 200);
        assert_eq!(
            header(&h, "content-length"),
            Some(body.len().to_string().as_str())
        );
        assert_eq!(header(&h, "docker-content-digest"), Some(d.as_str()));
    }
    // PUT by digest.
    let r = reg.put_manifest("app/web", &d, OCI_MANIFEST, &body).await;
    assert_eq!(r.status(), 201);
    // Unknown.
    let r = reg.get("/v2/app/web/manifests/nope").await;
    assert_oci_error(r, 404, "MANIFEST_UNKNOWN").await;
    let r = reg
        .client
        .head(reg.url("/v2/app/web/manifests/nope"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let r = reg.get("/v2/no/such/manifests/v1").await;
    assert_eq!(r.status(), 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_schema2_and_manifest_list() {
    let reg = TestRegistry::start().await;
    let mut m = reg.image_manifest("d", 2, 1).await;
    m["mediaType"] = json!("application/vnd.docker.distribution.manifest.v2+json");
    let body = serde_json::to_vec(&m).unwrap();
    let ct = "application/vnd.docker.distribution.manifest.v2+json";
    assert_eq!(
        reg.put_manifest("d", "amd64", ct, &body).await.status(),
        201
    );
    let list = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.docker.distribution.manifest.list.v2+json",
        "manifests": [{
            "mediaType": ct, "digest": digest(&body), "size": body.len(),
            "platform": {"architecture": "amd64", "os": "linux"}
        }]
    });
    let lb = serde_json::to_vec(&list).unwrap();
    let r = reg
        .put_manifest(
            "d",
            "latest",
            "application/vnd.docker.distribution.manifest.list.v2+json",
            &lb,
        )
        .await;
    assert_eq!(r.status(), 201);
    let g = reg.get("/v2/d/manifests/latest").await;
    assert_eq!(
        header(&g, "content-type"),
        Some("application/vnd.docker.distribution.manifest.list.v2+json")
    );
}

/// A manifest with no top-level mediaType (umoci writes such OCI
/// manifests) is OCI: pushing the same bytes again as a Docker manifest
/// under another tag is refused, and the first tag keeps serving OCI.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stored_manifest_keeps_its_type_whatever_a_later_put_claims() {
    let reg = TestRegistry::start().await;
    let mut m = reg.image_manifest("repro/a", 3, 1).await;
    m.as_object_mut().unwrap().remove("mediaType");
    let body = serde_json::to_vec(&m).unwrap();
    assert_eq!(
        reg.put_manifest("repro/a", "v1", OCI_MANIFEST, &body)
            .await
            .status(),
        201
    );
    let docker = "application/vnd.docker.distribution.manifest.v2+json";
    for reference in ["other", &digest(&body)] {
        let r = reg.put_manifest("repro/a", reference, docker, &body).await;
        assert_oci_error(r, 400, "MANIFEST_INVALID").await;
    }
    for reference in ["v1", &digest(&body)] {
        let g = reg.get(&format!("/v2/repro/a/manifests/{reference}")).await;
        assert_eq!(header(&g, "content-type"), Some(OCI_MANIFEST));
        assert_eq!(g.bytes().await.unwrap(), body);
    }
    let g = reg.get("/v2/repro/a/manifests/other").await;
    assert_oci_error(g, 404, "MANIFEST_UNKNOWN").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_manifests_get_the_right_errors_and_leave_nothing_behind() {
    let reg = TestRegistry::start().await;
    let good = reg.image_manifest("r", 3, 2).await;
    let body = serde_json::to_vec(&good).unwrap();

    // Digest in the URL does not match the body.
    let r = reg
        .put_manifest("r", &digest(b"other"), OCI_MANIFEST, &body)
        .await;
    assert_oci_error(r, 400, "DIGEST_INVALID").await;

    // Content-Type disagrees with mediaType.
    let r = reg
        .put_manifest(
            "r",
            "t",
            "application/vnd.docker.distribution.manifest.v2+json",
            &body,
        )
        .await;
    assert_oci_error(r, 400, "MANIFEST_INVALID").await;

    // Not JSON, wrong schemaVersion, schema1.
    for bad in [
        &b"{nope"[..],
        br#"{"schemaVersion":3}"#,
        br#"{"schemaVersion":1,"fsLayers":[]}"#,
    ] {
        let r = reg.put_manifest("r", "t", OCI_MANIFEST, bad).await;
        assert_oci_error(r, 400, "MANIFEST_INVALID").await;
    }
    let r = reg
        .put_manifest(
            "r",
            "t",
            "application/vnd.docker.distribution.manifest.v1+prettyjws",
            b"{}",
        )
        .await;
    let v: Value = r.json().await.unwrap();
    assert!(v["errors"][0]["message"]
        .as_str()
        .unwrap()
        .contains("schema1"));

    // A layer the repository does not have.
    let mut missing = good.clone();
    missing["layers"][0]["digest"] = json!(digest(b"never pushed"));
    let mb = serde_json::to_vec(&missing).unwrap();
    let r = reg.put_manifest("r", "t", OCI_MANIFEST, &mb).await;
    assert_oci_error(r, 400, "MANIFEST_BLOB_UNKNOWN").await;
    // The blob exists, but in another repository only.
    let r = reg
        .put_manifest("elsewhere", "t", OCI_MANIFEST, &body)
        .await;
    assert_oci_error(r, 400, "MANIFEST_BLOB_UNKNOWN").await;

    // An index naming a manifest the repository does not have.
    let idx = json!({"schemaVersion": 2, "mediaType": OCI_INDEX,
        "manifests": [{"mediaType": OCI_MANIFEST, "digest": digest(&body), "size": body.len()}]});
    let r = reg
        .put_manifest("r", "t", OCI_INDEX, &serde_json::to_vec(&idx).unwrap())
        .await;
    assert_oci_error(r, 400, "MANIFEST_UNKNOWN").await;

    // Nothing of the refused pushes is visible.
    let r = reg.get("/v2/r/manifests/t").await;
    assert_eq!(r.status(), 404);
    let r = reg.get(&format!("/v2/r/manifests/{}", digest(&mb))).await;
    assert_eq!(r.status(), 404);
    let tags: Value = reg.get_json("/v2/r/tags/list").await;
    assert_eq!(tags["tags"], json!([]));
    // No manifest bytes were stored (only the pushed config and layers).
    assert_eq!(reg.stored_blobs(), 3);

    // Bad tag in the URL.
    let r = reg.put_manifest("r", "-bad", OCI_MANIFEST, &body).await;
    assert_eq!(r.status(), 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn size_limit_accepts_four_mib_and_refuses_more() {
    let reg = TestRegistry::start().await;
    let mut m = reg.image_manifest("big", 4, 1).await;
    let base_len = serde_json::to_vec(&m).unwrap().len();
    let pad = 4 * 1024 * 1024 - base_len - 40;
    m["annotations"] = json!({ "pad": "x".repeat(pad) });
    let body = serde_json::to_vec(&m).unwrap();
    assert!(body.len() <= 4 << 20 && body.len() > (4 << 20) - 100);
    assert_eq!(
        reg.put_manifest("big", "ok", OCI_MANIFEST, &body)
            .await
            .status(),
        201
    );
    m["annotations"] = json!({ "pad": "x".repeat(pad + 1000) });
    let body = serde_json::to_vec(&m).unwrap();
    let r = reg
        .put_manifest("big", "toolarge", OCI_MANIFEST, &body)
        .await;
    assert_oci_error(r, 413, "SIZE_INVALID").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tags_and_catalog_sorted_with_pagination() {
    let reg = TestRegistry::start().await;
    let m = serde_json::to_vec(&reg.image_manifest("p/q", 5, 1).await).unwrap();
    let tags = ["b", "a", "c10", "c2", "Z", "_x", "latest"];
    for t in tags {
        assert_eq!(
            reg.put_manifest("p/q", t, OCI_MANIFEST, &m).await.status(),
            201
        );
    }
    let mut sorted: Vec<&str> = tags.to_vec();
    sorted.sort();
    let all: Value = reg.get_json("/v2/p/q/tags/list").await;
    assert_eq!(all["name"], "p/q");
    assert_eq!(all["tags"], json!(sorted));

    let mut seen = Vec::new();
    let mut next = Some("/v2/p/q/tags/list?n=3".to_string());
    while let Some(path) = next {
        let r = reg.get(&path).await;
        assert_eq!(r.status(), 200);
        next = header(&r, "link").map(|l| {
            assert!(l.ends_with("; rel=\"next\""), "{l}");
            l[1..l.find('>').unwrap()].to_string()
        });
        let v: Value = r.json().await.unwrap();
        let page: Vec<String> = serde_json::from_value(v["tags"].clone()).unwrap();
        assert!(page.len() <= 3);
        seen.extend(page);
    }
    assert_eq!(seen, sorted);
    let r: Value = reg.get_json("/v2/p/q/tags/list?n=2&last=b").await;
    assert_eq!(r["tags"], json!(["c10", "c2"]));
    let r: Value = reg.get_json("/v2/p/q/tags/list?n=0").await;
    assert_eq!(r["tags"], json!([]));
    let r = reg.get("/v2/p/q/tags/list?n=x").await;
    assert_eq!(r.status(), 400);
    let r = reg.get("/v2/unknown/tags/list").await;
    assert_oci_error(r, 404, "NAME_UNKNOWN").await;

    for name in ["zeta", "alpha/one", "mid"] {
        reg.push_mono(name, b"x").await;
    }
    let c: Value = reg.get_json("/v2/_catalog").await;
    assert_eq!(
        c["repositories"],
        json!(["alpha/one", "mid", "p/q", "zeta"])
    );
    let r = reg.get("/v2/_catalog?n=2").await;
    assert_eq!(
        header(&r, "link"),
        Some("</v2/_catalog?n=2&last=mid>; rel=\"next\"")
    );
    let r: Value = reg.get_json("/v2/_catalog?n=2&last=mid").await;
    assert_eq!(r["repositories"], json!(["p/q", "zeta"]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn referrers_index_with_filter_and_subject_header() {
    let reg = TestRegistry::start().await;
    let subject_m = serde_json::to_vec(&reg.image_manifest("s", 6, 1).await).unwrap();
    let subject = digest(&subject_m);
    // Unknown subject: an empty index, not 404.
    let r = reg.get(&format!("/v2/s/referrers/{subject}")).await;
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "content-type"), Some(OCI_INDEX));
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["manifests"], json!([]));

    // A referrer may be pushed before its subject.
    let empty = b"{}";
    reg.push_mono("s", empty).await;
    let mut sig = json!({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST, "artifactType": "application/x-signature",
        "config": descriptor("application/vnd.oci.empty.v1+json", empty),
        "layers": [descriptor("application/vnd.oci.empty.v1+json", empty)],
        "subject": {"mediaType": OCI_MANIFEST, "digest": subject, "size": subject_m.len()},
        "annotations": {"org.example": "yes"}
    });
    let sig_body = serde_json::to_vec(&sig).unwrap();
    let r = reg
        .put_manifest("s", &digest(&sig_body), OCI_MANIFEST, &sig_body)
        .await;
    assert_eq!(r.status(), 201);
    assert_eq!(header(&r, "oci-subject"), Some(subject.as_str()));
    assert_eq!(
        reg.put_manifest("s", "v1", OCI_MANIFEST, &subject_m)
            .await
            .status(),
        201
    );
    // A second referrer whose artifact type comes from its config.
    sig.as_object_mut().unwrap().remove("artifactType");
    sig["config"]["mediaType"] = json!("application/x-sbom-config");
    let sbom_cfg = b"{\"sbom\":1}";
    reg.push_mono("s", sbom_cfg).await;
    sig["config"] = descriptor("application/x-sbom-config", sbom_cfg);
    let sbom_body = serde_json::to_vec(&sig).unwrap();
    assert_eq!(
        reg.put_manifest("s", &digest(&sbom_body), OCI_MANIFEST, &sbom_body)
            .await
            .status(),
        201
    );

    let v: Value = reg.get_json(&format!("/v2/s/referrers/{subject}")).await;
    let ms = v["manifests"].as_array().unwrap();
    assert_eq!(ms.len(), 2);
    let sig_desc = ms
        .iter()
        .find(|m| m["digest"] == digest(&sig_body))
        .unwrap();
    assert_eq!(sig_desc["artifactType"], "application/x-signature");
    assert_eq!(sig_desc["size"], sig_body.len());
    assert_eq!(sig_desc["mediaType"], OCI_MANIFEST);
    assert_eq!(sig_desc["annotations"]["org.example"], "yes");
    let sbom_desc = ms
        .iter()
        .find(|m| m["digest"] == digest(&sbom_body))
        .unwrap();
    assert_eq!(sbom_desc["artifactType"], "application/x-sbom-config");

    let r = reg
        .get(&format!(
            "/v2/s/referrers/{subject}?artifactType=application/x-signature"
        ))
        .await;
    assert_eq!(header(&r, "oci-filters-applied"), Some("artifactType"));
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["manifests"].as_array().unwrap().len(), 1);

    // Deleting a referrer removes it from the index.
    let r = reg
        .delete(&format!("/v2/s/manifests/{}", digest(&sig_body)))
        .await;
    assert_eq!(r.status(), 202);
    let v: Value = reg.get_json(&format!("/v2/s/referrers/{subject}")).await;
    assert_eq!(v["manifests"].as_array().unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deletes_by_tag_and_by_digest() {
    let reg = TestRegistry::start().await;
    let m = serde_json::to_vec(&reg.image_manifest("del", 7, 1).await).unwrap();
    let d = digest(&m);
    for t in ["one", "two", "three"] {
        reg.put_manifest("del", t, OCI_MANIFEST, &m).await;
    }
    // A tag: only that tag goes.
    let r = reg.delete("/v2/del/manifests/one").await;
    assert_eq!(r.status(), 202);
    assert_eq!(reg.get("/v2/del/manifests/one").await.status(), 404);
    assert_eq!(reg.get("/v2/del/manifests/two").await.status(), 200);
    // The digest: the manifest and every tag on it go.
    let r = reg.delete(&format!("/v2/del/manifests/{d}")).await;
    assert_eq!(r.status(), 202);
    for reference in ["two", "three", d.as_str()] {
        let r = reg.get(&format!("/v2/del/manifests/{reference}")).await;
        assert_oci_error(r, 404, "MANIFEST_UNKNOWN").await;
    }
    let tags: Value = reg.get_json("/v2/del/tags/list").await;
    assert_eq!(tags["tags"], json!([]));
    let r = reg.delete(&format!("/v2/del/manifests/{d}")).await;
    assert_oci_error(r, 404, "MANIFEST_UNKNOWN").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manifest_deletes_can_be_switched_off() {
    let reg = TestRegistry::start_with(|c| c.delete_enabled = false).await;
    let m = serde_json::to_vec(&reg.image_manifest("nd", 8, 1).await).unwrap();
    reg.put_manifest("nd", "v", OCI_MANIFEST, &m).await;
    let r = reg.delete("/v2/nd/manifests/v").await;
    assert_oci_error(r, 405, "UNSUPPORTED").await;
    assert_eq!(reg.get("/v2/nd/manifests/v").await.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tag_moves_atomically_between_manifests() {
    // Writers keep moving one tag between two manifests (each PUT of an
    // existing manifest replaces its record and its index entries) while
    // readers keep reading the tag: every read must find a whole manifest,
    // one of the two, never a 404 or a digest without its bytes.
    let reg = std::sync::Arc::new(TestRegistry::start().await);
    let a = serde_json::to_vec(&reg.image_manifest("mv", 9, 1).await).unwrap();
    let b = serde_json::to_vec(&reg.image_manifest("mv", 10, 1).await).unwrap();
    assert_eq!(
        reg.put_manifest("mv", "latest", OCI_MANIFEST, &a)
            .await
            .status(),
        201
    );
    let (da, db) = (digest(&a), digest(&b));
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut writers = Vec::new();
    for w in 0..4 {
        let (reg, a, b) = (reg.clone(), a.clone(), b.clone());
        writers.push(tokio::spawn(async move {
            for i in 0..150 {
                let body = if (i + w) % 2 == 0 { &a } else { &b };
                let r = reg.put_manifest("mv", "latest", OCI_MANIFEST, body).await;
                assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
            }
        }));
    }
    let mut readers = Vec::new();
    for _ in 0..4 {
        let (reg, stop, da, db) = (reg.clone(), stop.clone(), da.clone(), db.clone());
        readers.push(tokio::spawn(async move {
            let mut seen = [0usize; 2];
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let g = reg.get("/v2/mv/manifests/latest").await;
                assert_eq!(g.status(), 200, "tag vanished while moving");
                let d = header(&g, "docker-content-digest").unwrap().to_owned();
                let body = g.bytes().await.unwrap();
                assert_eq!(digest(&body), d, "tag answered bytes of another digest");
                seen[if d == da {
                    0
                } else {
                    assert_eq!(d, db);
                    1
                }] += 1;
            }
            seen
        }));
    }
    for w in writers {
        w.await.unwrap();
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut seen = [0usize; 2];
    for r in readers {
        let s = r.await.unwrap();
        seen[0] += s[0];
        seen[1] += s[1];
    }
    assert!(
        seen[0] > 0 && seen[1] > 0,
        "readers saw only one side: {seen:?}"
    );
    // The old manifest is still reachable by digest.
    let g = reg.get(&format!("/v2/mv/manifests/{da}")).await;
    assert_eq!(g.status(), 200);
}

/// What cannot be named cannot exist: reading or deleting it is "unknown"
/// (as the conformance suite and other registries answer), while storing
/// under it is a bad request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn impossible_references_are_unknown_to_reads_and_invalid_to_writes() {
    let reg = TestRegistry::start().await;
    let m = reg.image_manifest("app/web", 1, 1).await;
    let body = serde_json::to_vec(&m).unwrap();
    assert_eq!(
        reg.put_manifest("app/web", "v1", OCI_MANIFEST, &body)
            .await
            .status(),
        201
    );
    for reference in [
        ".INVALID_MANIFEST_NAME",
        "-dash",
        "sha256:short",
        &"t".repeat(129),
    ] {
        let url = reg.url(&format!("/v2/app/web/manifests/{reference}"));
        let r = reg.client.get(&url).send().await.unwrap();
        assert_oci_error(r, 404, "MANIFEST_UNKNOWN").await;
        let r = reg.client.head(&url).send().await.unwrap();
        assert_eq!(r.status(), 404, "HEAD {reference}");
        let r = reg.client.delete(&url).send().await.unwrap();
        assert_oci_error(r, 404, "MANIFEST_UNKNOWN").await;
        let r = reg
            .put_manifest("app/web", reference, OCI_MANIFEST, &body)
            .await;
        assert_eq!(r.status(), 400, "PUT {reference}");
    }
    // A valid reference that names nothing is unknown too.
    let r = reg.get("/v2/app/web/manifests/v2").await;
    assert_oci_error(r, 404, "MANIFEST_UNKNOWN").await;
}
