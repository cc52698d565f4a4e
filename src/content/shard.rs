//! One content-store shard: an actor that serialises every commit of the
//! digests routed to it, so a digest is renamed into place at most once,
//! and that keeps garbage collection off blobs whose metadata is still
//! being written (pins).

use super::Placement;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

pub struct Shard;

pub struct ShardArgs {
    pub fsync: bool,
}

pub struct ShardState {
    fsync: bool,
    /// Blobs committed or touched whose [`Pin`] is still held: the
    /// metadata naming them is not written yet.
    pins: HashMap<PathBuf, u32>,
}

pub enum ShardMsg {
    Place {
        staged: PathBuf,
        target: PathBuf,
        reply: RpcReplyPort<io::Result<(Placement, Pin)>>,
    },
    /// A write of bytes that may already be stored (a manifest): if the
    /// blob exists, refresh its mtime and pin it, exactly as a
    /// deduplicated commit does. Running on the shard orders it with
    /// garbage collection's deletes of that digest: either the delete came
    /// first and this answers `None` (the caller writes the bytes anew), or
    /// this came first and the pin keeps the blob.
    Touch {
        target: PathBuf,
        reply: RpcReplyPort<io::Result<Option<Pin>>>,
    },
    /// A [`Pin`] was dropped. The last one refreshes the blob's mtime, so
    /// a collection whose snapshot predates the metadata write cannot take
    /// the blob once the pin is gone.
    Unpin { target: PathBuf },
    /// Garbage collection: unlink the blob if it is not pinned and was
    /// last committed before `cutoff`; answers the bytes freed (`None`
    /// when kept).
    DeleteIfOlder {
        target: PathBuf,
        cutoff: SystemTime,
        reply: RpcReplyPort<io::Result<Option<u64>>>,
    },
}

/// Keeps a blob just committed or found present out of garbage
/// collection's reach until the metadata that names it (a repository link,
/// a manifest row) is written: the holder drops it after that write. Made
/// by the shard inside its answer, so a caller that goes away before
/// reading the answer still releases it.
pub struct Pin {
    shard: ActorRef<ShardMsg>,
    target: PathBuf,
}

impl Drop for Pin {
    fn drop(&mut self) {
        let target = std::mem::take(&mut self.target);
        // A stopped shard has no pins left to release.
        let _ = self.shard.cast(ShardMsg::Unpin { target });
    }
}

impl ShardState {
    fn pin(&mut self, myself: &ActorRef<ShardMsg>, target: &Path) -> Pin {
        *self.pins.entry(target.to_path_buf()).or_insert(0) += 1;
        Pin {
            shard: myself.clone(),
            target: target.to_path_buf(),
        }
    }
}

/// Runs a blocking file operation off the async workers; the actor still
/// awaits it, so the shard's work stays serialised.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> io::Result<T> {
    crate::blocking::run(f).await
}

impl Actor for Shard {
    type Msg = ShardMsg;
    type State = ShardState;
    type Arguments = ShardArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        args: ShardArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        Ok(ShardState {
            fsync: args.fsync,
            pins: HashMap::new(),
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        shard: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            ShardMsg::Place {
                staged,
                target,
                reply,
            } => {
                let (fsync, path) = (shard.fsync, target.clone());
                let result = blocking(move || place(&staged, &path, fsync))
                    .await
                    .map(|c| (c, shard.pin(&myself, &target)));
                let _ = reply.send(result);
            }
            ShardMsg::Touch { target, reply } => {
                let path = target.clone();
                let result = blocking(move || touch(&path))
                    .await
                    .map(|found| found.then(|| shard.pin(&myself, &target)));
                let _ = reply.send(result);
            }
            ShardMsg::Unpin { target } => {
                let Some(n) = shard.pins.get_mut(&target) else {
                    return Ok(());
                };
                *n -= 1;
                if *n == 0 {
                    shard.pins.remove(&target);
                    if let Err(e) = blocking(move || touch(&target)).await {
                        tracing::warn!(error = %e, "cannot refresh a blob's mtime");
                    }
                }
            }
            ShardMsg::DeleteIfOlder {
                target,
                cutoff,
                reply,
            } => {
                let result = if shard.pins.contains_key(&target) {
                    Ok(None)
                } else {
                    blocking(move || delete_if_older(&target, cutoff)).await
                };
                let _ = reply.send(result);
            }
        }
        Ok(())
    }
}

/// Refreshes the mtime of an existing blob; false when there is none.
/// The mtime is the blob's last commit: garbage collection spares a blob
/// committed after it started.
fn touch(target: &Path) -> io::Result<bool> {
    match std::fs::File::open(target) {
        Ok(f) => f.set_modified(SystemTime::now()).map(|()| true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

fn place(staged: &Path, target: &Path, fsync: bool) -> io::Result<Placement> {
    if touch(target)? {
        std::fs::remove_file(staged)?;
        return Ok(Placement::Deduplicated);
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
    Ok(Placement::Stored)
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
