//! The integration suite, one test binary: every module drives real Wharf
//! servers (in-process on 127.0.0.1:0, or the `wharf` binary) over real
//! sockets, with real clients where a module says so. One binary means one
//! release build and link for the whole suite.
//!
//! `WHARF_SKIP_CLIENTS=1` skips the modules that need the client installs
//! (`../shared/clients/install.sh`); `WHARF_SKIP_ENOSPC=1` the full-disk
//! test, which mounts a tmpfs and so needs root.

mod common;

mod audit;
mod backends;

mod blobs;
mod build_cache;
mod clients;
mod cluster;
mod configuration;
mod conformance;
mod crash;
mod docker_cluster;
mod docker_engine;
mod engine;
mod enospc;
mod fsck;
mod gc;
mod kubernetes;
mod layers;
mod limits;
mod managed_postgres;
mod manifests;
mod metrics;
mod notifications;
mod oci_client;
mod oidc_login;
mod operator_errors;
mod process;
mod proxy;
mod quotas;
mod retention;
mod robots;
mod s3_client;
mod s3_credentials;
mod s3_faults;
mod secure_clients;
mod security;
mod slow_clients;
mod storage;
mod tls;
mod web_ui;
