//! Wharf: a container image registry (Docker Registry HTTP API V2 / OCI
//! Distribution Spec v1.1) built around an actor-based upload engine.
//!
//! # Layout
//! - [`config`]: the one typed configuration (defaults, TOML file, flags).
//! - [`server`]: start-up, the accept loop, graceful shutdown.
//! - [`http`]: routing, OCI errors, and the request handlers.
//! - [`oci`]: pure protocol grammar (names, digests, references, ranges).
//! - [`upload`]: one ractor actor per upload session, owning its sha256
//!   state and append-only file; the uuid -> session table; idle purge;
//!   recovery after restart.
//! - [`store`]: content-addressed blobs; a pool of shard actors routed by
//!   digest commits and deduplicates; reads are mmap'd `Bytes`.
//! - [`meta`]: the transactional metadata store (redb) with a group-commit
//!   writer.
//! - [`space`]: the disk reserve and the full-disk mode (507 for new data,
//!   deletes and garbage collection still served).
//! - [`auth`]: htpasswd Basic and Docker bearer tokens, per-repository rules.
//! - [`limits`]: per-client request rate and connection caps.
//! - [`tls`]: rustls certificates, reloaded on SIGHUP or file change.
//! - [`metrics`] and [`ops`]: Prometheus metrics, `/healthz`, `/readyz` on
//!   their own listener.
//!
//! The path of a push: `http` streams request-body frames into the session
//! actor; on completion the session verifies and syncs its file, `store`
//! renames it into place (or drops it as a duplicate), `meta` links the blob
//! to the repository, and only then does the client get its 201.

pub mod app;
pub mod auth;
pub mod blocking;
pub mod calendar;
pub mod config;
pub mod connection;
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
pub mod store;
pub mod terminal;
pub mod tls;
pub mod upload;

pub use config::Config;
pub use server::Server;
