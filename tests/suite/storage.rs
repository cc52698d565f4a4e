//! One storage contract, every implementation: the same scenarios drive
//! `BlobStorage`/`UploadWriter` directly (as distribution's storage-driver
//! suite drives its drivers) against the data folder and against a real
//! SeaweedFS bucket indexed in a real PostgreSQL. Errors are compared as the
//! OCI codes a client would see, so both must fail the same way too.

use crate::common::services::{skip_without, use_object_store, Postgres, Seaweed};
use crate::common::*;
use bytes::Bytes;
use http_body_util::BodyExt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use wharf::content::Placement;
use wharf::http::error::ApiError;
use wharf::meta::{Meta, MetaWrite, MetaWriter};
use wharf::oci::{Algorithm, Digest, RepoName};
use wharf::storage::{
    BlobContent, BlobRequest, BlobStorage, StorageError, SweepPlan, UploadWriter,
};

struct Opened {
    storage: Arc<dyn BlobStorage>,
    meta: Meta,
    writer: Option<MetaWriter>,
    _dir: tempfile::TempDir,
}

impl Drop for Opened {
    fn drop(&mut self) {
        // The writer thread ends once every handle on it is gone.
        if let Some(w) = self.writer.take() {
            std::thread::spawn(move || w.join());
        }
    }
}

async fn open(tweak: impl FnOnce(&mut wharf::Config)) -> Opened {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config_for(dir.path().to_path_buf());
    tweak(&mut cfg);
    let space = Arc::new(wharf::space::DiskSpace::unreserved(&cfg.root));
    let (meta, writer, pg) = Meta::open_configured(&cfg, space.clone())
        .await
        .expect("metadata opens");
    let storage = wharf::storage::open_configured(
        &cfg,
        &meta,
        pg,
        space,
        wharf::metrics::ReadCacheMetrics::new().unwrap(),
        wharf::upload::budget::MemoryBudget::new(
            cfg.upload_memory_budget_mib,
            std::time::Duration::from_secs(30),
        ),
    )
    .await
    .expect("storage opens");
    Opened {
        storage,
        meta,
        writer: Some(writer),
        _dir: dir,
    }
}

async fn local() -> Opened {
    open(|_| {}).await
}

async fn object_store() -> Option<Opened> {
    let pg = Postgres::shared();
    let weed = Seaweed::shared();
    if skip_without("PostgreSQL", pg.is_some()) || skip_without("SeaweedFS", weed.is_some()) {
        return None;
    }
    let (url, weed) = (pg?.fresh_database(), weed?);
    let (bucket, endpoint) = (weed.fresh_bucket().await, weed.endpoint());
    Some(open(move |c| use_object_store(c, &url, &endpoint, &bucket)).await)
}

/// What a client would see of `e`: "CODE/status".
fn code(e: StorageError) -> String {
    let e = ApiError::from(e);
    format!("{}/{}", e.code(), e.status().as_u16())
}

fn repo(name: &str) -> RepoName {
    RepoName::parse(name).unwrap()
}

/// Feeds `data` in `chunk`-byte batches.
async fn feed(w: &mut dyn UploadWriter, data: &[u8], chunk: usize) {
    for piece in data.chunks(chunk) {
        w.feed(vec![Bytes::copy_from_slice(piece)], None)
            .await
            .unwrap();
    }
}

/// A blob's bytes as `repo` reads them, or its OCI error code.
async fn read(
    s: &dyn BlobStorage,
    repo: &RepoName,
    d: &Digest,
    range: Option<&str>,
) -> Result<(u64, bool, Vec<u8>), String> {
    let r = s
        .read_blob(BlobRequest {
            repo: repo.clone(),
            digest: d.clone(),
            range: range.map(str::to_owned),
            head_only: false,
        })
        .await
        .map_err(code)?;
    let bytes = match r.content {
        BlobContent::Empty => Vec::new(),
        BlobContent::Mapped(b) => b.to_vec(),
        BlobContent::Stream(o, _) => o.body.collect().await.unwrap().to_bytes().to_vec(),
        BlobContent::Redirect(url) => panic!("redirect to {url} without redirect_reads"),
    };
    assert_eq!(bytes.len() as u64, r.slice.len());
    Ok((r.size, r.partial, bytes))
}

/// Everything a handler relies on, in one pass.
async fn contract(o: Opened) {
    let s = o.storage.as_ref();
    let (app, other) = (repo("contract/app"), repo("contract/other"));
    // Past one 8 MiB part, so the object store cuts a part and holds a tail.
    let data = payload((9 << 20) + 12345, 61);
    let d: Digest = Digest::parse(&digest(&data)).unwrap();

    // A session resumed by a second writer (another request, or another
    // node) continues from what the first saved.
    let id = s.begin_upload(&app).await.unwrap();
    let mut w = s.resume_upload(&app, &id).await.unwrap();
    assert_eq!(w.size(), 0);
    let half = 5 << 20;
    feed(w.as_mut(), &data[..half], 1 << 20).await;
    assert_eq!(w.save().await.unwrap(), half as u64);
    drop(w);
    let mut w = s.resume_upload(&app, &id).await.unwrap();
    assert_eq!(w.size(), half as u64);
    feed(w.as_mut(), &data[half..], 3 << 20).await;
    assert_eq!(w.size(), data.len() as u64);

    // Only the session's own repository and canonical id name it.
    for (r, i) in [
        (&other, id.clone()),
        (&app, id.to_uppercase()),
        (&app, "not-a-session".to_owned()),
    ] {
        let e = s.resume_upload(r, &i).await.err().expect("unknown");
        assert_eq!(code(e), "BLOB_UPLOAD_UNKNOWN/404", "{r} {i}");
    }

    let c = w.complete(&d).await.unwrap();
    assert_eq!(
        (c.size, c.placement),
        (data.len() as u64, Placement::Stored)
    );
    let e = s.resume_upload(&app, &id).await.err().expect("ended");
    assert_eq!(code(e), "BLOB_UPLOAD_UNKNOWN/404");

    // Reads: whole, a range, a range past the end; unknown elsewhere.
    let (size, partial, got) = read(s, &app, &d, None).await.unwrap();
    assert_eq!((size, partial), (data.len() as u64, false));
    assert!(got == data, "whole blob differs");
    let (_, partial, got) = read(s, &app, &d, Some("bytes=8388600-8388700"))
        .await
        .unwrap();
    assert!(partial);
    assert_eq!(got, &data[8388600..=8388700]);
    let (_, _, got) = read(s, &app, &d, Some("bytes=-10")).await.unwrap();
    assert_eq!(got, &data[data.len() - 10..]);
    assert_eq!(
        read(s, &app, &d, Some(&format!("bytes={}-", data.len())))
            .await
            .err(),
        Some("SIZE_INVALID/416".into())
    );
    assert_eq!(
        read(s, &other, &d, None).await.err(),
        Some("BLOB_UNKNOWN/404".into())
    );
    let head = s
        .read_blob(BlobRequest {
            repo: app.clone(),
            digest: d.clone(),
            range: None,
            head_only: true,
        })
        .await
        .unwrap();
    assert!(matches!(head.content, BlobContent::Empty));
    assert_eq!(head.size, data.len() as u64);
    assert!(s.has_blob(&d).await.unwrap());
    let never = Digest::parse(&digest(b"never stored")).unwrap();
    assert!(!s.has_blob(&never).await.unwrap());

    // The same bytes again, in one request, to another repository: kept
    // once, linked in both.
    let id = s.begin_upload(&other).await.unwrap();
    let mut w = s.resume_upload(&other, &id).await.unwrap();
    feed(w.as_mut(), &data, 4 << 20).await;
    let c = w.complete(&d).await.unwrap();
    assert_eq!(c.placement, Placement::Deduplicated);
    assert!(read(s, &other, &d, None).await.unwrap().2 == data);
    assert_eq!(s.totals().await.unwrap(), (1, data.len() as u64));

    // A wrong digest is refused; the session survives for a retry.
    let small = b"small blob".to_vec();
    let id = s.begin_upload(&app).await.unwrap();
    let mut w = s.resume_upload(&app, &id).await.unwrap();
    feed(w.as_mut(), &small, 4).await;
    w.save().await.unwrap();
    let e = w.complete(&never).await.expect_err("mismatch");
    assert_eq!(code(e), "DIGEST_INVALID/400");
    let w = s.resume_upload(&app, &id).await.unwrap();
    assert_eq!(w.size(), small.len() as u64);
    let sd = Digest::parse(&digest(&small)).unwrap();
    assert_eq!(w.complete(&sd).await.unwrap().placement, Placement::Stored);

    // A sha512 digest gets the same answers in both modes: a wrong one is
    // refused, the right one stored and read back under it. Past one part,
    // so the object store completes a multipart upload before it can hash.
    let big = payload((8 << 20) + 777, 7);
    let d512 = Digest::of(Algorithm::Sha512, &big);
    for (want, expect) in [
        (Digest::of(Algorithm::Sha512, b"other"), false),
        (d512.clone(), true),
    ] {
        let id = s.begin_upload(&app).await.unwrap();
        let mut w = s.resume_upload(&app, &id).await.unwrap();
        feed(w.as_mut(), &big, 3 << 20).await;
        match w.complete(&want).await {
            Ok(c) => assert!(expect && c.placement == Placement::Stored),
            Err(e) => {
                assert!(!expect, "{e}");
                assert_eq!(code(e), "DIGEST_INVALID/400");
                // The data folder keeps a mismatched session for a retry;
                // the object store has spent its parts. Either way it goes.
                let _ = s.cancel_upload(&app, &id).await;
            }
        }
    }
    let (size, _, got) = read(s, &app, &d512, None).await.unwrap();
    assert!(
        size == big.len() as u64 && got == big,
        "sha512 blob differs"
    );
    assert!(s.has_blob(&d512).await.unwrap());

    // Two requests on one session at the same offset: one wins, the other
    // learns the session moved on (416 for the client).
    let id = s.begin_upload(&app).await.unwrap();
    let mut a = s.resume_upload(&app, &id).await.unwrap();
    let mut b = s.resume_upload(&app, &id).await.unwrap();
    feed(a.as_mut(), b"first", 8).await;
    let a_saved = a.save().await;
    let b_fed = b.feed(vec![Bytes::from_static(b"second")], None).await;
    let b_saved = match b_fed {
        Ok(()) => b.save().await,
        Err(e) => Err(e),
    };
    assert_eq!(a_saved.unwrap(), 5);
    assert_eq!(code(b_saved.expect_err("loser")), "BLOB_UPLOAD_INVALID/416");
    // Cancelled: gone for every request.
    s.cancel_upload(&app, &id).await.unwrap();
    let e = s.resume_upload(&app, &id).await.err().expect("cancelled");
    assert_eq!(code(e), "BLOB_UPLOAD_UNKNOWN/404");
    let e = s.cancel_upload(&app, &id).await.expect_err("cancelled");
    assert_eq!(code(e), "BLOB_UPLOAD_UNKNOWN/404");

    // Manifest bytes: stored once, read back.
    let m = Bytes::from_static(br#"{"schemaVersion":2}"#);
    let md = Digest::parse(&digest(&m)).unwrap();
    assert_eq!(
        s.put_manifest(&md, m.clone()).await.unwrap().0,
        Placement::Stored
    );
    assert_eq!(
        s.put_manifest(&md, m.clone()).await.unwrap().0,
        Placement::Deduplicated
    );
    assert_eq!(s.manifest_bytes(&md).await.unwrap(), Some(m));
    assert_eq!(s.manifest_bytes(&never).await.unwrap(), None);

    // A stored manifest's type never changes: the metadata rules refuse a
    // record of the same digest with another media type, in both backends.
    let put = |media_type: &str| MetaWrite::PutManifest {
        repo: app.clone(),
        digest: md.clone(),
        record: wharf::meta::ManifestRecord {
            media_type: media_type.into(),
            size: 19,
            subject: None,
            artifact_type: None,
            annotations: None,
            blobs: Vec::new(),
            children: Vec::new(),
            created: 0,
            proxied: false,
        },
        tag: None,
        tag_immutable: false,
    };
    let oci = "application/vnd.oci.image.manifest.v1+json";
    o.meta.write(vec![put(oci)]).await.unwrap();
    o.meta.write(vec![put(oci)]).await.unwrap();
    let docker = "application/vnd.docker.distribution.manifest.v2+json";
    let e = o.meta.write(vec![put(docker)]).await.unwrap_err();
    assert!(
        e.to_string().contains(wharf::meta::rules::TYPE_FIXED),
        "{e}"
    );
    let (r, m) = (app.clone(), md.clone());
    let kept = o
        .meta
        .query(move |meta| meta.manifest(&r, &m))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(kept.media_type, oci);
    o.meta
        .write(vec![MetaWrite::DeleteManifest {
            repo: app.clone(),
            digest: md.clone(),
        }])
        .await
        .unwrap();

    // The sweep frees exactly what nothing links or names, once unlinked
    // everywhere; a dry run only counts.
    let unlink = |r: &RepoName, d: &Digest| MetaWrite::UnlinkBlob {
        repo: r.clone(),
        digest: d.clone(),
    };
    o.meta
        .write(vec![
            unlink(&app, &d),
            unlink(&app, &sd),
            unlink(&app, &d512),
        ])
        .await
        .unwrap();
    let plan = |dry_run| SweepPlan {
        cutoff: SystemTime::now() + Duration::from_secs(5),
        started: SystemTime::now() + Duration::from_secs(5),
        dry_run,
        gone_links: Default::default(),
        gone_manifests: Default::default(),
    };
    // `d` is still linked in `other`; `sd`, `d512` and the unnamed
    // manifest go.
    let freed = (3, (small.len() + big.len() + 19) as u64);
    assert_eq!(s.sweep(&o.meta, plan(true)).await.unwrap(), freed);
    assert!(s.has_blob(&sd).await.unwrap());
    assert_eq!(s.sweep(&o.meta, plan(false)).await.unwrap(), freed);
    assert!(!s.has_blob(&sd).await.unwrap());
    assert!(s.has_blob(&d).await.unwrap());
    assert_eq!(s.manifest_bytes(&md).await.unwrap(), None);
    o.meta.write(vec![unlink(&other, &d)]).await.unwrap();
    assert_eq!(
        s.sweep(&o.meta, plan(false)).await.unwrap(),
        (1, data.len() as u64)
    );
    assert_eq!(
        read(s, &other, &d, None).await.err(),
        Some("BLOB_UNKNOWN/404".into())
    );
    assert_eq!(s.totals().await.unwrap(), (0, 0));
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_data_folder_keeps_the_storage_contract() {
    contract(local().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_object_store_keeps_the_storage_contract() {
    if let Some(o) = object_store().await {
        contract(o).await;
    }
}
