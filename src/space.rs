//! Free space in the data folder: the reserve file and the "disk full" mode.
//!
//! Owns: `<root>/reserve`, a preallocated file that holds back a little of
//! the disk, and the registry-wide "full" flag.
//! Must not: decide what a full disk means to a client (the HTTP layer maps
//! ENOSPC to 507), or delete anything but its own reserve file.
//!
//! The first ENOSPC or EDQUOT anywhere (an upload's append, a staged
//! manifest, a metadata page) switches the registry to full mode: the
//! reserve file is unlinked, which hands its blocks back to the filesystem,
//! and new data (uploads, manifests) is refused up front with 507, so that
//! the freed room is left to what frees space: manifest and blob deletes,
//! garbage collection, and the metadata commits they need. A probe (run
//! every second by the server while full) leaves full mode once the
//! filesystem has room for the reserve plus a margin again and the reserve
//! could be taken back; that also covers space freed outside the registry
//! and quotas that `statvfs` cannot see (the reserve's `fallocate` fails).

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

/// Free space wanted beyond the reserve before full mode ends, so that a
/// registry does not flap in and out of it a few megabytes at a time.
const MIN_MARGIN: u64 = 16 << 20;

/// Neither the reserve nor the margin may take more than this share of the
/// filesystem: the default 64 MiB reserve on a 64 MiB volume would leave no
/// room at all, and the registry would start full and never leave it.
const MAX_SHARE_OF_DISK: u64 = 16;

/// True for the errors a full disk or an exhausted quota gives.
pub fn is_no_space(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENOSPC) | Some(libc::EDQUOT))
}

/// The error writers answer while the registry is in full mode.
pub fn full_error() -> io::Error {
    io::Error::from_raw_os_error(libc::ENOSPC)
}

pub struct DiskSpace {
    root: PathBuf,
    reserve_path: PathBuf,
    reserve_bytes: u64,
    /// Free space wanted beyond the reserve before full mode ends.
    margin_bytes: u64,
    full: AtomicBool,
    /// Serialises taking and releasing the reserve file (both are file
    /// operations; no async code holds it).
    reserve_lock: Mutex<()>,
}

impl std::fmt::Debug for DiskSpace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DiskSpace")
            .field("reserve_bytes", &self.reserve_bytes)
            .field("full", &self.is_full())
            .finish()
    }
}

impl DiskSpace {
    /// Takes the reserve in `root` (a no-op when it is already there); a disk
    /// too full for it starts the registry in full mode. On a small
    /// filesystem the reserve and the margin shrink to a sixteenth of it.
    pub fn open(root: &Path, reserve_bytes: u64) -> DiskSpace {
        let cap = total_bytes(root).map_or(u64::MAX, |t| t / MAX_SHARE_OF_DISK);
        let configured = reserve_bytes;
        let (reserve_bytes, margin_bytes) = sized_for_disk(configured, cap);
        if reserve_bytes < configured {
            tracing::info!(
                configured,
                reserve_bytes,
                "disk reserve shrunk to a sixteenth of the filesystem"
            );
        }
        let space = DiskSpace {
            root: root.to_path_buf(),
            reserve_path: root.join("reserve"),
            reserve_bytes,
            margin_bytes,
            full: AtomicBool::new(false),
            reserve_lock: Mutex::new(()),
        };
        if let Err(e) = space.take_reserve() {
            tracing::warn!(error = %e, bytes = reserve_bytes, "cannot take the disk reserve; starting in full mode");
            space.full.store(true, Ordering::Release);
        }
        space
    }

    /// A stand-in that never reserves anything (offline tools, tests of
    /// other parts).
    pub fn unreserved(root: &Path) -> DiskSpace {
        DiskSpace {
            root: root.to_path_buf(),
            reserve_path: root.join("reserve"),
            reserve_bytes: 0,
            margin_bytes: MIN_MARGIN,
            full: AtomicBool::new(false),
            reserve_lock: Mutex::new(()),
        }
    }

    pub fn is_full(&self) -> bool {
        self.full.load(Ordering::Acquire)
    }

    /// `Err(ENOSPC)` while in full mode: new data must not eat the room the
    /// reserve gave back.
    pub fn check_writable(&self) -> io::Result<()> {
        if self.is_full() {
            Err(full_error())
        } else {
            Ok(())
        }
    }

    /// Looks at an I/O error; a full disk switches to full mode and gives
    /// the reserve back. Returns true when the error was a full disk and
    /// the reserve was released just now, so a caller that needs a few
    /// blocks (a metadata commit) may retry once.
    pub fn note(&self, e: &io::Error) -> bool {
        is_no_space(e) && self.enter_full()
    }

    /// Enters full mode and releases the reserve (unlinking a file: call
    /// from the blocking pool); true when the reserve was there.
    pub fn enter_full(&self) -> bool {
        if !self.full.swap(true, Ordering::AcqRel) {
            tracing::error!("data folder is full: refusing new uploads and manifests until space is freed (deletes and garbage collection still work)");
        }
        self.release()
    }

    /// Unlinks the reserve file; true when it was there.
    fn release(&self) -> bool {
        let _guard = self.reserve_lock.lock().unwrap_or_else(|p| p.into_inner());
        match std::fs::remove_file(&self.reserve_path) {
            Ok(()) => {
                tracing::warn!(
                    bytes = self.reserve_bytes,
                    "disk reserve released for deletes and garbage collection"
                );
                true
            }
            Err(_) => false,
        }
    }

    /// While in full mode: leaves it when the filesystem has room for the
    /// reserve and the margin, and the reserve could be taken back.
    /// Blocking (statvfs, fallocate): call it from the blocking pool.
    /// Returns whether the registry is still full.
    pub fn probe(&self) -> bool {
        if !self.is_full() {
            return false;
        }
        match available_bytes(&self.root) {
            Ok(free) if free >= self.reserve_bytes + self.margin_bytes => {}
            _ => return true,
        }
        match self.take_reserve() {
            Ok(()) => {
                self.full.store(false, Ordering::Release);
                tracing::info!("space is available again: accepting uploads and manifests");
                false
            }
            Err(_) => true,
        }
    }

    /// Creates the reserve file with its blocks allocated (a sparse file
    /// would reserve nothing).
    fn take_reserve(&self) -> io::Result<()> {
        if self.reserve_bytes == 0 {
            return Ok(());
        }
        let _guard = self.reserve_lock.lock().unwrap_or_else(|p| p.into_inner());
        if std::fs::metadata(&self.reserve_path).is_ok_and(|m| m.len() == self.reserve_bytes) {
            return Ok(());
        }
        let result = (|| {
            let mut f = OpenOptions::new()
                .create(true)
                .truncate(true)
                .write(true)
                .open(&self.reserve_path)?;
            allocate(&mut f, self.reserve_bytes)
        })();
        match &result {
            // Said because it is a file of real blocks the operator will
            // find and wonder about.
            Ok(()) => tracing::info!(
                path = %self.reserve_path.display(),
                mib = self.reserve_bytes >> 20,
                "disk reserve taken (given back on a full disk so deletes and GC still work)"
            ),
            Err(_) => {
                let _ = std::fs::remove_file(&self.reserve_path);
            }
        }
        result
    }
}

/// Allocates `len` bytes of real blocks: `fallocate`, or zeros written out
/// where the filesystem has no `fallocate`.
pub fn allocate(f: &mut File, len: u64) -> io::Result<()> {
    // SAFETY: plain syscall on an open descriptor.
    let r = unsafe { libc::fallocate(f.as_raw_fd(), 0, 0, len as libc::off_t) };
    if r == 0 {
        return Ok(());
    }
    let e = io::Error::last_os_error();
    if e.raw_os_error() != Some(libc::EOPNOTSUPP) {
        return Err(e);
    }
    let zeros = vec![0u8; 1 << 20];
    let mut left = len;
    while left > 0 {
        let n = left.min(zeros.len() as u64) as usize;
        f.write_all(&zeros[..n])?;
        left -= n as u64;
    }
    f.sync_data()
}

/// The reserve and the margin for a configured reserve on a filesystem
/// where neither may exceed `cap` bytes.
fn sized_for_disk(configured: u64, cap: u64) -> (u64, u64) {
    let reserve = configured.min(cap);
    (reserve, reserve.max(MIN_MARGIN.min(cap)))
}

/// Bytes an unprivileged writer may still use on the filesystem of `path`.
fn available_bytes(path: &Path) -> io::Result<u64> {
    statvfs(path).map(|st| st.f_bavail * st.f_frsize)
}

/// The size of the filesystem holding `path`.
fn total_bytes(path: &Path) -> io::Result<u64> {
    statvfs(path).map(|st| st.f_blocks * st.f_frsize)
}

fn statvfs(path: &Path) -> io::Result<libc::statvfs> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::other("path contains a NUL byte"))?;
    // SAFETY: statvfs fills the zeroed struct; `c` outlives the call.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(st)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserve_is_taken_released_on_no_space_and_taken_back_by_the_probe() {
        let dir = tempfile::tempdir().unwrap();
        let space = DiskSpace::open(dir.path(), 1 << 20);
        let reserve = dir.path().join("reserve");
        assert_eq!(std::fs::metadata(&reserve).unwrap().len(), 1 << 20);
        assert!(!space.is_full());
        assert!(space.check_writable().is_ok());

        // Other errors change nothing.
        assert!(!space.note(&io::Error::from_raw_os_error(libc::EIO)));
        assert!(!space.is_full());

        assert!(space.note(&io::Error::from_raw_os_error(libc::ENOSPC)));
        assert!(space.is_full());
        assert!(!reserve.exists());
        assert!(is_no_space(&space.check_writable().unwrap_err()));
        // A second error finds nothing more to release.
        assert!(!space.note(&io::Error::from_raw_os_error(libc::EDQUOT)));

        // The test folder has room: the probe takes the reserve back.
        assert!(!space.probe());
        assert!(!space.is_full());
        assert_eq!(std::fs::metadata(&reserve).unwrap().len(), 1 << 20);
    }

    #[test]
    fn a_small_disk_gets_a_small_reserve_and_margin() {
        const MIB: u64 = 1 << 20;
        // 64 MiB volume, default 64 MiB reserve: a sixteenth each.
        assert_eq!(sized_for_disk(64 * MIB, 4 * MIB), (4 * MIB, 4 * MIB));
        // A big disk keeps what was configured, and the 16 MiB floor.
        assert_eq!(sized_for_disk(64 * MIB, 1 << 40), (64 * MIB, 64 * MIB));
        assert_eq!(sized_for_disk(4 * MIB, 1 << 40), (4 * MIB, 16 * MIB));
        assert_eq!(sized_for_disk(0, 1 << 40), (0, 16 * MIB));
    }

    #[test]
    fn no_reserve_still_tracks_full_mode() {
        let dir = tempfile::tempdir().unwrap();
        let space = DiskSpace::open(dir.path(), 0);
        assert!(!dir.path().join("reserve").exists());
        assert!(!space.note(&full_error()));
        assert!(space.is_full());
        assert!(!space.probe());
    }
}
