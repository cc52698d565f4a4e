//! The scenarios: what one operation of each is, and the untimed setup it
//! needs. Every response is checked (status, headers, byte counts); a check
//! that fails counts as an error.

use crate::conn::{Conn, Error};
use crate::payload::{self, Blob};
use bytes::Bytes;
use http::Method;
use serde_json::json;

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

pub struct Params {
    pub size: usize,
    pub chunk: usize,
    pub ops: usize,
    pub clients: usize,
    pub run: String,
    /// The seeded layout (`seed`, `*-seeded`, `delete-*`).
    pub repos: usize,
    pub seeded: usize,
    pub big_every: usize,
}

/// Data prepared before the clock starts.
pub enum Prepared {
    Unique {
        repo: String,
        blobs: Vec<Blob>,
        chunk: Option<usize>,
    },
    Same {
        repo: String,
        blob: Blob,
    },
    Pull {
        repo: String,
        blobs: Vec<Blob>,
    },
    Range {
        repo: String,
        blob: Blob,
        chunk: usize,
    },
    ManifestPut {
        repo: String,
        config: Blob,
        layer: Blob,
    },
    ManifestRead {
        repo: String,
        head: bool,
        len: u64,
    },
    Farm(Box<Farm>),
    /// Opens upload sessions and leaves them idle (memory per session).
    OpenSessions {
        repo: String,
    },
    /// The object store's own ingest ceiling: each blob PUT straight into
    /// a bucket (`--host` is the S3 endpoint), no registry in front.
    ObjectPut {
        bucket: rusty_s3::Bucket,
        credentials: rusty_s3::Credentials,
        prefix: String,
        blobs: Vec<Blob>,
    },
    /// A seeded registry (`loadtest/scale.py`): seeding it, reading it,
    /// deleting from it.
    Seeded(Box<crate::seeded::Layout>, crate::seeded::Op),
    /// Loopback ceiling: an in-process HTTP server returning a static
    /// buffer, fetched the same way as a blob.
    Static {
        host: String,
        size: u64,
    },
}

pub struct Farm {
    base_repo: String,
    base: Vec<Blob>,
    unique: Vec<Blob>,
    per_image: usize,
}

/// Strips an absolute URL down to its path (distribution returns absolute
/// Locations, Wharf relative ones).
fn path_of(location: &str) -> String {
    if let Some(rest) = location.split_once("://").map(|(_, r)| r) {
        return rest.find('/').map_or("/".into(), |i| rest[i..].to_owned());
    }
    location.to_owned()
}

fn with_digest(location: &str, digest: &str) -> String {
    let sep = if location.contains('?') { '&' } else { '?' };
    format!("{}{sep}digest={digest}", path_of(location))
}

fn location(r: &crate::conn::Reply) -> Result<String, Error> {
    r.header("location")
        .map(str::to_owned)
        .ok_or_else(|| "no Location header".into())
}

/// POST + PUT (monolithic) or POST + PATCH... + PUT (chunked).
pub async fn push(c: &mut Conn, repo: &str, b: &Blob, chunk: Option<usize>) -> Result<u64, Error> {
    let r = c
        .send(
            Method::POST,
            &format!("/v2/{repo}/blobs/uploads/"),
            &[],
            Bytes::new(),
            false,
        )
        .await?
        .expect(202, "start upload")?;
    let mut loc = location(&r)?;
    let last = match chunk {
        None => b.data.clone(),
        Some(chunk) => {
            let mut off = 0;
            while off < b.data.len() {
                let end = (off + chunk).min(b.data.len());
                let r = c
                    .send(
                        Method::PATCH,
                        &path_of(&loc),
                        &[
                            ("content-type", "application/octet-stream".into()),
                            ("content-range", format!("{}-{}", off, end - 1)),
                        ],
                        b.data.slice(off..end),
                        false,
                    )
                    .await?
                    .expect(202, "patch")?;
                loc = location(&r)?;
                off = end;
            }
            Bytes::new()
        }
    };
    let r = c
        .send(
            Method::PUT,
            &with_digest(&loc, &b.digest),
            &[("content-type", "application/octet-stream".into())],
            last,
            false,
        )
        .await?
        .expect(201, "complete upload")?;
    if r.header("docker-content-digest") != Some(b.digest.as_str()) {
        return Err("wrong Docker-Content-Digest on 201".into());
    }
    Ok(b.data.len() as u64)
}

async fn get_blob(c: &mut Conn, repo: &str, b: &Blob) -> Result<u64, Error> {
    let r = c
        .send(
            Method::GET,
            &format!("/v2/{repo}/blobs/{}", b.digest),
            &[],
            Bytes::new(),
            false,
        )
        .await?
        .expect(200, "blob GET")?;
    if r.body_len != b.data.len() as u64 {
        return Err(format!("blob GET returned {} of {} bytes", r.body_len, b.data.len()).into());
    }
    Ok(r.body_len)
}

pub(crate) fn manifest(config: &Blob, layers: &[&Blob], note: &str) -> Bytes {
    let desc =
        |mt: &str, b: &Blob| json!({"mediaType": mt, "digest": b.digest, "size": b.data.len()});
    let body = json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": desc("application/vnd.oci.image.config.v1+json", config),
        "layers": layers.iter().map(|l| desc("application/vnd.oci.image.layer.v1.tar+gzip", l)).collect::<Vec<_>>(),
        "annotations": {"wharf.load": note},
    });
    Bytes::from(serde_json::to_vec(&body).unwrap_or_default())
}

pub(crate) async fn put_manifest(
    c: &mut Conn,
    repo: &str,
    tag: &str,
    body: Bytes,
) -> Result<u64, Error> {
    let len = body.len() as u64;
    c.send(
        Method::PUT,
        &format!("/v2/{repo}/manifests/{tag}"),
        &[("content-type", OCI_MANIFEST.into())],
        body,
        false,
    )
    .await?
    .expect(201, "manifest PUT")?;
    Ok(len)
}

pub async fn prepare(name: &str, host: &str, p: &Params) -> Result<Prepared, Error> {
    if name == "tcp" {
        return Ok(Prepared::Static {
            host: crate::loopback::start(p.size).await?,
            size: p.size as u64,
        });
    }
    let mut c = Conn::open(host).await?;
    let repo = format!("load/{}/{name}", p.run);
    let seed = p
        .run
        .bytes()
        .fold(17u64, |a, b| a.wrapping_mul(31).wrapping_add(b as u64));
    Ok(match name {
        "push-mono" | "push-chunked" => Prepared::Unique {
            repo,
            blobs: payload::blobs(p.ops, p.size, seed),
            chunk: (name == "push-chunked").then_some(p.chunk),
        },
        "open-sessions" => Prepared::OpenSessions { repo },
        "s3-put" => {
            let env = |k: &str| std::env::var(k).map_err(|_| format!("s3-put needs {k}"));
            let endpoint = format!("http://{host}").parse::<url::Url>()?;
            let bucket = rusty_s3::Bucket::new(
                endpoint,
                rusty_s3::UrlStyle::Path,
                env("WHARF_LOAD_S3_BUCKET")?,
                "us-east-1",
            )?;
            Prepared::ObjectPut {
                bucket,
                credentials: rusty_s3::Credentials::new(
                    env("AWS_ACCESS_KEY_ID")?,
                    env("AWS_SECRET_ACCESS_KEY")?,
                ),
                prefix: repo,
                blobs: payload::blobs(p.ops, p.size, seed),
            }
        }
        "push-same" => Prepared::Same {
            repo,
            blob: payload::blob(p.size, seed),
        },
        "pull" | "blob-get" => {
            let n = if name == "pull" {
                p.clients.clamp(1, 16)
            } else {
                1
            };
            let blobs = payload::blobs(n, p.size, seed);
            for b in &blobs {
                push(&mut c, &repo, b, None).await?;
            }
            Prepared::Pull { repo, blobs }
        }
        "pull-range" => {
            let blob = payload::blob(p.size, seed);
            push(&mut c, &repo, &blob, None).await?;
            Prepared::Range {
                repo,
                blob,
                chunk: p.chunk.min(p.size),
            }
        }
        "manifest-put" | "manifest-get" | "manifest-head" => {
            let config = payload::blob(200, seed);
            let layer = payload::blob(4096, seed + 1);
            push(&mut c, &repo, &config, None).await?;
            push(&mut c, &repo, &layer, None).await?;
            if name == "manifest-put" {
                Prepared::ManifestPut {
                    repo,
                    config,
                    layer,
                }
            } else {
                let body = manifest(&config, &[&layer], "read");
                let len = put_manifest(&mut c, &repo, "latest", body).await?;
                Prepared::ManifestRead {
                    repo,
                    head: name == "manifest-head",
                    len,
                }
            }
        }
        "seed" | "manifest-get-seeded" | "blob-head-seeded" | "delete-big" | "delete-small" => {
            use crate::seeded::{Layout, Op};
            let layout = Layout::new(&p.run, p.repos, p.big_every, p.seeded);
            let op = match name {
                "seed" => {
                    layout.prepare_seed(host, p.ops, p.clients).await?;
                    Op::Seed
                }
                "manifest-get-seeded" => Op::ManifestGet,
                "blob-head-seeded" => Op::BlobHead,
                "delete-big" => Op::DeleteBig,
                _ => Op::DeleteSmall,
            };
            Prepared::Seeded(Box::new(layout), op)
        }
        "build-farm" => {
            let base_repo = format!("{repo}/base");
            let base = payload::blobs(5, p.size, seed);
            for b in &base {
                push(&mut c, &base_repo, b, None).await?;
            }
            let per_image = 2;
            let unique = payload::blobs(p.ops * (per_image + 1), p.chunk, seed + 99);
            Prepared::Farm(Box::new(Farm {
                base_repo,
                base,
                unique,
                per_image,
            }))
        }
        other => return Err(format!("unknown scenario {other}").into()),
    })
}

impl Prepared {
    /// The host clients talk to: the registry, or the loopback server.
    pub fn host<'a>(&'a self, registry: &'a str) -> &'a str {
        match self {
            Prepared::Static { host, .. } => host,
            _ => registry,
        }
    }
}

/// Runs operation `i` for client `client`; returns the payload bytes moved.
pub async fn run_op(prep: &Prepared, c: &mut Conn, client: usize, i: usize) -> Result<u64, Error> {
    match prep {
        Prepared::Unique { repo, blobs, chunk } => {
            push(c, repo, &blobs[i % blobs.len()], *chunk).await
        }
        Prepared::Same { repo, blob } => push(c, repo, blob, None).await,
        Prepared::ObjectPut {
            bucket,
            credentials,
            prefix,
            blobs,
        } => {
            use rusty_s3::S3Action;
            let blob = &blobs[i % blobs.len()];
            let url = bucket
                .put_object(Some(credentials), &format!("{prefix}/{i}"))
                .sign(std::time::Duration::from_secs(3600));
            let path = &url[url::Position::BeforePath..];
            c.send(
                Method::PUT,
                path,
                &[("content-length", blob.data.len().to_string())],
                blob.data.clone(),
                false,
            )
            .await?
            .expect(200, "object PUT")?;
            Ok(blob.data.len() as u64)
        }
        Prepared::Pull { repo, blobs } => get_blob(c, repo, &blobs[i % blobs.len()]).await,
        Prepared::Range { repo, blob, chunk } => {
            let slots = (blob.data.len() / chunk).max(1);
            let start = (i.wrapping_mul(7919) % slots) * chunk;
            let end = (start + chunk).min(blob.data.len()) - 1;
            let r = c
                .send(
                    Method::GET,
                    &format!("/v2/{repo}/blobs/{}", blob.digest),
                    &[("range", format!("bytes={start}-{end}"))],
                    Bytes::new(),
                    false,
                )
                .await?
                .expect(206, "range GET")?;
            if r.body_len != (end - start + 1) as u64 {
                return Err("range GET returned the wrong length".into());
            }
            Ok(r.body_len)
        }
        Prepared::ManifestPut {
            repo,
            config,
            layer,
        } => {
            let body = manifest(config, &[layer], &i.to_string());
            put_manifest(c, repo, &format!("t{i}"), body).await
        }
        Prepared::ManifestRead { repo, head, len } => {
            let method = if *head { Method::HEAD } else { Method::GET };
            let r = c
                .send(
                    method,
                    &format!("/v2/{repo}/manifests/latest"),
                    &[("accept", OCI_MANIFEST.into())],
                    Bytes::new(),
                    false,
                )
                .await?
                .expect(200, "manifest read")?;
            if r.header("docker-content-digest").is_none() {
                return Err("no Docker-Content-Digest on manifest".into());
            }
            if !*head && r.body_len != *len {
                return Err("manifest GET returned the wrong length".into());
            }
            Ok(if *head { 0 } else { r.body_len })
        }
        Prepared::Farm(f) => farm_op(f, c, client, i).await,
        Prepared::Seeded(layout, op) => layout.run(*op, c, i).await,
        Prepared::OpenSessions { repo } => {
            c.send(
                Method::POST,
                &format!("/v2/{repo}/blobs/uploads/"),
                &[],
                Bytes::new(),
                false,
            )
            .await?
            .expect(202, "start upload")?;
            Ok(0)
        }
        Prepared::Static { size, .. } => {
            let r = c
                .send(Method::GET, "/static", &[], Bytes::new(), false)
                .await?
                .expect(200, "loopback GET")?;
            if r.body_len != *size {
                return Err("loopback GET returned the wrong length".into());
            }
            Ok(r.body_len)
        }
    }
}

/// One build: push an image made of the shared base layers plus a few
/// unique ones the way docker/buildkit do (HEAD first, mount across
/// repositories, upload only what is missing), then pull it back.
async fn farm_op(f: &Farm, c: &mut Conn, client: usize, i: usize) -> Result<u64, Error> {
    let repo = format!("{}/w{client}", f.base_repo.trim_end_matches("/base"));
    let own = &f.unique[i * (f.per_image + 1)..(i + 1) * (f.per_image + 1)];
    let (config, uniques) = (&own[0], &own[1..]);
    let layers: Vec<&Blob> = f.base.iter().chain(uniques.iter()).collect();
    let mut moved = 0u64;
    for b in layers.iter().copied().chain(std::iter::once(config)) {
        let r = c
            .send(
                Method::HEAD,
                &format!("/v2/{repo}/blobs/{}", b.digest),
                &[],
                Bytes::new(),
                false,
            )
            .await?;
        if r.status.as_u16() == 200 {
            continue;
        }
        let r = c
            .send(
                Method::POST,
                &format!(
                    "/v2/{repo}/blobs/uploads/?mount={}&from={}",
                    b.digest, f.base_repo
                ),
                &[],
                Bytes::new(),
                false,
            )
            .await?;
        match r.status.as_u16() {
            201 => continue,
            202 => {
                let loc = location(&r)?;
                c.send(
                    Method::PUT,
                    &with_digest(&loc, &b.digest),
                    &[("content-type", "application/octet-stream".into())],
                    b.data.clone(),
                    false,
                )
                .await?
                .expect(201, "farm upload")?;
                moved += b.data.len() as u64;
            }
            s => return Err(format!("mount answered {s}").into()),
        }
    }
    let tag = format!("b{i}");
    moved += put_manifest(c, &repo, &tag, manifest(config, &layers, &tag)).await?;
    let r = c
        .send(
            Method::GET,
            &format!("/v2/{repo}/manifests/{tag}"),
            &[("accept", OCI_MANIFEST.into())],
            Bytes::new(),
            true,
        )
        .await?
        .expect(200, "farm manifest GET")?;
    let body = r.body.clone().unwrap_or_default();
    if payload::sha256(&body) != r.header("docker-content-digest").unwrap_or("") {
        return Err("pulled manifest does not match its digest".into());
    }
    for b in layers {
        moved += get_blob(c, &repo, b).await?;
    }
    Ok(moved)
}
