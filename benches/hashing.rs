//! SHA-256 throughput of sha2 and ring at the update sizes a session sees
//! (hyper frames of ~16 KiB, batches of 256 KiB, big PATCH slices of 4 MiB).
//!
//! Winner kept in the code: sha2. On this machine (AMD EPYC with SHA-NI) both
//! use the SHA extensions and run within a few percent of each other; sha2
//! also hashes sha512 for us and its state is `Clone`, which the session
//! needs to finish a digest while keeping the running state.
//!
//! `midstate` is the resumable hasher the object-store upload path keeps in
//! the database between PATCHes (sha2's block function, own padding): it
//! must stay at sha2's speed.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

fn hashing(c: &mut Criterion) {
    let data = vec![0xa5u8; 4 << 20];
    let mut g = c.benchmark_group("sha256");
    for size in [16 << 10, 256 << 10, 4 << 20] {
        g.throughput(Throughput::Bytes((4 << 20) as u64));
        g.bench_with_input(BenchmarkId::new("sha2", size), &size, |b, &size| {
            use sha2::Digest;
            b.iter(|| {
                let mut h = sha2::Sha256::new();
                for chunk in data.chunks(size) {
                    h.update(chunk);
                }
                h.finalize()
            })
        });
        g.bench_with_input(BenchmarkId::new("midstate", size), &size, |b, &size| {
            b.iter(|| {
                let mut h = wharf::upload::midstate::Sha256Midstate::new();
                for chunk in data.chunks(size) {
                    h.update(chunk);
                }
                h.finalize()
            })
        });
        g.bench_with_input(BenchmarkId::new("ring", size), &size, |b, &size| {
            b.iter(|| {
                let mut h = ring::digest::Context::new(&ring::digest::SHA256);
                for chunk in data.chunks(size) {
                    h.update(chunk);
                }
                h.finish()
            })
        });
    }
    g.finish();
}

criterion_group!(benches, hashing);
criterion_main!(benches);
