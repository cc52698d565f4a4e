//! The map and the code agree on layers: docs/ARCHITECTURE.md draws them
//! bottom to top, and every `crate::x` a file under src/ names must be a
//! module of a lower layer (tests inside a file may reach anywhere).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// module -> rank, from the `## Layers` drawing (higher ranks sit above).
fn layers(doc: &str) -> BTreeMap<String, usize> {
    let section = &doc[doc.find("## Layers").expect("a Layers section")..];
    let start = section.find("```text").expect("a drawing") + "```text".len();
    let drawing = &section[start..];
    let drawing = &drawing[..drawing.find("```").expect("the drawing ends")];
    let mut ranks = BTreeMap::new();
    // Drawn top first: the last line is the bottom layer.
    for (rank, line) in drawing.trim().lines().rev().enumerate() {
        let (_, modules) = line.trim().split_once(' ').expect("LEVEL modules");
        for m in modules.replace("(the binary)", "").split(',') {
            let m = m.trim();
            if !m.is_empty() {
                ranks.insert(m.to_owned(), rank);
            }
        }
    }
    ranks
}

/// The top-level modules a source file names through `crate::`.
fn named(text: &str) -> BTreeSet<String> {
    let code = text.split("#[cfg(test)]").next().unwrap_or("");
    let code: String = code
        .lines()
        .map(|l| l.split("//").next().unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n");
    let path = regex::Regex::new(r"\bcrate::([a-z_][a-z0-9_]*)").unwrap();
    let group = regex::Regex::new(r"(?s)\buse\s+crate::\{([^}]*)\}").unwrap();
    let mut out: BTreeSet<String> = path.captures_iter(&code).map(|c| c[1].to_owned()).collect();
    for g in group.captures_iter(&code) {
        for part in g[1].split(',') {
            let head = part.trim().split([':', ' ']).next().unwrap_or("");
            if !head.is_empty() {
                out.insert(head.to_owned());
            }
        }
    }
    out
}

fn sources(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let p = entry.unwrap().path();
        if p.is_dir() {
            sources(&p, out);
        } else if p.extension().is_some_and(|e| e == "rs") {
            out.push(p);
        }
    }
}

#[test]
fn every_import_points_down_the_layers_the_map_draws() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let ranks = layers(&std::fs::read_to_string(root.join("docs/ARCHITECTURE.md")).unwrap());
    let src = root.join("src");
    let mut files = Vec::new();
    sources(&src, &mut files);
    let mut wrong = Vec::new();
    for f in files {
        let rel = f.strip_prefix(&src).unwrap();
        let top = rel
            .components()
            .next()
            .unwrap()
            .as_os_str()
            .to_string_lossy();
        let top = top.trim_end_matches(".rs").to_owned();
        if top == "main" || top == "lib" {
            continue;
        }
        let Some(&at) = ranks.get(&top) else {
            wrong.push(format!(
                "{}: module {top} is not in the drawing",
                rel.display()
            ));
            continue;
        };
        for m in named(&std::fs::read_to_string(&f).unwrap()) {
            if m == top || m == "self" || m == "super" {
                continue;
            }
            match ranks.get(&m) {
                Some(&r) if r < at => {}
                Some(_) => wrong.push(format!("{}: {top} names {m}, not below it", rel.display())),
                None => wrong.push(format!("{}: names {m}, not in the drawing", rel.display())),
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "imports against the layers:\n{}",
        wrong.join("\n")
    );
}
