//! Request routing and protocol parsing: what every request pays before any
//! I/O (path split from the right, name and digest validation, query).

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use wharf::http::query::Query;
use wharf::http::route;

fn routing(c: &mut Criterion) {
    let d = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
    let paths = [
        format!("/v2/library/ubuntu/blobs/{d}"),
        "/v2/org/team/project/app/manifests/v1.2.3".to_string(),
        "/v2/a/blobs/uploads/5f0c5b3e-2a43-4c9b-9d59-3c8c5d6e7f80".to_string(),
        "/v2/org/app/tags/list".to_string(),
    ];
    c.bench_function("route::parse (4 typical paths)", |b| {
        b.iter(|| {
            for p in &paths {
                black_box(route::parse(black_box(p)).is_ok());
            }
        })
    });
    let q = format!("digest={}&mount=x&from=a%2Fb", d.replace(':', "%3A"));
    c.bench_function("Query::parse (upload completion)", |b| {
        b.iter(|| black_box(Query::parse(Some(black_box(&q))).get("digest").is_some()))
    });
}

criterion_group!(benches, routing);
criterion_main!(benches);
