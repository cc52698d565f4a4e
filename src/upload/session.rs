//! One upload session as an actor. It owns the running sha256 state and the
//! append-only data file; chunks arrive as messages carrying `Bytes` frames
//! straight from hyper. Every reply, good or bad, goes back on the reply
//! port: a handler that returned `Err` would kill the actor and lose the
//! session.

use super::data_file::{self, BufferPool};
use super::Refusal;
use super::UploadError;
use crate::oci::{Algorithm, Digest};
use crate::space::DiskSpace;
use bytes::Bytes;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use sha2::{Digest as _, Sha256, Sha512};
use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub struct Session;

/// A session's starting state. Its files already exist: the registry
/// creates them (or finds them after a restart) on the blocking pool
/// before spawning the actor, so starting an actor never does I/O and
/// never fails.
pub struct SessionArgs {
    pub dir: PathBuf,
    pub pool: Arc<BufferPool>,
    /// Length of the data file.
    pub len: u64,
    /// A new session hashes from an empty state; a recovered one rehashes
    /// its file on first use.
    pub fresh: bool,
    pub fsync: bool,
    pub space: Arc<DiskSpace>,
}

pub enum SessionMsg {
    Append {
        at: Option<u64>,
        chunks: Vec<Bytes>,
        /// The memory budget the chunks hold; given back once they are
        /// written, whether or not anyone still waits for the reply.
        budget: Option<tokio::sync::OwnedSemaphorePermit>,
        reply: RpcReplyPort<Result<u64, UploadError>>,
    },
    Status {
        reply: RpcReplyPort<u64>,
    },
    Seal {
        digest: Digest,
        reply: RpcReplyPort<Result<Sealed, UploadError>>,
    },
    Unseal {
        reply: RpcReplyPort<()>,
    },
    Discard {
        reply: RpcReplyPort<()>,
    },
}

/// A verified, synced upload ready to be committed.
#[derive(Debug)]
pub struct Sealed {
    pub staged: PathBuf,
    pub size: u64,
}

pub struct SessionState {
    dir: PathBuf,
    len: u64,
    /// Hash of the first `len` bytes. `None` after a restart until the first
    /// message that needs it, which rehashes the file once.
    hasher: Option<Sha256>,
    sealed: bool,
    fsync: bool,
    pool: Arc<BufferPool>,
    space: Arc<DiskSpace>,
}

impl SessionState {
    fn data(&self) -> PathBuf {
        self.dir.join("data")
    }
}

impl Actor for Session {
    type Msg = SessionMsg;
    type State = SessionState;
    type Arguments = SessionArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        args: SessionArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        Ok(SessionState {
            dir: args.dir,
            len: args.len,
            hasher: args.fresh.then(Sha256::new),
            sealed: false,
            fsync: args.fsync,
            pool: args.pool,
            space: args.space,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        session: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            SessionMsg::Append {
                at,
                chunks,
                budget,
                reply,
            } => {
                let r = append(session, at, chunks).await;
                drop(budget);
                let _ = reply.send(r);
            }
            SessionMsg::Status { reply } => {
                let _ = reply.send(session.len);
            }
            SessionMsg::Seal { digest, reply } => {
                let r = seal(session, digest).await;
                let _ = reply.send(r);
            }
            SessionMsg::Unseal { reply } => {
                session.sealed = false;
                let _ = reply.send(());
            }
            SessionMsg::Discard { reply } => {
                let dir = session.dir.clone();
                let _ = tokio::task::spawn_blocking(move || std::fs::remove_dir_all(dir)).await;
                let _ = reply.send(());
                myself.stop(None);
            }
        }
        Ok(())
    }
}

async fn append(
    state: &mut SessionState,
    at: Option<u64>,
    chunks: Vec<Bytes>,
) -> Result<u64, UploadError> {
    if state.sealed {
        return Err(UploadError::Sealed);
    }
    if let Some(at) = at {
        if at != state.len {
            return Err(UploadError::Refused(Refusal::OutOfOrder {
                offset: state.len,
            }));
        }
    }
    if chunks.iter().any(|c| !c.is_empty()) {
        // Full mode: the room left is for deletes and garbage collection.
        state.space.check_writable()?;
    }
    let data = state.data();
    let len = state.len;
    let hasher = state.hasher.take();
    let pool = state.pool.clone();
    let space = state.space.clone();
    // Writing and hashing are CPU and disk work: run them on the blocking
    // pool with the file opened for this batch only, so thousands of idle
    // sessions hold no file descriptors.
    let (hasher, result) = tokio::task::spawn_blocking(move || {
        let mut hasher = match hasher {
            Some(h) => h,
            None => match rehash::<Sha256>(&data, len) {
                Ok(h) => h,
                Err(e) => return (None, Err(e)),
            },
        };
        let r = data_file::append(&data, len, &chunks, &pool);
        if let Err(e) = &r {
            space.note(e);
        }
        if r.is_ok() {
            for c in &chunks {
                hasher.update(c);
            }
        }
        (Some(hasher), r)
    })
    .await
    .unwrap_or_else(|e| (None, Err(io::Error::other(e.to_string()))));
    state.hasher = hasher;
    let written = result?;
    state.len += written;
    Ok(state.len)
}

async fn seal(state: &mut SessionState, digest: Digest) -> Result<Sealed, UploadError> {
    if state.sealed {
        return Err(UploadError::Sealed);
    }
    let data = state.data();
    let len = state.len;
    let hasher = state.hasher.take();
    let fsync = state.fsync;
    let (hasher, result) = tokio::task::spawn_blocking(move || {
        let hasher = match hasher {
            Some(h) => h,
            None => match rehash::<Sha256>(&data, len) {
                Ok(h) => h,
                Err(e) => return (None, Err(UploadError::Io(e))),
            },
        };
        let actual = match digest.algorithm() {
            Algorithm::Sha256 => Digest::sha256_from_bytes(&hasher.clone().finalize()),
            Algorithm::Sha512 => match rehash::<Sha512>(&data, len) {
                Ok(h) => Digest::sha512_from_bytes(&h.finalize()),
                Err(e) => return (Some(hasher), Err(UploadError::Io(e))),
            },
        };
        if actual != digest {
            return (
                Some(hasher),
                Err(UploadError::Refused(Refusal::DigestMismatch {
                    expected: digest,
                    actual,
                })),
            );
        }
        if fsync {
            if let Err(e) = File::open(&data).and_then(|f| f.sync_data()) {
                return (Some(hasher), Err(UploadError::Io(e)));
            }
        }
        (
            Some(hasher),
            Ok(Sealed {
                staged: data,
                size: len,
            }),
        )
    })
    .await
    .unwrap_or_else(|e| (None, Err(UploadError::Io(io::Error::other(e.to_string())))));
    state.hasher = hasher;
    let sealed = result?;
    state.sealed = true;
    Ok(sealed)
}

/// Hashes the first `len` bytes of a file (restart recovery, sha512 checks).
fn rehash<H: sha2::Digest>(path: &Path, len: u64) -> io::Result<H> {
    let mut h = H::new();
    let mut f = File::open(path)?.take(len);
    let mut buf = vec![0u8; 1 << 20];
    let mut seen = 0u64;
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        seen += n as u64;
    }
    if seen != len {
        return Err(io::Error::other("upload data is shorter than recorded"));
    }
    Ok(h)
}
