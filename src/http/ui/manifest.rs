//! `/ui/manifest?name=&digest=`: one manifest: its pull line, the tags
//! that point at it, an image's configuration (platform, entrypoint,
//! environment, labels, ports, and its history beside the layers), an
//! index's platforms, layers, and referrers grouped by artifact type.

use super::repository::tags_by_push;
use super::{enc, esc, human, named_repo, pull_line, short, when, Viewer};
use crate::http::error::ApiError;
use crate::http::query::Query;
use crate::http::{App, HttpResult};
use crate::meta::ManifestRecord;
use crate::oci::{Digest, RepoName};
use crate::storage::{BlobContent, BlobRequest};
use serde_json::Value;
use std::collections::BTreeMap;
use std::fmt::Write as _;

/// The most of a config blob the page reads (configs are a few KiB).
const CONFIG_MAX: u64 = 1 << 20;

pub(super) async fn page(st: &App, query: &Query, viewer: &Viewer<'_>) -> HttpResult {
    let name = named_repo(query, viewer)?;
    let digest = Digest::parse(query.get("digest").unwrap_or(""))?;
    let (repo, d) = (name.clone(), digest.clone());
    let (record, referrers, tags) = st
        .meta
        .query(move |m| {
            let Some(rec) = m.manifest(&repo, &d)? else {
                return Ok(None);
            };
            let mut refs = Vec::new();
            for r in m.referrers(&repo, &d)? {
                if let Some(rr) = m.manifest(&repo, &r)? {
                    refs.push((r, rr));
                }
            }
            let tags: Vec<String> = tags_by_push(m, &repo)?
                .into_iter()
                .filter(|(_, td, _)| *td == d)
                .map(|(t, _, _)| t)
                .collect();
            Ok(Some((rec, refs, tags)))
        })
        .await?
        .ok_or(ApiError::ManifestUnknown)?;
    let bytes = st
        .storage
        .manifest_bytes(&digest)
        .await?
        .ok_or(ApiError::ManifestUnknown)?;
    let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
    let mut body = format!(
        "<h1><a href=\"/ui/repo?name={}\">{}</a> @ <code>{}</code></h1><p class=muted>{} · {} · pushed {}</p>",
        enc(name.as_str()),
        esc(name.as_str()),
        esc(&short(&digest.to_string())),
        esc(&record.media_type),
        human(record.size),
        when(record.created)
    );
    body.push_str(&pull_line(&format!(
        "docker pull {}/{}@{}",
        viewer.host, name, digest
    )));
    body.push_str("<h2>Tags</h2>");
    match tags.is_empty() {
        true => body.push_str("<p class=muted>No tag points at this manifest.</p>"),
        false => {
            let links: Vec<String> = tags
                .iter()
                .map(|t| format!("<code>{}</code>", esc(t)))
                .collect();
            let _ = write!(body, "<p id=tags>{}</p>", links.join(" "));
        }
    }
    if let Some(children) = v["manifests"].as_array() {
        body.push_str("<h2>Platforms</h2><div class=scroll><table id=platforms><tr><th>Platform</th><th>Digest</th><th class=n>Size</th></tr>");
        for c in children {
            let d = c["digest"].as_str().unwrap_or("");
            let media_type = c["mediaType"].as_str().unwrap_or("");
            // BuildKit's cache index lists blobs, which have no page.
            let (p, digest_cell) = if crate::oci::manifest::names_a_manifest(media_type) {
                (
                    platform(c).unwrap_or_default(),
                    format!(
                        "<a href=\"/ui/manifest?name={}&amp;digest={}\"><code>{}</code></a>",
                        enc(name.as_str()),
                        enc(d),
                        esc(&short(d))
                    ),
                )
            } else {
                (
                    media_type.to_owned(),
                    format!("<code>{}</code>", esc(&short(d))),
                )
            };
            let _ = write!(
                body,
                "<tr><td>{}</td><td>{}</td><td class=n>{}</td></tr>",
                esc(&p),
                digest_cell,
                human(c["size"].as_u64().unwrap_or(0))
            );
        }
        body.push_str("</table></div>");
    }
    if let Some(cfg) = v.get("config").filter(|c| c.is_object()) {
        if let Some(image) = image_config(st, &name, cfg).await {
            body.push_str(&config_panel(&image, v["layers"].as_array()));
        }
        let _ = write!(
            body,
            "<h2>Config</h2><div class=scroll><table id=config><tr><th>Media type</th><th>Digest</th><th class=n>Size</th></tr>\
             <tr><td>{}</td><td><code>{}</code></td><td class=n>{}</td></tr></table></div>",
            esc(cfg["mediaType"].as_str().unwrap_or("")),
            esc(cfg["digest"].as_str().unwrap_or("")),
            human(cfg["size"].as_u64().unwrap_or(0))
        );
    }
    if let Some(layers) = v["layers"].as_array() {
        let total: u64 = layers.iter().filter_map(|l| l["size"].as_u64()).sum();
        let _ = write!(
            body,
            "<h2>Layers ({}, {})</h2><div class=scroll><table id=layers><tr><th class=n>#</th><th class=wide>Media type</th><th>Digest</th><th class=n>Size</th></tr>",
            layers.len(),
            human(total)
        );
        for (i, l) in layers.iter().enumerate() {
            let _ = write!(
                body,
                "<tr><td class=n>{}</td><td class=wide>{}</td><td><code>{}</code></td><td class=n>{}</td></tr>",
                i + 1,
                esc(l["mediaType"].as_str().unwrap_or("")),
                esc(l["digest"].as_str().unwrap_or("")),
                human(l["size"].as_u64().unwrap_or(0))
            );
        }
        body.push_str("</table></div>");
    }
    let mut groups: BTreeMap<String, Vec<(Digest, ManifestRecord)>> = BTreeMap::new();
    for (d, rec) in referrers {
        let kind = rec
            .artifact_type
            .clone()
            .unwrap_or_else(|| rec.media_type.clone());
        groups.entry(kind).or_default().push((d, rec));
    }
    body.push_str("<h2>Referrers</h2>");
    if groups.is_empty() {
        body.push_str("<p class=muted>No signatures, SBOMs or other referrers.</p>");
    }
    for (kind, items) in &groups {
        let _ = write!(
            body,
            "<h3 class=artifact-type>{}</h3><div class=scroll><table class=referrers><tr><th>Digest</th><th class=n>Size</th><th>Pushed</th></tr>",
            esc(kind)
        );
        for (d, rec) in items {
            let _ = write!(
                body,
                "<tr><td><a href=\"/ui/manifest?name={}&amp;digest={}\"><code>{}</code></a></td><td class=n>{}</td><td>{}</td></tr>",
                enc(name.as_str()),
                enc(&d.to_string()),
                esc(&short(&d.to_string())),
                human(rec.size),
                when(rec.created)
            );
        }
        body.push_str("</table></div>");
    }
    Ok(super::page(
        &format!("{name}@{}", short(&digest.to_string())),
        &body,
    ))
}

/// An index entry's platform (`linux/arm64/v8`), if it names one.
fn platform(entry: &serde_json::Value) -> Option<String> {
    let p = &entry["platform"];
    let (os, arch) = (p["os"].as_str()?, p["architecture"].as_str()?);
    Some(match p["variant"].as_str() {
        Some(v) => format!("{os}/{arch}/{v}"),
        None => format!("{os}/{arch}"),
    })
}

/// Platforms an index lists, from its bytes.
pub(super) fn platforms(bytes: &[u8]) -> Vec<String> {
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(bytes) else {
        return Vec::new();
    };
    v["manifests"]
        .as_array()
        .map(|ms| ms.iter().filter_map(platform).collect())
        .unwrap_or_default()
}

/// An image manifest's config plus layers, in bytes.
pub(super) fn image_size(bytes: &[u8]) -> u64 {
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(bytes) else {
        return 0;
    };
    let layers: u64 = v["layers"]
        .as_array()
        .map(|ls| ls.iter().filter_map(|l| l["size"].as_u64()).sum())
        .unwrap_or(0);
    layers + v["config"]["size"].as_u64().unwrap_or(0)
}

/// An index's images' total: each child manifest's config and layers.
pub(super) async fn index_size(st: &App, bytes: &[u8]) -> u64 {
    let Ok(v) = serde_json::from_slice::<Value>(bytes) else {
        return 0;
    };
    let mut total = 0;
    for c in v["manifests"].as_array().into_iter().flatten() {
        let media_type = c["mediaType"].as_str().unwrap_or("");
        let Some(d) = c["digest"].as_str().and_then(|d| Digest::parse(d).ok()) else {
            continue;
        };
        if crate::oci::manifest::names_a_manifest(media_type) {
            if let Ok(Some(child)) = st.storage.manifest_bytes(&d).await {
                total += image_size(&child);
            }
        }
    }
    total
}

/// An image's configuration blob, parsed, when it is one the page can
/// show: JSON, small, readable here (a redirected read is not followed).
async fn image_config(st: &App, repo: &RepoName, descriptor: &Value) -> Option<Value> {
    let digest = Digest::parse(descriptor["digest"].as_str()?).ok()?;
    if descriptor["size"].as_u64()? > CONFIG_MAX {
        return None;
    }
    let read = st
        .storage
        .read_blob(BlobRequest {
            repo: repo.clone(),
            digest,
            range: None,
            head_only: false,
        })
        .await
        .ok()?;
    let bytes = match read.content {
        BlobContent::Mapped(b) => b,
        BlobContent::Stream(s, _) => {
            use http_body_util::BodyExt as _;
            let read = tokio::time::timeout(std::time::Duration::from_secs(10), s.body.collect());
            read.await.ok()?.ok()?.to_bytes()
        }
        BlobContent::Empty | BlobContent::Redirect(_) => return None,
    };
    let v: Value = serde_json::from_slice(&bytes).ok()?;
    let is_image = v.get("architecture").is_some() || v.get("config").is_some();
    is_image.then_some(v)
}

/// The configuration panel: what the image runs and how it was built.
fn config_panel(image: &Value, layers: Option<&Vec<Value>>) -> String {
    let c = &image["config"];
    let mut rows: Vec<(&str, String)> = Vec::new();
    let platform = [
        image["os"].as_str(),
        image["architecture"].as_str(),
        image["variant"].as_str(),
    ]
    .into_iter()
    .flatten()
    .collect::<Vec<_>>()
    .join("/");
    rows.push(("Platform", platform));
    if let Some(created) = image["created"].as_str() {
        rows.push(("Created", created.to_owned()));
    }
    let words = |v: &Value| -> Option<String> {
        let parts: Vec<&str> = v.as_array()?.iter().filter_map(Value::as_str).collect();
        (!parts.is_empty()).then(|| parts.join(" "))
    };
    for (label, key) in [("Entrypoint", "Entrypoint"), ("Cmd", "Cmd")] {
        if let Some(w) = words(&c[key]) {
            rows.push((label, w));
        }
    }
    for (label, key) in [("Working dir", "WorkingDir"), ("User", "User")] {
        if let Some(s) = c[key].as_str().filter(|s| !s.is_empty()) {
            rows.push((label, s.to_owned()));
        }
    }
    if let Some(ports) = c["ExposedPorts"].as_object() {
        rows.push((
            "Exposed ports",
            ports.keys().cloned().collect::<Vec<_>>().join(", "),
        ));
    }
    let mut out = String::from("<h2>Configuration</h2><dl class=config id=image-config>");
    for (label, value) in &rows {
        let _ = write!(out, "<dt>{label}</dt><dd><code>{}</code></dd>", esc(value));
    }
    if let Some(env) = c["Env"].as_array().filter(|l| !l.is_empty()) {
        let items: Vec<String> = env
            .iter()
            .filter_map(Value::as_str)
            .map(|e| format!("<code>{}</code>", esc(e)))
            .collect();
        let _ = write!(out, "<dt>Env</dt><dd>{}</dd>", items.join("<br>"));
    }
    if let Some(labels) = c["Labels"].as_object().filter(|l| !l.is_empty()) {
        let items: Vec<String> = labels
            .iter()
            .map(|(k, v)| format!("<code>{}={}</code>", esc(k), esc(v.as_str().unwrap_or(""))))
            .collect();
        let _ = write!(out, "<dt>Labels</dt><dd>{}</dd>", items.join("<br>"));
    }
    out.push_str("</dl>");
    // History: each entry that made a layer takes the next layer's size.
    if let Some(history) = image["history"].as_array().filter(|h| !h.is_empty()) {
        let mut sizes = layers
            .into_iter()
            .flatten()
            .map(|l| l["size"].as_u64().unwrap_or(0));
        out.push_str(
            "<h2>History</h2><div class=scroll><table id=history><thead><tr><th class=wide>Created</th>             <th>Command</th><th class=n>Layer</th></tr></thead><tbody>",
        );
        for h in history {
            let size = match h["empty_layer"].as_bool().unwrap_or(false) {
                true => String::new(),
                false => sizes.next().map(human).unwrap_or_default(),
            };
            let _ = write!(
                out,
                "<tr><td class=wide>{}</td><td><code>{}</code></td><td class=n>{size}</td></tr>",
                esc(h["created"].as_str().unwrap_or("")),
                esc(h["created_by"].as_str().unwrap_or(""))
            );
        }
        out.push_str("</tbody></table></div>");
    }
    out
}
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn platforms_of_an_index() {
        let index = br#"{"manifests":[{"platform":{"os":"linux","architecture":"amd64"}},
            {"platform":{"os":"linux","architecture":"arm64","variant":"v8"}},{"digest":"x"}]}"#;
        assert_eq!(platforms(index), vec!["linux/amd64", "linux/arm64/v8"]);
        assert!(platforms(b"not json").is_empty());
    }

    #[test]
    fn the_config_panel_shows_what_the_image_runs_and_its_history() {
        let image: Value = serde_json::from_str(
            r#"{"os":"linux","architecture":"arm64","created":"2026-12-01T00:00:00Z",
            "config":{"Entrypoint":["/bin/app"],"Cmd":["--serve"],"Env":["PATH=/bin"],
            "Labels":{"org.opencontainers.image.source":"https://x/<y>"},"ExposedPorts":{"8080/tcp":{}}},
            "history":[{"created_by":"ADD rootfs /"},{"created_by":"ENV PATH=/bin","empty_layer":true},
            {"created_by":"COPY app /bin/app"}]}"#,
        )
        .unwrap();
        let layers = vec![
            serde_json::json!({"size": 1024}),
            serde_json::json!({"size": 2048}),
        ];
        let html = config_panel(&image, Some(&layers));
        for want in [
            "linux/arm64",
            "/bin/app",
            "--serve",
            "PATH=/bin",
            "8080/tcp",
            "https://x/&lt;y&gt;",
            "COPY app /bin/app",
            "2.0 KiB",
        ] {
            assert!(html.contains(want), "{want} in {html}");
        }
        // The ENV step made no layer: the second layer's size goes to COPY.
        let copy_row = html.split("<tr>").find(|r| r.contains("COPY app")).unwrap();
        assert!(copy_row.contains("2.0 KiB"), "{copy_row}");
    }
}
