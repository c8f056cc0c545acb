//! The upstream JSON Schemas (`schemas/`, compiled in) and a validator over them.
//!
//! The schemas name each other by relative file name (`./history-event-payloads.schema.json`)
//! and carry `$id`s that are not URIs (`durable-workflow.v2.history-export-bundle`), so
//! each is registered under one made-up base URI by its file name, its `$id` set to that
//! URI, and the references resolve among them without any network access.

use serde_json::Value;

const BASE: &str = "https://schemas.durable-workflow.invalid/";

const FILES: &[(&str, &str)] = &[
    (
        "history-export-bundle.schema.json",
        include_str!("../schemas/history-export-bundle.schema.json"),
    ),
    (
        "history-event-payloads.schema.json",
        include_str!("../schemas/history-event-payloads.schema.json"),
    ),
    (
        "cluster-info-envelope.schema.json",
        include_str!("../schemas/cluster-info-envelope.schema.json"),
    ),
    (
        "worker-sessions-runtime.schema.json",
        include_str!("../schemas/worker-sessions-runtime.schema.json"),
    ),
    (
        "local-activity-runtime.schema.json",
        include_str!("../schemas/local-activity-runtime.schema.json"),
    ),
];

fn load(file: &str) -> Result<Value, String> {
    let (_, text) = FILES
        .iter()
        .find(|(name, _)| *name == file)
        .ok_or_else(|| format!("no schema {file}"))?;
    let mut v: Value = serde_json::from_str(text).map_err(|e| format!("{file}: {e}"))?;
    v["$id"] = Value::String(format!("{BASE}{file}"));
    Ok(v)
}

/// The violations of `instance` against the schema in `file` (empty: valid), at most 20.
pub fn violations(file: &str, instance: &Value) -> Result<Vec<String>, String> {
    let root = load(file)?;
    let mut options = jsonschema::options().with_draft(jsonschema::Draft::Draft202012);
    for (name, _) in FILES {
        if *name != file {
            let resource = jsonschema::Resource::from_contents(load(name)?)
                .map_err(|e| format!("{name}: {e}"))?;
            options = options.with_resource(format!("{BASE}{name}"), resource);
        }
    }
    let validator = options
        .build(&root)
        .map_err(|e| format!("{file} does not compile: {e}"))?;
    Ok(validator
        .iter_errors(instance)
        .take(20)
        .map(|e| format!("{}: {e}", e.instance_path))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_schema_compiles_with_its_references() {
        for (name, _) in FILES {
            assert!(
                violations(name, &serde_json::json!({})).is_ok(),
                "{name} compiles"
            );
        }
    }

    #[test]
    fn an_empty_bundle_is_refused_with_the_missing_fields_named() {
        let v = violations("history-export-bundle.schema.json", &serde_json::json!({}))
            .expect("compiles");
        assert!(v.iter().any(|m| m.contains("history_events")), "{v:?}");
    }
}
