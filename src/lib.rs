//! Wharf: a container image registry (Docker Registry HTTP API V2 / OCI
//! Distribution Spec v1.1) built around an actor-based upload engine.
//!
//! # Layout
//! Bottom to top (docs/ARCHITECTURE.md draws the layers; imports run down).
//! - [`oci`]: pure protocol grammar (names, digests, references, ranges,
//!   manifests).
//! - [`config`]: the typed configuration, plain data (file, environment,
//!   defaults).
//! - [`calendar`], [`blocking`], [`terminal`], [`limits`], [`space`],
//!   [`tls`]: the clock, the blocking pool, progress on a terminal, client
//!   rate and connection caps, the disk reserve and full mode, certificates.
//! - [`content`]: the data folder's content-addressed blobs; shard actors
//!   place, deduplicate and pin; reads are mmap'd `Bytes`.
//! - [`upload`]: one ractor actor per upload session (sha256 state,
//!   append-only file), recovery after restart; the resumable hash state.
//! - [`auth`]: htpasswd Basic and Docker bearer tokens, per-repository
//!   rules.
//! - [`meta`]: the metadata store: its rules written once (`meta::rules`)
//!   over redb or PostgreSQL, and the group-commit writer.
//! - [`metrics`]: Prometheus metric families.
//! - [`s3`]: object-store mode's bucket client, sessions any node
//!   continues, digest -> object index.
//! - [`pull_log`], [`fsck`], [`retention`], [`notify`]: pull times,
//!   offline checks, retention policies and immutable tags, webhooks.
//! - [`storage`]: the seam over where blob bytes live (data folder or
//!   bucket).
//! - [`gc`], [`proxy`]: online garbage collection; pull-through caches.
//! - [`app`]: the state every handler and background task shares; the
//!   whole-configuration check.
//! - [`ops`]: `/metrics`, `/healthz`, `/readyz` on their own listener.
//! - [`http`]: routing, OCI errors, the request handlers, the web UI.
//! - [`connection`]: one accepted socket (TLS handshake, idle cut).
//! - [`server`]: start-up, the accept loop, background tasks, shutdown.
//! - [`cli`]: the operator's commands other than `serve` (what each
//!   prints, its exit code).
//!
//! The path of a push: `http` streams request-body frames into the session
//! actor; on completion the session verifies and syncs its file, `content`
//! renames it into place (or drops it as a duplicate), `meta` links the
//! blob to the repository, and only then does the client get its 201.

pub mod app;
pub mod auth;
pub mod blocking;
pub mod calendar;
pub mod cli;
pub mod config;
pub mod connection;
pub mod content;
pub mod fsck;
pub mod gc;
pub mod http;
pub mod limits;
pub mod meta;
pub mod metrics;
pub mod notify;
pub mod oci;
pub mod ops;
pub mod proxy;
pub mod pull_log;
pub mod retention;
pub mod s3;
pub mod server;
pub mod space;
pub mod storage;
pub mod terminal;
pub mod tls;
pub mod upload;

pub use config::Config;
pub use server::Server;
