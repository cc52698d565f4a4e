//! One content-store shard: an actor that serialises every commit of the
//! digests routed to it, so a digest is renamed into place at most once.

use super::Commit;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use std::io;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

pub struct Shard;

pub struct ShardArgs {
    pub fsync: bool,
}

pub enum ShardMsg {
    Commit {
        staged: PathBuf,
        target: PathBuf,
        reply: RpcReplyPort<io::Result<Commit>>,
    },
    /// A write of bytes that may already be stored (a manifest): if the
    /// blob exists, refresh its mtime, exactly as a deduplicated commit
    /// does, and answer true. Running on the shard orders it with garbage
    /// collection's deletes of that digest: either the delete came first
    /// and this answers false (the caller writes the bytes anew), or this
    /// came first and the fresh mtime keeps the blob through the grace.
    Touch {
        target: PathBuf,
        reply: RpcReplyPort<io::Result<bool>>,
    },
    /// Garbage collection: unlink the blob if it was last committed before
    /// `cutoff`; answers the bytes freed (`None` when kept).
    DeleteIfOlder {
        target: PathBuf,
        cutoff: SystemTime,
        reply: RpcReplyPort<io::Result<Option<u64>>>,
    },
}

impl Actor for Shard {
    type Msg = ShardMsg;
    type State = ShardArgs;
    type Arguments = ShardArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        args: ShardArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        Ok(args)
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            ShardMsg::Commit {
                staged,
                target,
                reply,
            } => {
                let fsync = state.fsync;
                // The rename and directory sync block; keep them off the
                // async workers. The actor still awaits, so commits of one
                // shard stay serialised.
                let result = tokio::task::spawn_blocking(move || commit(&staged, &target, fsync))
                    .await
                    .unwrap_or_else(|e| Err(io::Error::other(e.to_string())));
                let _ = reply.send(result);
            }
            ShardMsg::Touch { target, reply } => {
                let result = tokio::task::spawn_blocking(move || touch(&target))
                    .await
                    .unwrap_or_else(|e| Err(io::Error::other(e.to_string())));
                let _ = reply.send(result);
            }
            ShardMsg::DeleteIfOlder {
                target,
                cutoff,
                reply,
            } => {
                let result = tokio::task::spawn_blocking(move || delete_if_older(&target, cutoff))
                    .await
                    .unwrap_or_else(|e| Err(io::Error::other(e.to_string())));
                let _ = reply.send(result);
            }
        }
        Ok(())
    }
}

/// Refreshes the mtime of an existing blob; false when there is none.
/// The mtime is the blob's last commit: garbage collection spares a blob
/// committed within its grace period, so a push that found its content
/// already here cannot lose it before its link or manifest row is written.
fn touch(target: &Path) -> io::Result<bool> {
    match std::fs::File::open(target) {
        Ok(f) => f.set_modified(SystemTime::now()).map(|()| true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

fn commit(staged: &Path, target: &Path, fsync: bool) -> io::Result<Commit> {
    if touch(target)? {
        std::fs::remove_file(staged)?;
        return Ok(Commit::Deduplicated);
    }
    let dir = target
        .parent()
        .ok_or_else(|| io::Error::other("blob path has no parent"))?;
    let created_dir = if dir.is_dir() {
        false
    } else {
        std::fs::create_dir_all(dir)?;
        true
    };
    std::fs::rename(staged, target)?;
    if fsync {
        sync_dir(dir)?;
        if created_dir {
            if let Some(up) = dir.parent() {
                sync_dir(up)?;
            }
        }
    }
    Ok(Commit::Stored)
}

fn delete_if_older(target: &Path, cutoff: SystemTime) -> io::Result<Option<u64>> {
    let meta = match std::fs::metadata(target) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    if meta.modified()? >= cutoff {
        return Ok(None);
    }
    std::fs::remove_file(target)?;
    Ok(Some(meta.len()))
}

/// Makes a directory's entries (a rename into it) durable.
pub(crate) fn sync_dir(dir: &Path) -> io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}
