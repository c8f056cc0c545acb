//! `keel storage check`: opens a store offline (the server stopped, or another
//! FoundationDB subspace), checks its schema version against this binary's and prints
//! what it holds, table by table ([`keel_engine::census`]).

use std::io::Write;
use std::process::ExitCode;

use keel_engine::census::{self, Census};
use serde_json::json;

use super::{open_for_check, parse_storage_flags, StoreOpener};

const USAGE: &str = "usage: keel storage check [--storage BACKEND | --data-dir DIR] \
[--fdb-subspace NAME] [--output json]

Opens the store (the default is rocksdb:./keel-data; stop the server first, RocksDB \
allows one process), checks its schema version and prints its size and keys per table. \
Exit status: 0 ok, 1 the store cannot be opened, its schema version is not this \
binary's or it holds an unfinished import, 2 usage.

keel storage export|import --help: back up namespaces, or move them between backends.";

/// Runs `keel storage ARGS...` (the arguments after `storage`).
pub fn main(args: &[String], custom: Option<StoreOpener>) -> ExitCode {
    let (json_output, flags) = match split_output_flag(args) {
        Ok(v) => v,
        Err(message) => return usage(&message),
    };
    match flags.first().map(String::as_str) {
        Some("check") => {}
        Some("--help" | "-h" | "help") | None => return usage(""),
        Some(other) => return usage(&format!("unknown storage command '{other}'")),
    }
    let storage = match parse_storage_flags(&flags[1..], custom.is_some()) {
        Ok(s) => s,
        Err(message) => return usage(&message),
    };
    let runtime = match super::offline_runtime() {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    let outcome = runtime.block_on(async {
        let opened = open_for_check(&storage, custom)?;
        let census = census::count(opened.store.as_ref())
            .await
            .map_err(|e| format!("cannot read {}: {e}", opened.place))?;
        let unfinished = keel_engine::transfer::unfinished_import(opened.store.as_ref())
            .await
            .map_err(|e| format!("cannot read {}: {e}", opened.place))?;
        let _ = opened.store.shutdown().await;
        Ok::<_, String>((opened.place, opened.size_on_disk, census, unfinished))
    });
    let (place, size, census, unfinished) = match outcome {
        Ok(v) => v,
        Err(message) => {
            eprintln!("error: {message}");
            return ExitCode::FAILURE;
        }
    };
    let schema_ok = census.schema_version == Some(census.expected_schema_version);
    // An interrupted `keel storage import` leaves a store `keel serve` refuses.
    let import_note = unfinished.as_ref().map(|u| {
        format!(
            "unfinished `keel storage import` of namespaces {} (from {}): run it again \
             with the same file",
            u.namespaces.join(", "),
            u.source
        )
    });
    let text = if json_output {
        let doc = serde_json::to_string_pretty(&json!({
                "storage": place,
                "size_on_disk_bytes": size,
                "schema_version": census.schema_version,
                "expected_schema_version": census.expected_schema_version,
                "schema_ok": schema_ok,
                "unfinished_import": unfinished,
                "total_keys": census.total_keys(),
                "total_bytes": census.total_bytes(),
                "tables": census.tables,
        }))
        .unwrap_or_default();
        format!("{doc}\n")
    } else {
        let mut text = human(&place, size, &census, schema_ok);
        if let Some(note) = &import_note {
            text += &format!("\nimport          {note}\n");
        }
        text
    };
    // A closed pipe (`... | head`) is not the check's failure.
    let _ = std::io::stdout().write_all(text.as_bytes());
    if schema_ok && import_note.is_none() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn human(place: &str, size: Option<u64>, census: &Census, schema_ok: bool) -> String {
    let mut out = format!("storage         {place}\n");
    let schema = match census.schema_version {
        Some(v) if schema_ok => format!("version {v} (ok)"),
        Some(v) => format!(
            "version {v}, but this binary reads version {}",
            census.expected_schema_version
        ),
        None => "none: an empty store, or not Keel's".into(),
    };
    out += &format!("schema          {schema}\n");
    if let Some(bytes) = size {
        out += &format!("size on disk    {}\n", human_bytes(bytes));
    }
    out += &format!(
        "keys            {} ({} of keys and values)\n\n",
        census.total_keys(),
        human_bytes(census.total_bytes())
    );
    out += &format!("{:<26}  {:>10}  {:>10}\n", "TABLE", "KEYS", "BYTES");
    for t in &census.tables {
        out += &format!(
            "{:<26}  {:>10}  {:>10}\n",
            t.table,
            t.keys,
            human_bytes(t.bytes)
        );
    }
    out
}

fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// `--output json` / `-o json` taken out of the flags (the rest are the store's).
fn split_output_flag(args: &[String]) -> Result<(bool, Vec<String>), String> {
    let mut json_output = false;
    let mut rest = Vec::new();
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--output" | "-o" => match it.next().map(String::as_str) {
                Some("json") => json_output = true,
                Some("table") => json_output = false,
                _ => return Err("--output takes json or table".into()),
            },
            _ => rest.push(arg.clone()),
        }
    }
    Ok((json_output, rest))
}

fn usage(message: &str) -> ExitCode {
    if message.is_empty() {
        println!("{USAGE}");
        return ExitCode::SUCCESS;
    }
    eprintln!("{message}\n\n{USAGE}");
    ExitCode::from(2)
}
