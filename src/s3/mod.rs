//! Blobs in S3-compatible object storage.
//!
//! Owns: the S3 client (`client`), where its credentials come from
//! (`credentials`), and upload sessions any node continues
//! (`uploads`). Must not: know HTTP routes or hold
//! metadata (PostgreSQL is the index; the bucket is never listed to find
//! repositories or tags).

pub mod client;
pub mod credentials;
pub mod objects;
mod session_writer;
pub mod spill;
mod sql;
pub mod uploads;

pub use client::{ObjectStream, PartBody, S3Client, S3Error, S3Settings};
