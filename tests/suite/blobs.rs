//! Blob push and pull over real sockets: monolithic and chunked pushes,
//! reads with ranges, deletes, mounts, and the protocol's error replies.

use crate::common::*;
use futures_util::stream;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn base_endpoint_answers_with_api_version() {
    let reg = TestRegistry::start().await;
    let r = reg.get("/v2/").await;
    assert_eq!(r.status(), 200);
    assert_eq!(
        header(&r, "docker-distribution-api-version"),
        Some("registry/2.0")
    );
    // Errors carry the header too.
    let r = reg.get("/v2/nope/x/y").await;
    assert_eq!(
        header(&r, "docker-distribution-api-version"),
        Some("registry/2.0")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn base_endpoint_over_cleartext_http2() {
    if skip_in_cluster("the test balancer speaks HTTP/1.1 only") {
        return;
    }
    let reg = TestRegistry::start().await;
    let c = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let r = c.get(reg.url("/v2/")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.version(), reqwest::Version::HTTP_2);
    let data = payload(3 << 20, 9);
    let d = digest(&data);
    let r = c
        .post(reg.url(&format!("/v2/h2/blobs/uploads/?digest={d}")))
        .body(data.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let got = c
        .get(reg.url(&format!("/v2/h2/blobs/{d}")))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(&got[..], &data[..]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn monolithic_push_and_pull_of_many_sizes() {
    let reg = TestRegistry::start().await;
    for (i, size) in [0usize, 1, 1024, 1 << 20, 64 << 20].into_iter().enumerate() {
        let data = payload(size, i as u64);
        let d = reg.push_mono("lib/mono", &data).await;
        let head = reg
            .client
            .head(reg.url(&format!("/v2/lib/mono/blobs/{d}")))
            .send()
            .await
            .unwrap();
        assert_eq!(head.status(), 200);
        assert_eq!(
            header(&head, "content-length"),
            Some(size.to_string().as_str())
        );
        assert_eq!(header(&head, "docker-content-digest"), Some(d.as_str()));
        assert_eq!(header(&head, "accept-ranges"), Some("bytes"));
        let r = reg.get_blob("lib/mono", &d).await;
        assert_eq!(r.status(), 200);
        let got = r.bytes().await.unwrap();
        assert_eq!(got.len(), size);
        assert_eq!(digest(&got), d, "size {size}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunked_push_with_content_range_and_final_chunk_on_put() {
    let reg = TestRegistry::start().await;
    let data = payload(5 << 20, 42);
    let d = digest(&data);
    let mut loc = reg.start_upload("a/b/c").await;
    let chunk = 1 << 20;
    let mut off = 0;
    // All but the last chunk by PATCH, following each returned Location.
    while off + chunk < data.len() {
        let end = off + chunk;
        let r = reg
            .client
            .patch(reg.url(&loc))
            .header("content-type", "application/octet-stream")
            .header("content-range", format!("{}-{}", off, end - 1))
            .body(data[off..end].to_vec())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 202);
        assert_eq!(header(&r, "range"), Some(format!("0-{}", end - 1).as_str()));
        assert!(header(&r, "docker-upload-uuid").is_some());
        loc = location(&r);
        off = end;
    }
    let status = reg.get(&loc).await;
    assert_eq!(status.status(), 204);
    assert_eq!(
        header(&status, "range"),
        Some(format!("0-{}", off - 1).as_str())
    );
    let r = reg
        .client
        .put(reg.url(&format!("{loc}?digest={d}")))
        .body(data[off..].to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    assert_eq!(location(&r), format!("/v2/a/b/c/blobs/{d}"));
    assert_eq!(header(&r, "docker-content-digest"), Some(d.as_str()));
    let got = reg.get_blob("a/b/c", &d).await.bytes().await.unwrap();
    assert_eq!(&got[..], &data[..]);
    // The session is gone after completion.
    let r = reg.get(&loc).await;
    assert_oci_error(r, 404, "BLOB_UPLOAD_UNKNOWN").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streamed_patch_without_content_range_then_empty_put() {
    // docker's way: one PATCH with a chunked body and no Content-Range.
    let reg = TestRegistry::start().await;
    let data = payload(3 << 20 | 17, 7);
    let d = digest(&data);
    let loc = reg.start_upload("docker/style").await;
    let parts: Vec<Result<Vec<u8>, std::io::Error>> =
        data.chunks(100_000).map(|c| Ok(c.to_vec())).collect();
    let r = reg
        .client
        .patch(reg.url(&loc))
        .body(reqwest::Body::wrap_stream(stream::iter(parts)))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    assert_eq!(
        header(&r, "range"),
        Some(format!("0-{}", data.len() - 1).as_str())
    );
    let loc = location(&r);
    let r = reg
        .client
        .put(reg.url(&format!("{loc}?digest={d}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let got = reg
        .get_blob("docker/style", &d)
        .await
        .bytes()
        .await
        .unwrap();
    assert_eq!(digest(&got), d);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_order_and_overlapping_chunks_get_416() {
    let reg = TestRegistry::start().await;
    let loc = reg.start_upload("r").await;
    let send = |range: &'static str, body: Vec<u8>| {
        reg.client
            .patch(reg.url(&loc))
            .header("content-range", range)
            .body(body)
            .send()
    };
    assert_eq!(send("0-9", vec![1; 10]).await.unwrap().status(), 202);
    // A gap.
    assert_oci_error(
        send("20-29", vec![1; 10]).await.unwrap(),
        416,
        "BLOB_UPLOAD_INVALID",
    )
    .await;
    // An overlap.
    assert_oci_error(
        send("5-14", vec![1; 10]).await.unwrap(),
        416,
        "BLOB_UPLOAD_INVALID",
    )
    .await;
    // Garbage.
    assert_eq!(send("ten-twenty", vec![1; 10]).await.unwrap().status(), 416);
    // Length disagreeing with the range.
    assert_eq!(send("10-19", vec![1; 5]).await.unwrap().status(), 416);
    // Nothing of the refused chunks was stored.
    let r = reg.get(&loc).await;
    assert_eq!(header(&r, "range"), Some("0-9"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_digest_is_refused_and_nothing_is_committed() {
    let reg = TestRegistry::start().await;
    let data = payload(4096, 1);
    let wrong = digest(b"something else");
    let r = reg
        .client
        .post(reg.url(&format!("/v2/r/blobs/uploads/?digest={wrong}")))
        .body(data.clone())
        .send()
        .await
        .unwrap();
    assert_oci_error(r, 400, "DIGEST_INVALID").await;
    let r = reg.get_blob("r", &wrong).await;
    assert_oci_error(r, 404, "BLOB_UNKNOWN").await;
    let r = reg.get_blob("r", &digest(&data)).await;
    assert_eq!(r.status(), 404);
    assert_eq!(reg.stored_blobs(), 0);

    // Through a session: PUT with the wrong digest fails, the session stays,
    // and the right digest then succeeds.
    let loc = reg.start_upload("r").await;
    let r = reg
        .client
        .patch(reg.url(&loc))
        .body(data.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let r = reg
        .client
        .put(reg.url(&format!("{loc}?digest={wrong}")))
        .send()
        .await
        .unwrap();
    assert_oci_error(r, 400, "DIGEST_INVALID").await;
    assert_eq!(reg.stored_blobs(), 0);
    let r = reg
        .client
        .put(reg.url(&format!("{loc}?digest={}", digest(&data))))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_names_digests_and_upload_ids() {
    let reg = TestRegistry::start().await;
    let d = digest(b"x");
    for path in [
        format!("/v2/UPPER/blobs/{d}"),
        format!("/v2/a/../b/blobs/{d}"),
        format!("/v2/a/%2e%2e/blobs/{d}"),
        format!("/v2/a//b/blobs/{d}"),
        format!("/v2/{}/blobs/{d}", "a".repeat(300)),
    ] {
        let (status, text) = raw_get(&reg.base, &path).await;
        assert_eq!(status, 400, "{path}");
        assert!(text.contains("NAME_INVALID"), "{text}");
    }
    for bad in [
        "sha256:abc",
        "sha256:..%2f..%2fetc%2fpasswd",
        "md5:d41d8cd98f00b204e9800998ecf8427e",
        "nothing",
    ] {
        let r = reg.get(&format!("/v2/a/blobs/{bad}")).await;
        assert_oci_error(r, 400, "DIGEST_INVALID").await;
        let r = reg
            .client
            .post(reg.url(&format!("/v2/a/blobs/uploads/?digest={bad}")))
            .body("x")
            .send()
            .await
            .unwrap();
        assert_oci_error(r, 400, "DIGEST_INVALID").await;
    }
    let loc = reg.start_upload("a").await;
    let id = loc.rsplit('/').next().unwrap().to_owned();
    for bad_id in [
        "..".to_string(),
        "..%2f..%2fmeta.redb".to_string(),
        "00000000-0000-0000-0000-000000000000".to_string(),
        id.to_uppercase(),
        format!("{{{id}}}"),
    ] {
        let (status, _) = raw_get(&reg.base, &format!("/v2/a/blobs/uploads/{bad_id}")).await;
        assert_eq!(status, 404, "{bad_id}");
    }
    // A session belongs to its repository.
    let r = reg.get(&format!("/v2/other/blobs/uploads/{id}")).await;
    assert_oci_error(r, 404, "BLOB_UPLOAD_UNKNOWN").await;
    // PUT without a digest.
    let r = reg.client.put(reg.url(&loc)).send().await.unwrap();
    assert_oci_error(r, 400, "DIGEST_INVALID").await;
    // Unknown route and wrong method.
    let r = reg.get("/v2/a/whatever/x").await;
    assert_eq!(r.status(), 404);
    let r = reg
        .client
        .put(reg.url(&format!("/v2/a/blobs/{d}")))
        .send()
        .await
        .unwrap();
    assert_oci_error(r, 405, "UNSUPPORTED").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn range_reads() {
    let reg = TestRegistry::start().await;
    let data = payload(300_000, 3);
    let d = reg.push_mono("r", &data).await;
    let get = |range: &'static str| {
        reg.client
            .get(reg.url(&format!("/v2/r/blobs/{d}")))
            .header("range", range)
            .send()
    };
    let r = get("bytes=100-199").await.unwrap();
    assert_eq!(r.status(), 206);
    assert_eq!(header(&r, "content-range"), Some("bytes 100-199/300000"));
    assert_eq!(&r.bytes().await.unwrap()[..], &data[100..200]);
    let r = get("bytes=299990-").await.unwrap();
    assert_eq!(r.status(), 206);
    assert_eq!(&r.bytes().await.unwrap()[..], &data[299_990..]);
    let r = get("bytes=-5").await.unwrap();
    assert_eq!(&r.bytes().await.unwrap()[..], &data[299_995..]);
    let r = get("bytes=300000-").await.unwrap();
    assert_eq!(header(&r, "content-range"), Some("bytes */300000"));
    // 416 with a code from the spec's set (the range is a size the blob
    // does not have), so clients that switch on codes are not surprised.
    assert_oci_error(r, 416, "SIZE_INVALID").await;
    // Multi-range is answered with the whole blob.
    let r = get("bytes=0-1,5-6").await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().await.unwrap().len(), data.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_unlinks_from_that_repository_only() {
    let reg = TestRegistry::start().await;
    let data = payload(1000, 4);
    let d = reg.push_mono("one", &data).await;
    reg.push_mono("two", &data).await;
    let r = reg.delete(&format!("/v2/one/blobs/{d}")).await;
    assert_eq!(r.status(), 202);
    assert_oci_error(reg.get_blob("one", &d).await, 404, "BLOB_UNKNOWN").await;
    assert_eq!(reg.get_blob("two", &d).await.status(), 200);
    let r = reg.delete(&format!("/v2/one/blobs/{d}")).await;
    assert_oci_error(r, 404, "BLOB_UNKNOWN").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deletes_can_be_switched_off() {
    let reg = TestRegistry::start_with(|c| c.delete_enabled = false).await;
    let d = reg.push_mono("r", b"keep me").await;
    let r = reg.delete(&format!("/v2/r/blobs/{d}")).await;
    assert_oci_error(r, 405, "UNSUPPORTED").await;
    assert_eq!(reg.get_blob("r", &d).await.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cross_repository_mount() {
    let reg = TestRegistry::start().await;
    let data = payload(2000, 5);
    let d = reg.push_mono("src/repo", &data).await;
    let r = reg
        .client
        .post(reg.url(&format!("/v2/dst/blobs/uploads/?mount={d}&from=src/repo")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    assert_eq!(location(&r), format!("/v2/dst/blobs/{d}"));
    assert_eq!(reg.get_blob("dst", &d).await.bytes().await.unwrap(), data);
    // Not mountable (the source repo does not have it): a normal session.
    let other = digest(b"absent");
    let r = reg
        .client
        .post(reg.url(&format!(
            "/v2/dst2/blobs/uploads/?mount={other}&from=src/repo"
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    assert!(location(&r).starts_with("/v2/dst2/blobs/uploads/"));
    // A repository cannot mount what it was never given.
    let r = reg
        .client
        .post(reg.url(&format!("/v2/dst3/blobs/uploads/?mount={d}&from=nothere")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    assert_eq!(reg.get_blob("dst3", &d).await.status(), 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_removes_the_session_and_its_files() {
    let reg = TestRegistry::start().await;
    let loc = reg.start_upload("r").await;
    reg.client
        .patch(reg.url(&loc))
        .body(vec![0u8; 1000])
        .send()
        .await
        .unwrap();
    let r = reg.delete(&loc).await;
    assert_eq!(r.status(), 204);
    let r = reg.get(&loc).await;
    assert_oci_error(r, 404, "BLOB_UPLOAD_UNKNOWN").await;
    let r = reg.delete(&loc).await;
    assert_oci_error(r, 404, "BLOB_UPLOAD_UNKNOWN").await;
    assert_eq!(reg.open_sessions(), 0);
}
