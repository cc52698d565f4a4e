//! The hot paths below HTTP: a session's append (chunks/s and MB/s into a
//! real file, with hashing), a content-store commit (new blob vs. dedup
//! hit), and a 1 MiB range read of a committed 16 MiB blob, served from an
//! mmap'd `Bytes` slice versus `read_at` into a buffer.
//!
//! Reads, measured: in isolation `read_at` into a reused buffer wins a 1 MiB
//! range (55 vs 114 µs here: faulting in the mapping's pages costs more than
//! one copy). End to end it does not: pull-range 1 MiB x 32 clients through
//! wharf-load, back to back on one server build each, gave 2.4-2.5 GB/s at
//! 0.50 ms CPU/MB for mmap and 2.3-2.9 GB/s at 0.44-0.55 ms/MB for pread,
//! within the run-to-run noise. Kept: mmap, because whole-blob pulls then
//! need no copy and no buffer per response (memory is page cache, not
//! clients x buffer size), and one read path serves both.

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::time::{Duration, Instant};
use wharf::content::{BlobBytes, ContentStore};
use wharf::oci::{Algorithm, Digest, RepoName};
use wharf::space::DiskSpace;
use wharf::upload::UploadRegistry;

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn session_append(c: &mut Criterion) {
    let rt = rt();
    let dir = tempfile::tempdir().unwrap();
    let reg = rt
        .block_on(UploadRegistry::start(
            dir.path(),
            false,
            Duration::from_secs(30),
            Arc::new(DiskSpace::unreserved(dir.path())),
        ))
        .unwrap();
    let repo = RepoName::parse("bench/append").unwrap();
    // A batch as the HTTP layer builds it: 1 MiB of 64 KiB frames.
    let frame = Bytes::from(vec![7u8; 64 << 10]);
    let batch: Vec<Bytes> = (0..16).map(|_| frame.clone()).collect();
    let mut g = c.benchmark_group("session");
    g.throughput(Throughput::Bytes(1 << 20));
    g.bench_function("append 1 MiB batch (write + sha256)", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let s = reg.create(&repo).await.unwrap();
                let t = Instant::now();
                let mut at = 0;
                for _ in 0..iters {
                    at = s.append(Some(at), batch.clone()).await.unwrap();
                }
                let e = t.elapsed();
                reg.discard(s.id).await.unwrap();
                e
            })
        })
    });
    g.finish();
}

fn commit(c: &mut Criterion) {
    let rt = rt();
    let dir = tempfile::tempdir().unwrap();
    let store = rt
        .block_on(ContentStore::start(
            dir.path(),
            4,
            true,
            Duration::from_secs(30),
            Arc::new(DiskSpace::unreserved(dir.path())),
        ))
        .unwrap();
    let staging = dir.path().join("bench-staging");
    std::fs::create_dir_all(&staging).unwrap();
    let mut n = 0u64;
    let mut g = c.benchmark_group("commit");
    g.bench_function("new 64 KiB blob (rename + dir fsync)", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                n += 1;
                let data = format!("blob {n}").repeat(4096);
                let d = Digest::of(Algorithm::Sha256, data.as_bytes());
                let p = staging.join(n.to_string());
                std::fs::write(&p, &data).unwrap();
                let t = Instant::now();
                rt.block_on(store.place(&d, p)).unwrap();
                total += t.elapsed();
            }
            total
        })
    });
    let data = "same".repeat(16384);
    let d = Digest::of(Algorithm::Sha256, data.as_bytes());
    g.bench_function("dedup hit (blob already stored)", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                n += 1;
                let p = staging.join(n.to_string());
                std::fs::write(&p, &data).unwrap();
                let t = Instant::now();
                rt.block_on(store.place(&d, p)).unwrap();
                total += t.elapsed();
            }
            total
        })
    });
    g.finish();
    rt.block_on(store.stop());
}

fn range_read(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("blob");
    std::fs::write(&path, vec![3u8; 16 << 20]).unwrap();
    let mut g = c.benchmark_group("range read 1 MiB of 16 MiB");
    g.throughput(Throughput::Bytes(1 << 20));
    let mut i = 0usize;
    g.bench_function("mmap Bytes slice (open + map + slice)", |b| {
        b.iter(|| {
            i = (i + 5) % 16;
            let blob = BlobBytes::open(&path).unwrap().unwrap();
            let s = blob.bytes.slice(i << 20..(i + 1) << 20);
            // hyper would hand these pages to the socket; touch them so the
            // page-table work is counted.
            criterion::black_box(s.iter().step_by(4096).map(|&x| x as u64).sum::<u64>())
        })
    });
    let mut buf = vec![0u8; 1 << 20];
    g.bench_function("read_at into a reused buffer", |b| {
        b.iter(|| {
            i = (i + 5) % 16;
            let f = std::fs::File::open(&path).unwrap();
            f.read_exact_at(&mut buf, (i << 20) as u64).unwrap();
            criterion::black_box(buf[0])
        })
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    targets = session_append, commit, range_read
}
criterion_main!(benches);
