//! The file under the redb database, as a redb `StorageBackend` that knows
//! about a full disk.
//!
//! redb treats any failed write as fatal for its `Database` ("Previous I/O
//! error occurred, close and re-open"), so a metadata commit must not meet
//! ENOSPC if it can be helped. Two things see to that: growth of the file
//! allocates real blocks up front (`fallocate`), so the writes of a commit
//! land in space that is already the file's; and when growing or writing
//! does hit a full disk, the registry's reserve is given back (which also
//! switches it to full mode) and the operation is tried once more.

use crate::space::{self, DiskSpace};
use redb::backends::FileBackend;
use redb::StorageBackend;
use std::fs::File;
use std::io;
use std::os::unix::io::AsRawFd;
use std::sync::Arc;

#[derive(Debug)]
pub(super) struct SpaceAwareFile {
    inner: FileBackend,
    /// A second descriptor of the same open file, for `fallocate`
    /// (`FileBackend` keeps its own private).
    file: File,
    space: Arc<DiskSpace>,
}

impl SpaceAwareFile {
    pub(super) fn new(file: File, space: Arc<DiskSpace>) -> Result<Self, redb::DatabaseError> {
        let dup = file.try_clone()?;
        Ok(SpaceAwareFile {
            inner: FileBackend::new(file)?,
            file: dup,
            space,
        })
    }

    /// Runs `op`; on a full disk releases the reserve and, if that freed
    /// anything, runs it once more.
    fn retry_on_full<T>(&self, op: impl Fn() -> io::Result<T>) -> io::Result<T> {
        match op() {
            Err(e) if self.space.note(&e) => op(),
            r => r,
        }
    }
}

impl StorageBackend for SpaceAwareFile {
    fn len(&self) -> Result<u64, io::Error> {
        self.inner.len()
    }

    fn read(&self, offset: u64, len: usize) -> Result<Vec<u8>, io::Error> {
        self.inner.read(offset, len)
    }

    fn set_len(&self, len: u64) -> Result<(), io::Error> {
        let old = self.inner.len()?;
        if len <= old {
            return self.inner.set_len(len);
        }
        let grown = self.retry_on_full(|| {
            // SAFETY: plain syscall on a descriptor this struct owns.
            let r = unsafe {
                libc::fallocate(
                    self.file.as_raw_fd(),
                    0,
                    old as libc::off_t,
                    (len - old) as libc::off_t,
                )
            };
            if r == 0 {
                return Ok(());
            }
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EOPNOTSUPP) {
                // No preallocation here: a sparse extension it is.
                return self.inner.set_len(len);
            }
            Err(e)
        });
        if grown.is_err() {
            // fallocate may have extended the file partly.
            let _ = self.inner.set_len(old);
        }
        grown
    }

    fn sync_data(&self, eventual: bool) -> Result<(), io::Error> {
        let r = self.inner.sync_data(eventual);
        if let Err(e) = &r {
            // Delayed allocation can report a full disk only here; too late
            // to retry, but full mode must still start.
            if space::is_no_space(e) {
                self.space.note(e);
            }
        }
        r
    }

    fn write(&self, offset: u64, data: &[u8]) -> Result<(), io::Error> {
        self.retry_on_full(|| self.inner.write(offset, data))
    }
}
