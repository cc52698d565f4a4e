//! Precomputed payloads: generated and hashed before the clock starts, so
//! the generator spends its CPU on the protocol, not on making data.

use bytes::Bytes;
use sha2::{Digest as _, Sha256};

#[derive(Clone)]
pub struct Blob {
    pub data: Bytes,
    pub digest: String,
}

/// Deterministic pseudo-random bytes (xorshift64), unique per seed.
pub fn blob(len: usize, seed: u64) -> Blob {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut v = Vec::with_capacity(len + 8);
    while v.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(len);
    let digest = format!("sha256:{}", hex::encode(Sha256::digest(&v)));
    Blob {
        data: Bytes::from(v),
        digest,
    }
}

/// `n` distinct blobs, generated on all cores.
pub fn blobs(n: usize, len: usize, seed: u64) -> Vec<Blob> {
    let threads = std::thread::available_parallelism().map_or(2, |p| p.get());
    let per = n.div_ceil(threads.max(1));
    let mut handles = Vec::new();
    for t in 0..threads {
        let range = (t * per)..((t + 1) * per).min(n);
        handles.push(std::thread::spawn(move || {
            range
                .map(|i| blob(len, seed.wrapping_add(i as u64 * 7919)))
                .collect::<Vec<_>>()
        }));
    }
    handles
        .into_iter()
        .flat_map(|h| h.join().unwrap_or_default())
        .collect()
}

pub fn sha256(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}
