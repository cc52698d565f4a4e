//! Object-store mode's scratch: the bytes of one request that are not yet
//! in a part, in a file under `<root>/scratch/` instead of memory, so a
//! node's memory for uploads is the budget's whatever the crowd (a part
//! is read back into memory, under the budget, only to be sent).
//!
//! Owns: one anonymous file per request (`O_TMPFILE`: unlinked from the
//! start, so a killed node leaves nothing), its bytes in order, and
//! compacting it as parts are taken from its front.
//! Must not: do file I/O on an async worker (every call runs on the
//! blocking pool), or be read by another node (what outlives a request is
//! saved to PostgreSQL by the session writer).

use bytes::Bytes;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Removes what a killed process may have left (a file created where the
/// filesystem has no `O_TMPFILE`, between its creation and its unlink).
/// Creates nothing: the folder is made when a request first spills.
pub fn prepare(dir: &Path) -> io::Result<()> {
    match std::fs::read_dir(dir) {
        Ok(entries) => {
            for e in entries.flatten() {
                let _ = std::fs::remove_file(e.path());
            }
            Ok(())
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// A file no name points at: gone when closed.
fn anonymous_file(dir: &Path) -> io::Result<File> {
    std::fs::create_dir_all(dir)?;
    let tmpfile = OpenOptions::new()
        .read(true)
        .write(true)
        .mode(0o600)
        .custom_flags(libc::O_TMPFILE)
        .open(dir);
    match tmpfile {
        Ok(f) => Ok(f),
        // No O_TMPFILE here: create, then unlink at once.
        Err(_) => {
            let path = dir.join(uuid::Uuid::new_v4().to_string());
            let f = OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)?;
            std::fs::remove_file(&path)?;
            Ok(f)
        }
    }
}

/// Bytes in order, in a file: pushed at the back, taken from the front.
pub struct Spill {
    dir: PathBuf,
    file: Option<Arc<File>>,
    start: u64,
    end: u64,
}

impl Spill {
    pub fn new(dir: PathBuf) -> Spill {
        Spill {
            dir,
            file: None,
            start: 0,
            end: 0,
        }
    }

    pub fn len(&self) -> u64 {
        self.end - self.start
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    async fn file(&mut self) -> io::Result<Arc<File>> {
        if let Some(f) = &self.file {
            return Ok(f.clone());
        }
        let dir = self.dir.clone();
        let f = Arc::new(crate::blocking::run(move || anonymous_file(&dir)).await?);
        self.file = Some(f.clone());
        Ok(f)
    }

    /// Appends `chunks`.
    pub async fn push(&mut self, chunks: Vec<Bytes>) -> io::Result<()> {
        let n: u64 = chunks.iter().map(|c| c.len() as u64).sum();
        if n == 0 {
            return Ok(());
        }
        let (f, at) = (self.file().await?, self.end);
        crate::blocking::run(move || {
            let mut at = at;
            for c in &chunks {
                f.write_all_at(c, at)?;
                at += c.len() as u64;
            }
            Ok::<_, io::Error>(())
        })
        .await?;
        self.end += n;
        Ok(())
    }

    /// Puts `first` before everything held (a session's stored tail).
    pub async fn prepend(&mut self, first: Vec<Bytes>) -> io::Result<()> {
        let rest = self.take(self.len()).await?;
        self.clear();
        self.push(first).await?;
        self.push(vec![rest]).await
    }

    /// The first `n` bytes (fewer if fewer are held), read into memory:
    /// the caller holds the memory budget for them.
    pub async fn take(&mut self, n: u64) -> io::Result<Bytes> {
        let n = n.min(self.len());
        if n == 0 {
            return Ok(Bytes::new());
        }
        let (f, at) = (self.file().await?, self.start);
        let bytes = crate::blocking::run(move || {
            let mut buf = vec![0u8; n as usize];
            f.read_exact_at(&mut buf, at)?;
            Ok::<_, io::Error>(Bytes::from(buf))
        })
        .await?;
        self.start += n;
        self.compact().await?;
        Ok(bytes)
    }

    /// Keeps the file from growing with every part taken: once the front
    /// taken is larger than what is left (a part taken, a batch's tail
    /// left), what is left moves to a fresh file.
    async fn compact(&mut self) -> io::Result<()> {
        if self.start == self.end {
            self.clear();
            return Ok(());
        }
        if self.start < self.len() {
            return Ok(());
        }
        let (f, start, len) = (self.file().await?, self.start, self.len());
        let dir = self.dir.clone();
        let fresh = crate::blocking::run(move || {
            let mut buf = vec![0u8; len as usize];
            f.read_exact_at(&mut buf, start)?;
            let fresh = anonymous_file(&dir)?;
            fresh.write_all_at(&buf, 0)?;
            Ok::<_, io::Error>(fresh)
        })
        .await?;
        self.file = Some(Arc::new(fresh));
        (self.start, self.end) = (0, len);
        Ok(())
    }

    /// Drops everything held (the file closes, and with it goes).
    pub fn clear(&mut self) {
        self.file = None;
        self.start = 0;
        self.end = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn bytes_come_out_in_order_and_the_file_stays_small() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Spill::new(dir.path().join("scratch"));
        let data: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
        for c in data.chunks(1000) {
            s.push(vec![Bytes::copy_from_slice(c)]).await.unwrap();
        }
        assert_eq!(s.len(), 10_000);
        let first = s.take(6000).await.unwrap();
        assert_eq!(&first[..], &data[..6000]);
        // Compacted: what is left starts the file again.
        assert_eq!((s.start, s.end), (0, 4000));
        s.prepend(vec![Bytes::from_static(b"tail")]).await.unwrap();
        let rest = s.take(u64::MAX).await.unwrap();
        assert_eq!(&rest[..4], b"tail");
        assert_eq!(&rest[4..], &data[6000..]);
        assert!(s.is_empty() && s.file.is_none());
        // Nothing is left with a name in the folder.
        assert_eq!(
            std::fs::read_dir(dir.path().join("scratch"))
                .unwrap()
                .count(),
            0
        );
    }
}
