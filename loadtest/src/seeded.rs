//! A registry seeded through the API to a size (`loadtest/scale.py`): the
//! layout, derived from the manifest's number alone so any later run can
//! name what an earlier one pushed, and the operations over it.
//!
//! Manifest `j` is tagged `t{j}` in repository `{run}/big` when `j` is a
//! multiple of `big_every`, else in `{run}/r{j mod repos}`; it names its
//! own small config and the two layers every repository shares (mounted
//! from `{run}/base`, as CI images share base layers).

use crate::conn::{Conn, Error};
use crate::payload::{self, Blob};
use crate::scenario::{put_manifest, OCI_MANIFEST};
use bytes::Bytes;
use http::Method;

#[derive(Clone)]
pub struct Layout {
    pub run: String,
    pub repos: usize,
    pub big_every: usize,
    /// Manifests seeded (the reads pick among them).
    pub seeded: usize,
    pub layers: [Blob; 2],
}

/// What one operation does.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// Pushes manifest `i` (its config, then the manifest with its tag).
    Seed,
    /// GETs a manifest picked among the seeded ones.
    ManifestGet,
    /// HEADs a config blob picked among the seeded ones.
    BlobHead,
    /// DELETEs, by digest, the `i`-th manifest of the big repository.
    DeleteBig,
    /// DELETEs, by digest, the `i`-th manifest of the small repositories.
    DeleteSmall,
}

impl Layout {
    pub fn new(run: &str, repos: usize, big_every: usize, seeded: usize) -> Layout {
        Layout {
            run: run.to_owned(),
            repos: repos.max(1),
            big_every: big_every.max(2),
            seeded,
            layers: [payload::blob(512, 1), payload::blob(512, 2)],
        }
    }

    pub fn repo(&self, j: usize) -> String {
        match j % self.big_every {
            0 => format!("{}/big", self.run),
            _ => format!("{}/r{}", self.run, j % self.repos),
        }
    }

    fn config(&self, j: usize) -> Blob {
        let data = Bytes::from(format!("{{\"seed\":{j},\"run\":\"{}\"}}", self.run));
        Blob {
            digest: payload::sha256(&data),
            data,
        }
    }

    fn manifest(&self, j: usize) -> Bytes {
        let [a, b] = &self.layers;
        crate::scenario::manifest(&self.config(j), &[a, b], &format!("t{j}"))
    }

    /// Every repository a seed of `n` manifests uses.
    fn all_repos(&self, n: usize) -> Vec<String> {
        let mut v: Vec<String> = (0..self.repos.min(n))
            .map(|r| format!("{}/r{r}", self.run))
            .collect();
        v.push(format!("{}/big", self.run));
        v
    }

    /// Untimed: the shared layers pushed once and mounted into every
    /// repository a seed of `n` manifests uses, over `clients` connections.
    pub async fn prepare_seed(&self, host: &str, n: usize, clients: usize) -> Result<(), Error> {
        let base = format!("{}/base", self.run);
        let mut c = Conn::open(host).await?;
        for l in &self.layers {
            crate::scenario::push(&mut c, &base, l, None).await?;
        }
        let repos = std::sync::Arc::new(self.all_repos(n));
        let next = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for _ in 0..clients.max(1) {
            let (repos, next, host, base) =
                (repos.clone(), next.clone(), host.to_owned(), base.clone());
            let layers: Vec<String> = self.layers.iter().map(|l| l.digest.clone()).collect();
            tasks.push(tokio::spawn(async move {
                let mut c = Conn::open(&host).await?;
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let Some(repo) = repos.get(i) else {
                        return Ok::<(), Error>(());
                    };
                    for d in &layers {
                        c.send(
                            Method::POST,
                            &format!("/v2/{repo}/blobs/uploads/?mount={d}&from={base}"),
                            &[],
                            Bytes::new(),
                            false,
                        )
                        .await?
                        .expect(201, "mount of a shared layer")?;
                    }
                }
            }));
        }
        for t in tasks {
            t.await.map_err(|e| e.to_string())??;
        }
        Ok(())
    }

    /// Manifest number `i` of the operation's sequence, for `op`.
    fn pick(&self, op: Op, i: usize) -> usize {
        let seeded = self.seeded.max(1);
        match op {
            Op::Seed => i,
            // A fixed scatter over the seeded ones (no two runs alike in
            // order, every one reachable).
            Op::ManifestGet | Op::BlobHead => (i.wrapping_mul(2_654_435_761)) % seeded,
            Op::DeleteBig => i * self.big_every,
            Op::DeleteSmall => i * self.big_every + 1,
        }
    }

    pub async fn run(&self, op: Op, c: &mut Conn, i: usize) -> Result<u64, Error> {
        let j = self.pick(op, i);
        let repo = self.repo(j);
        match op {
            Op::Seed => {
                let config = self.config(j);
                c.send(
                    Method::POST,
                    &format!("/v2/{repo}/blobs/uploads/?digest={}", config.digest),
                    &[("content-type", "application/octet-stream".into())],
                    config.data.clone(),
                    false,
                )
                .await?
                .expect(201, "config push")?;
                put_manifest(c, &repo, &format!("t{j}"), self.manifest(j)).await
            }
            Op::ManifestGet => {
                let r = c
                    .send(
                        Method::GET,
                        &format!("/v2/{repo}/manifests/t{j}"),
                        &[("accept", OCI_MANIFEST.into())],
                        Bytes::new(),
                        false,
                    )
                    .await?
                    .expect(200, "seeded manifest GET")?;
                Ok(r.body_len)
            }
            Op::BlobHead => {
                let d = self.config(j).digest;
                c.send(
                    Method::HEAD,
                    &format!("/v2/{repo}/blobs/{d}"),
                    &[],
                    Bytes::new(),
                    false,
                )
                .await?
                .expect(200, "seeded blob HEAD")?;
                Ok(0)
            }
            Op::DeleteBig | Op::DeleteSmall => {
                let d = payload::sha256(&self.manifest(j));
                c.send(
                    Method::DELETE,
                    &format!("/v2/{repo}/manifests/{d}"),
                    &[],
                    Bytes::new(),
                    false,
                )
                .await?
                .expect(202, "seeded manifest DELETE")?;
                Ok(0)
            }
        }
    }
}
