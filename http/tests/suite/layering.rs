//! Dependencies point down: each top-level module of `engine/src` and `http/src` names
//! only modules of its own layer or below (read from its `crate::` paths); within the
//! engine's subsystem layers, siblings do not name each other either. The engine handle
//! lives in the kernel, so a subsystem adding its operations (`impl Engine {`) names only
//! the kernel; `wiring` (opening the engine, routing events and timers) is the one module
//! above every subsystem.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// The engine's layers, bottom first. `storage` is the `keel-storage` crate re-exported.
const ENGINE_LAYERS: &[&[&str]] = &[
    &[
        "storage", "sync", "clock", "ids", "avro", "keys", "error", "model",
    ],
    &[
        "tables", "history", "matching", "timers", "metrics", "cluster",
    ],
    &["kernel"],
    &["namespaces"],
    &["workflow", "fleet", "payloads", "sessions"],
    &[
        "schedules",
        "queries",
        "system",
        "operator",
        "services",
        "census",
        "transfer",
    ],
    &["wiring"],
];

/// Engine layers whose modules may not name each other (the subsystems).
const ENGINE_STRICT_SIBLINGS: &[usize] = &[4, 5];

/// The HTTP front's layers, bottom first.
const HTTP_LAYERS: &[&[&str]] = &[
    &[
        "error", "validate", "router", "metrics", "limits", "reload", "ui",
    ],
    &[
        "auth",
        "quota",
        "gates",
        "discovery",
        "connections",
        "tls",
        "trail",
    ],
    &["call", "audit"],
    &["handlers"],
    &["server"],
    // The library entry point (`Server::builder()`), then the command line over it.
    &["builder"],
    &["cli"],
];

/// The `crate::` modules each top-level module of `src` names, comments left out.
fn edges(src: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut stack = vec![src.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).expect("source dir reads") {
            let path = entry.expect("dir entry").path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            if path.extension().and_then(|e| e.to_str()) != Some("rs") {
                continue;
            }
            let relative = path.strip_prefix(src).expect("under src");
            let first = relative.components().next().expect("a component");
            let module = first
                .as_os_str()
                .to_string_lossy()
                .trim_end_matches(".rs")
                .to_string();
            if module == "lib" || module == "main" {
                continue;
            }
            let text = std::fs::read_to_string(&path).expect("source reads");
            let targets = out.entry(module.clone()).or_default();
            for line in text.lines() {
                let code = line.split("//").next().unwrap_or("");
                for named in crate_paths(code) {
                    if named != module {
                        targets.insert(named);
                    }
                }
            }
        }
    }
    out
}

/// Module names after `crate::` in one line: `crate::a::x` and `crate::{a, b::c}`.
fn crate_paths(code: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = code;
    while let Some(at) = rest.find("crate::") {
        rest = &rest[at + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let end = group.find('}').unwrap_or(group.len());
            for item in group[..end].split(',') {
                let ident: String = item
                    .trim()
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                if !ident.is_empty() {
                    names.push(ident);
                }
            }
        } else {
            let ident: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if ident.chars().next().is_some_and(|c| c.is_ascii_lowercase()) {
                names.push(ident);
            }
        }
    }
    names
}

/// Edges to a module of a higher layer, or sideways within the layers listed as
/// `strict` (a sideways edge in a non-strict layer is allowed).
fn violations(
    edges: &BTreeMap<String, BTreeSet<String>>,
    layers: &[&[&str]],
    strict_siblings: &[usize],
) -> BTreeSet<(String, String)> {
    let layer_of = |m: &str| layers.iter().position(|l| l.contains(&m));
    let mut found = BTreeSet::new();
    for (from, targets) in edges {
        let from_layer =
            layer_of(from).unwrap_or_else(|| panic!("module `{from}` is in no layer: add it"));
        for to in targets {
            let Some(to_layer) = layer_of(to) else {
                continue; // not a module (e.g. a macro or a re-exported item)
            };
            let sideways = to_layer == from_layer && strict_siblings.contains(&from_layer);
            if to_layer > from_layer || sideways {
                found.insert((from.clone(), to.clone()));
            }
        }
    }
    found
}

fn src(crate_dir: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(crate_dir)
        .join("src")
}

#[test]
fn http_modules_only_name_modules_of_their_layer_or_below() {
    let found = violations(&edges(&src("http")), HTTP_LAYERS, &[]);
    assert!(found.is_empty(), "upward imports in http/src: {found:?}");
}

#[test]
fn engine_modules_point_down_and_subsystems_do_not_name_their_siblings() {
    let found = violations(
        &edges(&src("engine")),
        ENGINE_LAYERS,
        ENGINE_STRICT_SIBLINGS,
    );
    assert!(
        found.is_empty(),
        "upward or sideways imports in engine/src (move the shared code down, or raise \
         a kernel Event that wiring/hooks.rs routes): {found:?}"
    );
}

#[test]
fn the_check_flags_an_upward_and_a_sideways_edge_but_not_a_downward_one() {
    let edges: BTreeMap<String, BTreeSet<String>> = [
        ("kernel", &["workflow", "tables"][..]),
        ("workflow", &["fleet", "kernel"][..]),
        ("operator", &["workflow"][..]),
    ]
    .into_iter()
    .map(|(m, to)| (m.to_string(), to.iter().map(|t| t.to_string()).collect()))
    .collect();
    let found = violations(&edges, ENGINE_LAYERS, ENGINE_STRICT_SIBLINGS);
    let expected: BTreeSet<(String, String)> = [("kernel", "workflow"), ("workflow", "fleet")]
        .into_iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
    assert_eq!(found, expected);
}

#[test]
fn crate_paths_reads_plain_and_grouped_imports() {
    assert_eq!(crate_paths("use crate::a::b;"), ["a"]);
    assert_eq!(crate_paths("use crate::{x, y::z};"), ["x", "y"]);
    assert_eq!(
        crate_paths("let v = crate::tables::get(crate::keys::k());"),
        ["tables", "keys"]
    );
}
