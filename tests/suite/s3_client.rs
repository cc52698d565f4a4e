//! The S3 client against a real SeaweedFS started by the harness: every
//! call Wharf makes, including the multipart path an upload takes and
//! ranged and presigned reads.

use crate::common::payload;
use crate::common::services::{skip_without, Seaweed};
use bytes::Bytes;
use http_body_util::BodyExt;
use wharf::s3::{PartBody, S3Client, S3Error};

async fn client() -> Option<S3Client> {
    let weed = Seaweed::shared();
    if skip_without("SeaweedFS (weed)", weed.is_some()) {
        return None;
    }
    let weed = weed?;
    let bucket = weed.fresh_bucket().await;
    Some(S3Client::new(&weed.settings(&bucket)).unwrap())
}

async fn read_all(c: &S3Client, key: &str, range: Option<(u64, u64)>) -> Vec<u8> {
    let o = c
        .get_object(key, range)
        .await
        .unwrap()
        .expect("object exists");
    let body = o.body.collect().await.unwrap().to_bytes();
    assert_eq!(body.len() as u64, o.len);
    body.to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn objects_put_head_get_range_delete() {
    let Some(c) = client().await else { return };
    let data = payload(300_000, 1);
    let chunks: Vec<Bytes> = data.chunks(70_000).map(Bytes::copy_from_slice).collect();
    c.put_object("a/b", PartBody::new(chunks)).await.unwrap();
    assert_eq!(c.head_object("a/b").await.unwrap(), Some(300_000));
    assert_eq!(read_all(&c, "a/b", None).await, data);
    assert_eq!(
        read_all(&c, "a/b", Some((1000, 1999))).await,
        data[1000..2000]
    );
    assert_eq!(c.head_object("missing").await.unwrap(), None);
    assert!(c.get_object("missing", None).await.unwrap().is_none());
    // A presigned URL reads without credentials.
    let url = c
        .presign_get("a/b", std::time::Duration::from_secs(60))
        .await
        .unwrap();
    let got = reqwest::get(&url).await.unwrap();
    assert_eq!(got.status(), 200);
    assert_eq!(got.bytes().await.unwrap(), data);
    c.delete_object("a/b").await.unwrap();
    assert_eq!(c.head_object("a/b").await.unwrap(), None);
    c.delete_object("a/b").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multipart_upload_completes_and_aborts() {
    let Some(c) = client().await else { return };
    let part = 5 << 20;
    let data = payload(2 * part + 12_345, 2);
    let id = c.create_multipart("mp/one").await.unwrap();
    // Numbers with gaps, as racing requests leave them.
    let mut parts = Vec::new();
    for (i, piece) in data.chunks(part).enumerate() {
        let body = PartBody::new([Bytes::copy_from_slice(piece)]);
        let n = i as u16 * 3 + 2;
        parts.push((n, c.upload_part("mp/one", &id, n, body).await.unwrap()));
    }
    c.complete_multipart("mp/one", &id, &parts).await.unwrap();
    assert_eq!(
        c.head_object("mp/one").await.unwrap(),
        Some(data.len() as u64)
    );
    assert_eq!(read_all(&c, "mp/one", None).await, data);

    let id = c.create_multipart("mp/two").await.unwrap();
    let body = PartBody::new([Bytes::copy_from_slice(&data[..part])]);
    c.upload_part("mp/two", &id, 1, body).await.unwrap();
    c.abort_multipart("mp/two", &id).await.unwrap();
    assert_eq!(c.head_object("mp/two").await.unwrap(), None);
    // Completing an aborted upload fails; it is not retried as available.
    let err = c
        .complete_multipart("mp/two", &id, &[(1, "\"x\"".into())])
        .await;
    assert!(matches!(err, Err(S3Error::Status { .. })), "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_endpoint_is_unavailable_quickly() {
    let port = crate::common::services::free_port();
    let c = S3Client::new(&wharf::s3::S3Settings {
        endpoint: format!("http://127.0.0.1:{port}"),
        bucket: "b".into(),
        region: "us-east-1".into(),
        credentials: wharf::s3::credentials::CredentialSource::Fixed {
            key: "k".into(),
            secret: "s".into(),
            token: None,
        },
        path_style: true,
        timeout: std::time::Duration::from_secs(2),
        ca_file: None,
    })
    .unwrap();
    let err = c.head_object("x").await;
    assert!(matches!(err, Err(S3Error::Unavailable(_))), "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_https_endpoint_is_trusted_through_its_ca_file_only() {
    let weed = Seaweed::shared();
    if skip_without("SeaweedFS (weed)", weed.is_some()) {
        return;
    }
    let weed = weed.unwrap();
    let bucket = weed.fresh_bucket().await;
    let dir = tempfile::tempdir().unwrap();
    let front = crate::common::tls_front::TlsFront::start(weed.s3_addr(), dir.path()).await;
    let mut settings = weed.settings(&bucket);
    settings.endpoint = front.endpoint();
    // Without the CA: the certificate is refused, as unavailable (503).
    let c = S3Client::new(&settings).unwrap();
    let err = c.head_object("x").await;
    match &err {
        Err(S3Error::Unavailable(m)) => assert!(m.contains("certificate"), "{m}"),
        other => panic!("{other:?}"),
    }
    // With it: objects and multipart uploads over TLS.
    settings.ca_file = Some(front.ca_file.clone());
    let c = S3Client::new(&settings).unwrap();
    let data = payload(6 << 20, 9);
    c.put_object("tls/a", PartBody::new([Bytes::from(data.clone())]))
        .await
        .unwrap();
    assert_eq!(read_all(&c, "tls/a", Some((5, 9))).await, data[5..10]);
    let id = c.create_multipart("tls/m").await.unwrap();
    let etag = c
        .upload_part("tls/m", &id, 1, PartBody::new([Bytes::from(data.clone())]))
        .await
        .unwrap();
    c.complete_multipart("tls/m", &id, &[(1, etag)])
        .await
        .unwrap();
    assert_eq!(read_all(&c, "tls/m", None).await, data);
    // A CA file that is not there is a configuration error at start.
    settings.ca_file = Some(dir.path().join("missing.pem"));
    assert!(matches!(S3Client::new(&settings), Err(S3Error::Config(_))));
    // An unknown scheme too.
    settings.endpoint = "ftp://127.0.0.1:1".into();
    assert!(matches!(S3Client::new(&settings), Err(S3Error::Config(_))));
}
