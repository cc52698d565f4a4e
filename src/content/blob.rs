//! The read side: a committed blob as `Bytes` without a userspace copy.
//! Blobs are immutable and removed only by unlink, so a mapping stays valid
//! for as long as a response holds it.

use super::StoreError;
use bytes::Bytes;
use std::fs::File;
use std::io::{self, Read};
use std::path::Path;

/// Below this size a plain read is cheaper than mmap + munmap.
const MMAP_THRESHOLD: u64 = 64 * 1024;

/// The whole content of a blob. Slicing it (for ranges and response frames)
/// shares the mapping.
pub struct BlobBytes {
    pub bytes: Bytes,
}

impl BlobBytes {
    pub fn open(path: &Path) -> Result<Option<Self>, StoreError> {
        let file = match File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let len = file.metadata()?.len();
        let bytes = if len == 0 {
            Bytes::new()
        } else if len <= MMAP_THRESHOLD {
            let mut buf = Vec::with_capacity(len as usize);
            (&file).take(len).read_to_end(&mut buf)?;
            Bytes::from(buf)
        } else {
            // SAFETY: blob files are never written after the rename that
            // made them visible; they are only unlinked, which keeps the
            // mapped pages alive until the mapping is dropped.
            let map = unsafe { memmap2::MmapOptions::new().map(&file)? };
            // Reads are mostly sequential and whole: ask for read-ahead so
            // the page faults in hyper's write path rarely wait on the disk.
            let _ = map.advise(memmap2::Advice::Sequential);
            let _ = map.advise(memmap2::Advice::WillNeed);
            Bytes::from_owner(map)
        };
        Ok(Some(BlobBytes { bytes }))
    }

    pub fn len(&self) -> u64 {
        self.bytes.len() as u64
    }

    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }
}
