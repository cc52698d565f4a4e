//! BuildKit's registry cache (`--cache-to type=registry`), pushed and
//! pulled with the requests BuildKit's pusher and importer make: the
//! legacy form (an index whose entries are layer blobs and a
//! `application/vnd.buildkit.cacheconfig.v0` config blob, in both OCI and
//! Docker media types) and the `image-manifest=true` form (an OCI
//! manifest with the cache config as its config), with GC in between.

use crate::common::*;
use serde_json::{json, Value};
use std::time::Duration;

const CACHE_CONFIG: &str = "application/vnd.buildkit.cacheconfig.v0";
const OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
const DOCKER_LAYER: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";

/// What BuildKit exports: layers and the cache config describing them.
struct Cache {
    layers: Vec<Vec<u8>>,
    config: Vec<u8>,
}

impl Cache {
    fn new(seeds: &[u64]) -> Cache {
        let layers: Vec<Vec<u8>> = seeds
            .iter()
            .map(|s| payload(20_000 + *s as usize, *s))
            .collect();
        let records: Vec<Value> = layers
            .iter()
            .map(|l| json!({ "digest": digest(l) }))
            .collect();
        let config = serde_json::to_vec(&json!({ "layers": records, "records": [] })).unwrap();
        Cache { layers, config }
    }

    fn blobs(&self) -> impl Iterator<Item = &Vec<u8>> {
        self.layers.iter().chain([&self.config])
    }

    /// The legacy export: every entry of the index is a blob.
    fn index(&self, index_type: &str, layer_type: &str) -> Vec<u8> {
        let mut manifests: Vec<Value> = self
            .layers
            .iter()
            .map(|l| {
                let mut d = descriptor(layer_type, l);
                d["annotations"] = json!({
                    "buildkit/createdat": "2026-12-02T10:00:00Z",
                    "containerd.io/uncompressed": digest(l),
                });
                d
            })
            .collect();
        manifests.push(descriptor(CACHE_CONFIG, &self.config));
        serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": index_type,
            "manifests": manifests,
        }))
        .unwrap()
    }

    /// `image-manifest=true`: an OCI manifest whose config is the cache's.
    fn image_manifest(&self) -> Vec<u8> {
        let layers: Vec<Value> = self
            .layers
            .iter()
            .map(|l| descriptor(OCI_LAYER, l))
            .collect();
        serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": descriptor(CACHE_CONFIG, &self.config),
            "layers": layers,
        }))
        .unwrap()
    }
}

/// As BuildKit's pusher: HEAD each blob, upload the missing ones, then PUT
/// the cache manifest under its tag.
async fn export(
    reg: &TestRegistry,
    repo: &str,
    tag: &str,
    cache: &Cache,
    media_type: &str,
    manifest: &[u8],
) {
    for blob in cache.blobs() {
        let head = reg
            .client
            .head(reg.url(&format!("/v2/{repo}/blobs/{}", digest(blob))))
            .send()
            .await
            .unwrap();
        if head.status() == 404 {
            reg.push_mono(repo, blob).await;
        } else {
            assert_eq!(head.status(), 200);
        }
    }
    let r = reg.put_manifest(repo, tag, media_type, manifest).await;
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
    assert_eq!(
        header(&r, "docker-content-digest"),
        Some(digest(manifest).as_str())
    );
}

/// As BuildKit's importer: resolve the tag, read the manifest back byte
/// for byte, then fetch the cache config and every layer it lists.
async fn import(reg: &TestRegistry, repo: &str, tag: &str, manifest: &[u8]) {
    let r = reg
        .client
        .get(reg.url(&format!("/v2/{repo}/manifests/{tag}")))
        .header(
            "accept",
            format!("{OCI_INDEX}, {DOCKER_LIST}, {OCI_MANIFEST}"),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().await.unwrap(), manifest, "served byte for byte");
    let m: Value = serde_json::from_slice(manifest).unwrap();
    let entries: Vec<&Value> = match m["manifests"].as_array() {
        Some(entries) => entries.iter().collect(),
        None => m["layers"]
            .as_array()
            .unwrap()
            .iter()
            .chain([&m["config"]])
            .collect(),
    };
    for e in entries {
        let d = e["digest"].as_str().unwrap();
        let got = reg.get_blob(repo, d).await;
        assert_eq!(got.status(), 200, "{d} of {repo}:{tag}");
        assert_eq!(digest(&got.bytes().await.unwrap()), d);
    }
}

async fn gc(reg: &TestRegistry) -> Value {
    // Links and blobs must be older than a zero grace.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    crate::gc::gc(reg, "grace_secs=0").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_cache_formats_push_pull_and_survive_gc() {
    let reg = TestRegistry::start_with(|c| c.gc_delete_untagged = true).await;
    let repo = "ci/cache";
    let legacy = Cache::new(&[1, 2, 3]);
    let docker = Cache::new(&[2, 4]);
    let manifest_form = Cache::new(&[3, 5]);
    let legacy_index = legacy.index(OCI_INDEX, OCI_LAYER);
    let docker_index = docker.index(DOCKER_LIST, DOCKER_LAYER);
    let image = manifest_form.image_manifest();
    export(&reg, repo, "main", &legacy, OCI_INDEX, &legacy_index).await;
    export(&reg, repo, "docker", &docker, DOCKER_LIST, &docker_index).await;
    export(&reg, repo, "manifest", &manifest_form, OCI_MANIFEST, &image).await;

    // Listings and referrers cope with an index of blobs.
    let tags = reg.get_json(&format!("/v2/{repo}/tags/list")).await;
    assert_eq!(tags["tags"], json!(["docker", "main", "manifest"]));
    let referrers = reg
        .get_json(&format!("/v2/{repo}/referrers/{}", digest(&legacy_index)))
        .await;
    assert_eq!(referrers["manifests"], json!([]));

    // GC keeps everything the three tags name (the index's children too).
    let first = gc(&reg).await;
    assert_eq!(first["blobs_removed"], 0, "{first}");
    import(&reg, repo, "main", &legacy_index).await;
    import(&reg, repo, "docker", &docker_index).await;
    import(&reg, repo, "manifest", &image).await;

    // The next build moves `main` to a new cache sharing layer 2: the old
    // index, its config and layer 1 are garbage (layer 3 is still in the
    // manifest form, layer 2 in both).
    let next = Cache::new(&[2, 6]);
    let next_index = next.index(OCI_INDEX, OCI_LAYER);
    export(&reg, repo, "main", &next, OCI_INDEX, &next_index).await;
    let second = gc(&reg).await;
    assert_eq!(second["blobs_removed"], 3, "{second}");
    assert_oci_error(
        reg.get_blob(repo, &digest(&legacy.layers[0])).await,
        404,
        "BLOB_UNKNOWN",
    )
    .await;
    import(&reg, repo, "main", &next_index).await;
    import(&reg, repo, "docker", &docker_index).await;
    import(&reg, repo, "manifest", &image).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_index_entry_must_be_in_the_repository_as_what_its_type_says() {
    let reg = TestRegistry::start().await;
    let cache = Cache::new(&[7, 8]);
    // Nothing uploaded: the blob entries are unknown blobs.
    let index = cache.index(OCI_INDEX, OCI_LAYER);
    let r = reg.put_manifest("c", "x", OCI_INDEX, &index).await;
    assert_oci_error(r, 400, "MANIFEST_BLOB_UNKNOWN").await;

    // A blob is not a manifest: an entry typed as a manifest must be one.
    for b in cache.blobs() {
        reg.push_mono("c", b).await;
    }
    let as_manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [descriptor(OCI_MANIFEST, &cache.config)],
    }))
    .unwrap();
    let r = reg.put_manifest("c", "x", OCI_INDEX, &as_manifest).await;
    assert_oci_error(r, 400, "MANIFEST_UNKNOWN").await;

    let r = reg.put_manifest("c", "x", OCI_INDEX, &index).await;
    assert_eq!(r.status(), 201);
}
