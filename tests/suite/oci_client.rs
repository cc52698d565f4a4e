//! A real Rust client (oci-client, the ORAS project's crate) pushing and
//! pulling a multi-layer image, a multi-arch index and a referrer.

use crate::common::*;
use oci_client::client::{ClientConfig, ClientProtocol, Config, ImageLayer};
use oci_client::manifest::{
    OciDescriptor, OciImageIndex, OciImageManifest, IMAGE_LAYER_GZIP_MEDIA_TYPE,
    IMAGE_MANIFEST_MEDIA_TYPE, OCI_IMAGE_INDEX_MEDIA_TYPE, OCI_IMAGE_MEDIA_TYPE,
};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use serde_json::json;

fn client() -> Client {
    // Built without TLS backends of its own; the tests speak plain HTTP.
    let _ = rustls::crypto::ring::default_provider().install_default();
    Client::new(ClientConfig {
        protocol: ClientProtocol::Http,
        ..Default::default()
    })
}

fn reference(reg: &TestRegistry, path: &str) -> Reference {
    let host = reg.base.trim_start_matches("http://");
    format!("{host}/{path}").parse().unwrap()
}

fn layers(seed: u64, n: usize) -> Vec<ImageLayer> {
    (0..n)
        .map(|i| {
            ImageLayer::new(
                payload(50_000 + i * 1000, seed * 10 + i as u64),
                IMAGE_LAYER_GZIP_MEDIA_TYPE.to_string(),
                None,
            )
        })
        .collect()
}

fn config(arch: &str) -> Config {
    Config::oci_v1(
        serde_json::to_vec(&json!({"architecture": arch, "os": "linux", "rootfs": {"type": "layers", "diff_ids": []}}))
            .unwrap(),
        None,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multi_layer_image_push_and_pull() {
    let reg = TestRegistry::start().await;
    let c = client();
    let image = reference(&reg, "rust/img:v1");
    let ls = layers(1, 4);
    c.push(&image, &ls, config("amd64"), &RegistryAuth::Anonymous, None)
        .await
        .unwrap();
    let pulled = c
        .pull(
            &image,
            &RegistryAuth::Anonymous,
            vec![IMAGE_LAYER_GZIP_MEDIA_TYPE],
        )
        .await
        .unwrap();
    // The client fetches layers concurrently; compare them as a set.
    let mut got: Vec<String> = pulled.layers.iter().map(|l| digest(&l.data)).collect();
    let mut want: Vec<String> = ls.iter().map(|l| digest(&l.data)).collect();
    got.sort();
    want.sort();
    assert_eq!(got, want);
    assert_eq!(pulled.config.data, config("amd64").data);
    let tags = c
        .list_tags(&image, &RegistryAuth::Anonymous, None, None)
        .await
        .unwrap();
    assert_eq!(tags.tags, vec!["v1".to_string()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multi_arch_index_and_referrers() {
    let reg = TestRegistry::start().await;
    let c = client();
    let auth = RegistryAuth::Anonymous;
    let mut entries = Vec::new();
    for (i, arch) in ["amd64", "arm64"].into_iter().enumerate() {
        let image = reference(&reg, &format!("rust/multi:{arch}"));
        c.push(&image, &layers(10 + i as u64, 2), config(arch), &auth, None)
            .await
            .unwrap();
        let (raw, digest) = c
            .pull_manifest_raw(&image, &auth, &[OCI_IMAGE_MEDIA_TYPE])
            .await
            .unwrap();
        entries.push(json!({
            "mediaType": OCI_IMAGE_MEDIA_TYPE, "digest": digest, "size": raw.len(),
            "platform": {"architecture": arch, "os": "linux"}
        }));
    }
    let index: OciImageIndex = serde_json::from_value(json!({
        "schemaVersion": 2, "mediaType": OCI_IMAGE_INDEX_MEDIA_TYPE, "manifests": entries
    }))
    .unwrap();
    let multi = reference(&reg, "rust/multi:latest");
    c.push_manifest_list(&multi, &auth, index).await.unwrap();

    // The client resolves the index to its platform's image and pulls it.
    let (raw, _) = c
        .pull_manifest_raw(&multi, &auth, &[OCI_IMAGE_INDEX_MEDIA_TYPE])
        .await
        .unwrap();
    let back: serde_json::Value = serde_json::from_slice(&raw).unwrap();
    assert_eq!(back["manifests"].as_array().unwrap().len(), 2);
    let amd64_digest = entries[0]["digest"].as_str().unwrap().to_string();
    let pulled = c
        .pull(
            &reference(&reg, &format!("rust/multi@{amd64_digest}")),
            &auth,
            vec![IMAGE_LAYER_GZIP_MEDIA_TYPE],
        )
        .await
        .unwrap();
    assert_eq!(pulled.layers.len(), 2);

    // A signature-like artifact referring to the amd64 image.
    let empty = Config::new(
        b"{}".to_vec(),
        "application/vnd.oci.empty.v1+json".into(),
        None,
    );
    let sig_layer = ImageLayer::new(b"signature".to_vec(), "application/x-sig".into(), None);
    let mut manifest = OciImageManifest::build(std::slice::from_ref(&sig_layer), &empty, None);
    manifest.artifact_type = Some("application/x-signature".into());
    manifest.subject = Some(OciDescriptor {
        media_type: IMAGE_MANIFEST_MEDIA_TYPE.into(),
        digest: amd64_digest.clone(),
        size: entries[0]["size"].as_i64().unwrap(),
        ..Default::default()
    });
    c.push(
        &reference(&reg, "rust/multi:sig"),
        &[sig_layer],
        empty,
        &auth,
        Some(manifest),
    )
    .await
    .unwrap();
    let referrers = c
        .pull_referrers(
            &reference(&reg, &format!("rust/multi@{amd64_digest}")),
            None,
        )
        .await
        .unwrap();
    assert_eq!(referrers.manifests.len(), 1);
    assert_eq!(
        referrers.manifests[0].artifact_type.as_deref(),
        Some("application/x-signature")
    );
}
