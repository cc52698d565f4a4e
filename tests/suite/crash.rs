//! Crash consistency: the real binary under 16 parallel pushers is killed
//! with SIGKILL at random moments, restarted, and everything it had
//! acknowledged with 201 is checked byte for byte; an upload cut by the
//! kill resumes from the offset the status call reports.
//!
//! WHARF_CRASH_ROUNDS (default 20) sets the number of kill/restart rounds.

use crate::common::*;
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Clone, Debug)]
enum Acked {
    Blob {
        repo: String,
        digest: String,
        len: usize,
        seed: u64,
    },
    Tag {
        repo: String,
        tag: String,
        body: Vec<u8>,
    },
}

/// A chunked upload that was cut by a kill.
struct Pending {
    repo: String,
    loc: String,
    data: Vec<u8>,
}

async fn pusher(base: String, w: u64, round: u64, acked: Arc<Mutex<Vec<Acked>>>) {
    let c = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let repo = format!("crash/w{w}");
    let mut mine: Vec<(String, usize)> = Vec::new();
    for i in 0u64.. {
        let seed = round * 1_000_000 + w * 10_000 + i;
        let len = 1024 + (seed as usize * 7919) % (768 * 1024);
        let data = payload(len, seed);
        let d = digest(&data);
        let chunked = i % 3 == 1;
        let ok = if chunked {
            let Ok(r) = c
                .post(format!("{base}/v2/{repo}/blobs/uploads/"))
                .send()
                .await
            else {
                return;
            };
            let Some(loc) = r
                .headers()
                .get("location")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
            else {
                return;
            };
            let half = len / 2;
            let Ok(r) = c
                .patch(format!("{base}{loc}"))
                .header("content-range", format!("0-{}", half - 1))
                .body(data[..half].to_vec())
                .send()
                .await
            else {
                return;
            };
            let Some(loc) = r
                .headers()
                .get("location")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
            else {
                return;
            };
            c.put(format!("{base}{loc}?digest={d}"))
                .body(data[half..].to_vec())
                .send()
                .await
        } else {
            c.post(format!("{base}/v2/{repo}/blobs/uploads/?digest={d}"))
                .body(data)
                .send()
                .await
        };
        match ok {
            Ok(r) if r.status() == 201 => {
                acked.lock().unwrap().push(Acked::Blob {
                    repo: repo.clone(),
                    digest: d.clone(),
                    len,
                    seed,
                });
                mine.push((d, len));
            }
            Ok(r) => panic!("push answered {}", r.status()),
            Err(_) => return,
        }
        if mine.len() >= 2 && i % 4 == 3 {
            let (cfg, layer) = (&mine[mine.len() - 2], &mine[mine.len() - 1]);
            let body = serde_json::to_vec(&serde_json::json!({
                "schemaVersion": 2, "mediaType": OCI_MANIFEST,
                "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cfg.0, "size": cfg.1},
                "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layer.0, "size": layer.1}],
            }))
            .unwrap();
            let tag = format!("r{round}-{i}");
            match c
                .put(format!("{base}/v2/{repo}/manifests/{tag}"))
                .header("content-type", OCI_MANIFEST)
                .body(body.clone())
                .send()
                .await
            {
                Ok(r) if r.status() == 201 => acked.lock().unwrap().push(Acked::Tag {
                    repo: repo.clone(),
                    tag,
                    body,
                }),
                Ok(r) => panic!("manifest PUT answered {}", r.status()),
                Err(_) => return,
            }
        }
    }
}

async fn verify(base: &str, items: &[Acked]) {
    let c = reqwest::Client::new();
    for a in items {
        match a {
            Acked::Blob {
                repo,
                digest: d,
                len,
                seed,
            } => {
                let r = c
                    .get(format!("{base}/v2/{repo}/blobs/{d}"))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), 200, "acknowledged blob {d} lost");
                let got = r.bytes().await.unwrap();
                assert_eq!(got.len(), *len);
                assert_eq!(&got[..], &payload(*len, *seed)[..], "blob {d} corrupt");
            }
            Acked::Tag { repo, tag, body } => {
                let r = c
                    .get(format!("{base}/v2/{repo}/manifests/{tag}"))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), 200, "acknowledged tag {repo}:{tag} lost");
                assert_eq!(&r.bytes().await.unwrap()[..], &body[..]);
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_pushes_survive_sigkill() {
    let rounds: u64 = std::env::var("WHARF_CRASH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let dir = tempfile::tempdir().unwrap();
    let acked = Arc::new(Mutex::new(Vec::<Acked>::new()));
    let mut verified = 0usize;
    let mut pending: Option<Pending> = None;
    let mut resumed = 0;
    for round in 0..rounds {
        let wharf = WharfProcess::start(dir.path());
        let base = wharf.base.clone();
        // What the last round acknowledged must all be here.
        let all = acked.lock().unwrap().clone();
        verify(&base, &all[verified..]).await;
        verified = all.len();
        // The upload the kill cut: resume from the reported offset.
        let c = reqwest::Client::new();
        if let Some(p) = pending.take() {
            let r = c.get(format!("{base}{}", p.loc)).send().await.unwrap();
            assert_eq!(r.status(), 204, "cut upload is gone after restart");
            let range = header(&r, "range").unwrap().to_owned();
            let end: usize = range.trim_start_matches("0-").parse().unwrap();
            let off = if end == 0 { 0 } else { end + 1 };
            assert!(off <= p.data.len());
            let d = digest(&p.data);
            let r = c
                .put(format!("{base}{}?digest={d}", p.loc))
                .header("content-range", format!("{}-{}", off, p.data.len() - 1))
                .body(p.data[off..].to_vec())
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 201, "resume from {off}");
            let got = c
                .get(format!("{base}/v2/{}/blobs/{d}", p.repo))
                .send()
                .await
                .unwrap()
                .bytes()
                .await
                .unwrap();
            assert_eq!(&got[..], &p.data[..]);
            resumed += 1;
        }
        // Start the next upload to be cut: one chunk in, rest to follow.
        let data = payload(900_000, 77 + round);
        let repo = "crash/resume".to_string();
        let r = c
            .post(format!("{base}/v2/{repo}/blobs/uploads/"))
            .send()
            .await
            .unwrap();
        let loc = location(&r);
        let r = c
            .patch(format!("{base}{loc}"))
            .header("content-range", "0-399999")
            .body(data[..400_000].to_vec())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 202);
        pending = Some(Pending {
            repo,
            loc: location(&r),
            data,
        });

        let mut tasks = Vec::new();
        for w in 0..16 {
            tasks.push(tokio::spawn(pusher(base.clone(), w, round, acked.clone())));
        }
        let ms = 300 + (round * 7919) % 900;
        tokio::time::sleep(Duration::from_millis(ms)).await;
        drop(wharf); // SIGKILL, then reap
        for t in tasks {
            t.await.unwrap();
        }
    }
    let wharf = WharfProcess::start(dir.path());
    let all = acked.lock().unwrap().clone();
    verify(&wharf.base, &all).await;
    drop(wharf);
    assert!(
        all.len() > rounds as usize * 16,
        "too little was pushed to mean anything: {}",
        all.len()
    );
    assert_eq!(resumed, rounds - 1);
    eprintln!("crash test: {rounds} kill -9 rounds, {} acknowledged items verified, {resumed} uploads resumed", all.len());
}
