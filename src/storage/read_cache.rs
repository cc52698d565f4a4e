//! A node's copy of blobs it read from the object store, in the data folder
//! (`<root>/cache/`), so pulls of the same base layers, which a build farm
//! makes all day, are served from local disk without a copy instead of
//! crossing the network to S3 again.
//!
//! A blob's bytes never change under its digest, so a copy needs no
//! invalidation: it is right for as long as the index says the blob exists,
//! and every read asks the index (PostgreSQL) first. A copy is made while
//! a whole-blob GET streams the object to its client, hashed on the way and
//! kept only when its digest matches, and dropped as soon as it would slow
//! that client (its writer falls behind) or the disk is short of space.
//! Least recently used copies go when the cache is over its size.
//!
//! Owns: `<root>/cache/`, its index in memory, and the threads writing
//! copies. Must not: decide who may read a blob (the caller checked the
//! link), serve a copy it has not verified, or make a read wait for a copy.

use crate::content::BlobBytes;
use crate::metrics::ReadCacheMetrics;
use crate::oci::{Algorithm, Digest};
use crate::space::DiskSpace;
use bytes::Bytes;
use dashmap::DashMap;
use sha2::{Digest as _, Sha256};
use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Bytes a copy may fall behind its response before it is given up: the
/// response never waits for its copy.
const FILL_LAG: u64 = 16 << 20;

/// Frames queued for a copy (the byte bound above is the one that bites).
const FILL_QUEUE: usize = 4096;

/// Copies written at once: each holds a blocking thread and up to
/// `FILL_LAG` of memory.
const MAX_FILLS: usize = 4;

/// A copy whose response stops sending for this long is given up.
const FILL_IDLE: Duration = Duration::from_secs(60);

/// No single blob may take more than this share of the cache (1/n), so
/// one huge layer does not flush everything else.
const MAX_SHARE: u64 = 8;

pub struct ReadCache {
    dir: PathBuf,
    max_bytes: u64,
    entries: DashMap<String, Entry>,
    filling: DashMap<String, ()>,
    fills: AtomicUsize,
    total: AtomicU64,
    /// A logical clock for recency: each hit takes the next tick.
    clock: AtomicU64,
    space: Arc<DiskSpace>,
    evicting: Mutex<()>,
    metrics: ReadCacheMetrics,
}

struct Entry {
    size: u64,
    used: AtomicU64,
}

impl ReadCache {
    /// Opens (or creates) `<root>/cache`, indexing the copies a previous
    /// run left (each was verified before it was renamed into place) and
    /// removing unfinished ones. Blocking.
    pub fn open(
        root: &Path,
        max_bytes: u64,
        space: Arc<DiskSpace>,
        metrics: ReadCacheMetrics,
    ) -> io::Result<ReadCache> {
        let dir = root.join("cache");
        fs::create_dir_all(&dir)?;
        let cache = ReadCache {
            dir,
            max_bytes,
            entries: DashMap::new(),
            filling: DashMap::new(),
            fills: AtomicUsize::new(0),
            total: AtomicU64::new(0),
            clock: AtomicU64::new(1),
            space,
            evicting: Mutex::new(()),
            metrics,
        };
        for entry in fs::read_dir(&cache.dir)? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let meta = entry.metadata()?;
            if !meta.is_file() {
                continue;
            }
            if Digest::parse(&name.replacen('-', ":", 1)).is_err() {
                let _ = fs::remove_file(entry.path());
                continue;
            }
            cache.total.fetch_add(meta.len(), Ordering::Relaxed);
            cache.entries.insert(
                name,
                Entry {
                    size: meta.len(),
                    used: AtomicU64::new(0),
                },
            );
        }
        cache.evict();
        cache.metrics.bytes.set(cache.held() as i64);
        Ok(cache)
    }

    fn name(digest: &Digest) -> String {
        format!("{}-{}", digest.algorithm().as_str(), digest.hex())
    }

    /// Bytes held now.
    pub fn held(&self) -> u64 {
        self.total.load(Ordering::Relaxed)
    }

    /// The verified copy of `digest`, `size` bytes long, mapped; `None`
    /// when there is none. Blocking.
    pub fn read(&self, digest: &Digest, size: u64) -> Option<Bytes> {
        let found = self.lookup(digest, size);
        let result = if found.is_some() { "hit" } else { "miss" };
        self.metrics.reads.with_label_values(&[result]).inc();
        found
    }

    /// Like `read`, counting only a hit: a caller that asks elsewhere
    /// after a miss (`read` there) counts the miss once.
    pub fn read_if_held(&self, digest: &Digest, size: u64) -> Option<Bytes> {
        let found = self.lookup(digest, size);
        if found.is_some() {
            self.metrics.reads.with_label_values(&["hit"]).inc();
        }
        found
    }

    fn lookup(&self, digest: &Digest, size: u64) -> Option<Bytes> {
        let name = Self::name(digest);
        {
            let e = self.entries.get(&name)?;
            if e.size != size {
                drop(e);
                self.forget(&name);
                return None;
            }
            e.used.store(
                self.clock.fetch_add(1, Ordering::Relaxed),
                Ordering::Relaxed,
            );
        }
        match BlobBytes::open(&self.dir.join(&name)) {
            Ok(Some(b)) if b.len() == size => Some(b.bytes),
            // Removed or changed behind our back: fetch it again.
            _ => {
                self.forget(&name);
                None
            }
        }
    }

    fn forget(&self, name: &str) {
        if let Some((_, e)) = self.entries.remove(name) {
            self.total.fetch_sub(e.size, Ordering::Relaxed);
            self.metrics.bytes.set(self.held() as i64);
            let _ = fs::remove_file(self.dir.join(name));
        }
    }

    /// Starts a copy of `digest` (`size` bytes) to be fed the bytes of a
    /// response as it sends them, unless there is one, one is being made,
    /// the blob is too big for the cache, or the disk is short of space.
    pub fn begin_fill(self: &Arc<Self>, digest: &Digest, size: u64) -> Option<CacheFill> {
        if size == 0 || size > self.max_bytes / MAX_SHARE || digest.algorithm() != Algorithm::Sha256
        {
            return None;
        }
        let name = Self::name(digest);
        if self.entries.contains_key(&name) || self.space.is_full() {
            return None;
        }
        if self.fills.fetch_add(1, Ordering::AcqRel) >= MAX_FILLS {
            self.fills.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        if self.filling.insert(name.clone(), ()).is_some() {
            self.fills.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        let (tx, rx) = sync_channel(FILL_QUEUE);
        let queued = Arc::new(AtomicU64::new(0));
        let (cache, want, lag) = (self.clone(), digest.hex().to_owned(), queued.clone());
        // Ends when the response ends or is dropped (its sender goes), or
        // after FILL_IDLE without a frame: nothing else owns it.
        tokio::task::spawn_blocking(move || {
            if let Err(e) = cache.write_copy(&name, &want, size, rx, &lag) {
                if !cache.space.note(&e) {
                    tracing::debug!(error = %e, blob = %name, "read cache copy dropped");
                }
            }
            cache.filling.remove(&name);
            cache.fills.fetch_sub(1, Ordering::AcqRel);
        });
        Some(CacheFill { tx, queued })
    }

    fn write_copy(
        &self,
        name: &str,
        want: &str,
        size: u64,
        rx: Receiver<Fill>,
        queued: &AtomicU64,
    ) -> io::Result<()> {
        let part = self
            .dir
            .join(format!("{name}.{}.part", uuid::Uuid::new_v4().simple()));
        let r = (|| {
            let mut file = File::create(&part)?;
            let mut hasher = Sha256::new();
            let mut written = 0u64;
            loop {
                match rx.recv_timeout(FILL_IDLE) {
                    Ok(Fill::Data(b)) => {
                        hasher.update(&b);
                        file.write_all(&b)?;
                        written += b.len() as u64;
                        queued.fetch_sub(b.len() as u64, Ordering::AcqRel);
                    }
                    Ok(Fill::End) => break,
                    Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => {
                        return Ok(CopyEnd::Dropped)
                    }
                }
            }
            if written != size || hex::encode(hasher.finalize()) != want {
                tracing::warn!(blob = %name, written, size, "object store sent bytes that do not match their digest; not cached");
                return Ok(CopyEnd::Mismatch);
            }
            // A copy that survives a power cut must be whole: it is
            // trusted without rehashing at the next start.
            file.sync_all()?;
            fs::rename(&part, self.dir.join(name))?;
            Ok(CopyEnd::Kept)
        })();
        let result = match &r {
            Ok(CopyEnd::Kept) => "kept",
            Ok(CopyEnd::Mismatch) => "mismatch",
            _ => "dropped",
        };
        self.metrics.copies.with_label_values(&[result]).inc();
        match r {
            Ok(CopyEnd::Kept) => {
                let used = self.clock.fetch_add(1, Ordering::Relaxed);
                let entry = Entry {
                    size,
                    used: AtomicU64::new(used),
                };
                if let Some(old) = self.entries.insert(name.to_owned(), entry) {
                    self.total.fetch_sub(old.size, Ordering::Relaxed);
                }
                self.total.fetch_add(size, Ordering::Relaxed);
                self.metrics.bytes.set(self.held() as i64);
                self.evict();
                Ok(())
            }
            Ok(_) => {
                let _ = fs::remove_file(&part);
                Ok(())
            }
            Err(e) => {
                let _ = fs::remove_file(&part);
                Err(e)
            }
        }
    }

    /// Keeps a verified small blob (a manifest) read whole. Blocking.
    pub fn keep(&self, digest: &Digest, bytes: &[u8]) {
        let size = bytes.len() as u64;
        if size == 0
            || size > self.max_bytes / MAX_SHARE
            || digest.algorithm() != Algorithm::Sha256
            || self.space.is_full()
        {
            return;
        }
        if Digest::of(digest.algorithm(), bytes) != *digest {
            return;
        }
        let name = Self::name(digest);
        if self.entries.contains_key(&name) || self.filling.insert(name.clone(), ()).is_some() {
            return;
        }
        let (tx, rx) = sync_channel(2);
        let _ = tx.send(Fill::Data(Bytes::copy_from_slice(bytes)));
        let _ = tx.send(Fill::End);
        if let Err(e) = self.write_copy(&name, digest.hex(), size, rx, &AtomicU64::new(size)) {
            self.space.note(&e);
        }
        self.filling.remove(&name);
    }

    /// Removes least recently used copies until the cache is under 90% of
    /// its size (hysteresis, so one new copy does not evict every time).
    /// A copy being served stays readable: its mapping outlives the unlink.
    fn evict(&self) {
        if self.held() <= self.max_bytes {
            return;
        }
        let Ok(_one) = self.evicting.try_lock() else {
            return;
        };
        let mut by_age: Vec<(u64, String)> = self
            .entries
            .iter()
            .map(|e| (e.used.load(Ordering::Relaxed), e.key().clone()))
            .collect();
        by_age.sort_unstable();
        let target = self.max_bytes / 10 * 9;
        for (_, name) in by_age {
            if self.held() <= target {
                break;
            }
            self.forget(&name);
        }
    }
}

enum CopyEnd {
    Kept,
    Dropped,
    Mismatch,
}

enum Fill {
    Data(Bytes),
    End,
}

/// The feeding end of one copy in the making. Dropping it without
/// [`CacheFill::finish`] discards the copy.
pub struct CacheFill {
    tx: SyncSender<Fill>,
    /// Bytes offered and not yet written.
    queued: Arc<AtomicU64>,
}

impl CacheFill {
    /// Passes on the next bytes of the response (a refcount, not a copy).
    /// `false`: the copy was given up (its writer fell behind or failed);
    /// drop it.
    pub fn offer(&self, b: &Bytes) -> bool {
        let n = b.len() as u64;
        if self.queued.fetch_add(n, Ordering::AcqRel) + n > FILL_LAG {
            return false;
        }
        match self.tx.try_send(Fill::Data(b.clone())) {
            Ok(()) => true,
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => false,
        }
    }

    /// The response sent every byte: verify and keep the copy.
    pub fn finish(self) {
        let _ = self.tx.try_send(Fill::End);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cache(dir: &Path, max: u64) -> Arc<ReadCache> {
        let space = Arc::new(DiskSpace::unreserved(dir));
        let metrics = ReadCacheMetrics::new().unwrap();
        Arc::new(ReadCache::open(dir, max, space, metrics).unwrap())
    }

    fn fill(c: &Arc<ReadCache>, data: &[u8]) -> Digest {
        let d = Digest::of(Algorithm::Sha256, data);
        let f = c.begin_fill(&d, data.len() as u64).unwrap();
        for part in data.chunks(1000) {
            assert!(f.offer(&Bytes::copy_from_slice(part)));
        }
        f.finish();
        d
    }

    async fn settled(c: &Arc<ReadCache>) {
        for _ in 0..500 {
            if c.fills.load(Ordering::Acquire) == 0 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("fills did not settle");
    }

    #[tokio::test]
    async fn keeps_verified_copies_and_refuses_wrong_bytes() {
        let tmp = tempfile::tempdir().unwrap();
        let c = cache(tmp.path(), 1 << 20);
        let d = fill(&c, &[7u8; 5000]);
        settled(&c).await;
        assert_eq!(c.read(&d, 5000).unwrap(), Bytes::from(vec![7u8; 5000]));

        // Bytes that do not hash to the digest are never kept.
        let other = Digest::of(Algorithm::Sha256, b"something else");
        let f = c.begin_fill(&other, 5000).unwrap();
        assert!(f.offer(&Bytes::from(vec![1u8; 5000])));
        f.finish();
        settled(&c).await;
        assert_eq!(c.read(&other, 5000), None);

        // A response cut short (dropped without finish) keeps nothing.
        let cut = Digest::of(Algorithm::Sha256, &[3u8; 2000]);
        let f = c.begin_fill(&cut, 2000).unwrap();
        assert!(f.offer(&Bytes::from(vec![3u8; 1000])));
        drop(f);
        settled(&c).await;
        assert_eq!(c.read(&cut, 2000), None);
        let leftovers: Vec<_> = fs::read_dir(tmp.path().join("cache"))
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().ends_with(".part"))
            .collect();
        assert!(leftovers.is_empty(), "unfinished copies are removed");

        // A second start finds the verified copy.
        drop(c);
        let c = cache(tmp.path(), 1 << 20);
        assert!(c.read(&d, 5000).is_some());
        // A copy whose size disagrees with the index is dropped.
        assert_eq!(c.read(&d, 4999), None);
        assert_eq!(c.read(&d, 5000), None);
        assert_eq!(c.held(), 0);
    }

    #[test]
    fn keeps_small_blobs_read_whole_when_they_match_their_sha256() {
        let tmp = tempfile::tempdir().unwrap();
        let c = cache(tmp.path(), 1 << 20);
        let body = br#"{"schemaVersion":2}"#;
        let d = Digest::of(Algorithm::Sha256, body);
        c.keep(&d, body);
        assert_eq!(c.read(&d, body.len() as u64).unwrap(), &body[..]);
        // Not its bytes: not kept.
        let other = Digest::of(Algorithm::Sha256, b"other");
        c.keep(&other, body);
        assert_eq!(c.read(&other, body.len() as u64), None);
        // sha512 names are served from the bucket, never kept.
        let d512 = Digest::of(Algorithm::Sha512, body);
        c.keep(&d512, body);
        assert_eq!(c.read(&d512, body.len() as u64), None);
        let mismatches = c.metrics.copies.with_label_values(&["mismatch"]).get();
        assert_eq!(mismatches, 0);
        assert_eq!(c.held(), body.len() as u64);
    }

    #[tokio::test]
    async fn evicts_least_recently_used_over_its_size() {
        let tmp = tempfile::tempdir().unwrap();
        let c = cache(tmp.path(), 80_000);
        let a = fill(&c, &[1u8; 10_000]);
        settled(&c).await;
        let mut rest = Vec::new();
        for i in 2..=8u8 {
            rest.push(fill(&c, &[i; 10_000]));
            settled(&c).await;
            // `a` is read after each fill, so it stays the newest.
            assert!(c.read(&a, 10_000).is_some());
        }
        assert!(c.held() <= 80_000);
        let _ = fill(&c, &[9u8; 10_000]);
        settled(&c).await;
        assert!(c.held() <= 72_000, "evicted down to 90%: {}", c.held());
        assert!(c.read(&a, 10_000).is_some(), "the most used copy stays");
        assert!(c.read(&rest[0], 10_000).is_none(), "the oldest copy went");
        // Too big for the cache's share: not even started.
        let big = Digest::of(Algorithm::Sha256, &[0u8; 20_000]);
        assert!(c.begin_fill(&big, 20_000).is_none());
    }
}
