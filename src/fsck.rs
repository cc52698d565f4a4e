//! `wharf fsck`: a check of a data folder.
//!
//! Owns: verifying every blob against its digest, every metadata reference
//! against the blobs and rows it names, and finding leftovers; with
//! `repair`, removing what is safe to remove. Beside a running server
//! (which holds the metadata database exclusively) it checks blob
//! contents only, read-only.
//! Must not: write anything while a server runs, or delete a blob that is
//! only suspect: corrupt blobs are moved to `<root>/quarantine/`.

use crate::meta::{MetaBackend, MetaError, MetaRead, MetaWrite, RedbBackend};
use crate::oci::{Algorithm, Digest, DigestHasher, RepoName};
use crate::terminal::WorkProgress;
use std::collections::HashSet;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum FsckError {
    #[error("cannot open the metadata database (is a server running on this folder?): {0}")]
    Meta(#[from] MetaError),
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error(
        "a running server holds this data folder: --repair needs it stopped \
         (without --repair, fsck checks blob contents read-only beside it)"
    )]
    RepairWhileLive,
    #[error("--repair works on a data folder only (the bucket's check is read-only)")]
    RepairNeedsFolder,
    /// The object store or its index could not be checked.
    #[error("{0}")]
    Storage(String),
}

impl From<crate::blocking::TaskFailed> for FsckError {
    fn from(e: crate::blocking::TaskFailed) -> Self {
        FsckError::Storage(e.to_string())
    }
}

fn io_at(path: &Path) -> impl FnOnce(io::Error) -> FsckError + '_ {
    move |source| FsckError::Io {
        path: path.to_owned(),
        source,
    }
}

#[derive(Debug, Default, serde::Serialize)]
pub struct FsckReport {
    pub blobs_checked: usize,
    pub bytes_checked: u64,
    /// False beside a running server: blob contents only (the metadata
    /// database is the server's; staging and sessions are its work).
    pub metadata_checked: bool,
    /// Damage: each makes fsck exit non-zero.
    pub problems: Vec<String>,
    /// Blobs nothing references: garbage collection's business, not damage.
    pub orphans: Vec<String>,
    /// Leftovers of interrupted work (staging files, broken sessions).
    pub leftovers: Vec<PathBuf>,
    pub repaired: Vec<String>,
}

impl FsckReport {
    pub fn is_damaged(&self) -> bool {
        !self.problems.is_empty()
    }
}

fn hash_file(path: &Path, alg: Algorithm) -> io::Result<Digest> {
    let mut f = std::fs::File::open(path)?;
    let mut buf = vec![0u8; 1 << 20];
    let mut hasher = DigestHasher::new(alg);
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hasher.finish())
}

pub fn run(
    root: &Path,
    repair: bool,
    progress: &dyn WorkProgress,
) -> Result<FsckReport, FsckError> {
    let space = std::sync::Arc::new(crate::space::DiskSpace::unreserved(root));
    let meta = match RedbBackend::open(&root.join("meta.redb"), space) {
        Ok(m) => Some(m),
        Err(e) if e.is_held_elsewhere() && repair => return Err(FsckError::RepairWhileLive),
        Err(e) if e.is_held_elsewhere() => None,
        Err(e) => return Err(e.into()),
    };
    let live = meta.is_none();
    let blobs_root = root.join("blobs");
    let mut report = FsckReport {
        metadata_checked: !live,
        ..Default::default()
    };
    let mut present: HashSet<String> = HashSet::new();
    let mut corrupt: HashSet<String> = HashSet::new();
    let mut writes: Vec<MetaWrite> = Vec::new();

    // Blob files: name and place first (and their sizes, for progress),
    // then content.
    let mut found: Vec<(PathBuf, Digest, Algorithm, u64)> = Vec::new();
    for alg in [Algorithm::Sha256, Algorithm::Sha512] {
        let dir = blobs_root.join(alg.as_str());
        let Ok(prefixes) = std::fs::read_dir(&dir) else {
            continue;
        };
        for prefix in prefixes {
            let prefix = prefix.map_err(io_at(&dir))?.path();
            let files = match std::fs::read_dir(&prefix) {
                Ok(f) => f,
                Err(_) => {
                    report
                        .problems
                        .push(format!("stray file {}", prefix.display()));
                    continue;
                }
            };
            for f in files {
                let f = f.map_err(io_at(&prefix))?;
                let path = f.path();
                let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
                let prefix_ok = prefix.file_name().and_then(|p| p.to_str()) == name.get(..2);
                match Digest::parse(&format!("{}:{name}", alg.as_str())) {
                    Ok(d) if prefix_ok => {
                        let size = f.metadata().map(|m| m.len()).unwrap_or(0);
                        found.push((path, d, alg, size));
                    }
                    _ => report
                        .problems
                        .push(format!("stray file {}", path.display())),
                }
            }
        }
    }
    progress.start(found.len() as u64, found.iter().map(|f| f.3).sum());
    for (path, digest, alg, size) in found {
        let actual = match hash_file(&path, alg) {
            Ok(a) => a,
            // Garbage collection on the running server freed it meanwhile.
            Err(e) if live && e.kind() == io::ErrorKind::NotFound => {
                progress.advance(size);
                continue;
            }
            Err(e) => return Err(io_at(&path)(e)),
        };
        progress.advance(size);
        report.blobs_checked += 1;
        report.bytes_checked += size;
        if actual != digest {
            report.problems.push(format!(
                "blob {digest} is corrupt (content hashes to {actual})"
            ));
            corrupt.insert(digest.to_string());
            if repair {
                let q = root.join("quarantine");
                std::fs::create_dir_all(&q).map_err(io_at(&q))?;
                let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
                let dest = q.join(format!("{}-{}", alg.as_str(), name));
                std::fs::rename(&path, &dest).map_err(io_at(&path))?;
                report
                    .repaired
                    .push(format!("moved corrupt {digest} to {}", dest.display()));
            }
            continue;
        }
        present.insert(digest.to_string());
    }
    progress.finish();
    let Some(meta) = meta else {
        return Ok(report);
    };

    // Leftovers of interrupted writes.
    let staging = blobs_root.join("staging");
    if let Ok(entries) = std::fs::read_dir(&staging) {
        for e in entries.flatten() {
            report.leftovers.push(e.path());
        }
    }
    let uploads = root.join("uploads");
    if let Ok(entries) = std::fs::read_dir(&uploads) {
        for e in entries.flatten() {
            let p = e.path();
            let is_session = e
                .file_name()
                .to_str()
                .is_some_and(|n| uuid::Uuid::parse_str(n).is_ok())
                && p.join("info").is_file();
            if !is_session {
                report.leftovers.push(p);
            }
        }
    }

    // Metadata references. A corrupt blob was reported above; what points
    // at it says so, as what points at nothing says "missing".
    let absent = |d: &str| match corrupt.contains(d) {
        true => "corrupt",
        false => "missing",
    };
    let mut referenced: HashSet<String> = HashSet::new();
    for l in meta.all_blob_links()? {
        referenced.insert(l.digest.clone());
        if !present.contains(&l.digest) {
            report.problems.push(format!(
                "repository {} links blob {} which is {}",
                l.repo,
                l.digest,
                absent(&l.digest)
            ));
            if let (Ok(repo), Ok(digest)) = (RepoName::parse(&l.repo), Digest::parse(&l.digest)) {
                writes.push(MetaWrite::UnlinkBlob { repo, digest });
            }
        }
    }
    let manifests = meta.all_manifests()?;
    let rows: HashSet<(String, String)> = manifests
        .iter()
        .map(|(r, d, _)| (r.clone(), d.clone()))
        .collect();
    for (repo, d, rec) in &manifests {
        referenced.insert(d.clone());
        let mut broken = !present.contains(d);
        if broken {
            let why = match corrupt.contains(d) {
                true => "its bytes in the store are corrupt",
                false => "has no bytes in the store",
            };
            report.problems.push(format!("manifest {repo}@{d} {why}"));
        }
        // A pull-through cache fetches what a manifest references when a
        // client asks for it: absent is normal there.
        for b in rec.blobs.iter().filter(|_| !rec.proxied) {
            if !present.contains(b) {
                broken = true;
                report.problems.push(format!(
                    "manifest {repo}@{d} references {} blob {b}",
                    absent(b)
                ));
            }
        }
        for c in rec.children.iter().filter(|_| !rec.proxied) {
            if !rows.contains(&(repo.clone(), c.clone())) {
                broken = true;
                report
                    .problems
                    .push(format!("index {repo}@{d} references missing manifest {c}"));
            }
        }
        if broken {
            if let (Ok(r), Ok(dg)) = (RepoName::parse(repo), Digest::parse(d)) {
                writes.push(MetaWrite::DeleteManifest {
                    repo: r,
                    digest: dg,
                });
            }
        }
    }
    for (repo, tag, d) in meta.all_tags()? {
        if !rows.contains(&(repo.clone(), d.clone())) {
            report
                .problems
                .push(format!("tag {repo}:{tag} points at missing manifest {d}"));
            if let Ok(r) = RepoName::parse(&repo) {
                writes.push(MetaWrite::DeleteTag { repo: r, tag });
            }
        }
    }
    for d in &present {
        if !referenced.contains(d) {
            report.orphans.push(d.clone());
        }
    }

    if repair {
        for p in &report.leftovers {
            let r = if p.is_dir() {
                std::fs::remove_dir_all(p)
            } else {
                std::fs::remove_file(p)
            };
            r.map_err(io_at(p))?;
            report
                .repaired
                .push(format!("removed leftover {}", p.display()));
        }
        if !writes.is_empty() {
            let n = writes.len();
            // Without the configuration's quotas at hand, their usage is
            // forgotten and counted afresh at the next start.
            let recount = vec![crate::meta::MetaWrite::SyncQuotas];
            meta.commit(&[writes, recount], true, &Default::default())?;
            report.repaired.push(format!(
                "removed {n} metadata entries that pointed at missing content"
            ));
        }
    }
    Ok(report)
}
