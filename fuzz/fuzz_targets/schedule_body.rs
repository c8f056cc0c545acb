//! Schedule create and update bodies (`ScheduleInput::from_json`,
//! `SchedulePatch::from_json`, the functions the schedule handlers call): any JSON body
//! is accepted or refused with an error that the HTTP layer maps to a 4xx with a named
//! reason (422 `validation_failed` with field errors, or a named rejection); an accepted
//! body's spec compiles and renders. The HTTP target covers the same bodies end to end;
//! this one runs much faster.
//!
//! Input: a JSON document.
#![no_main]

use keel_engine::schedules::spec::Spec;
use keel_engine::schedules::{action_json, spec_json, ScheduleInput, SchedulePatch};
use keel_fuzz::http::assert_named_rejection;
use keel_http::error::ApiError;
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

/// 2026-01-01T00:00:00Z.
const NOW: i64 = 1_767_225_600_000;

fn accepted_spec(spec: &keel_engine::schedules::spec::SpecRecord) {
    let compiled = Spec::compile(spec).expect("an accepted spec compiles");
    let _ = compiled.next_after(NOW);
    let _ = spec_json(spec);
}

fuzz_target!(|data: &[u8]| {
    let Ok(body) = serde_json::from_slice::<Value>(data) else {
        return;
    };
    match ScheduleInput::from_json(&body) {
        Ok(input) => {
            accepted_spec(&input.spec);
            let _ = action_json(&input.action);
        }
        Err(e) => assert_named_rejection(&ApiError::from(e)),
    }
    match SchedulePatch::from_json(&body) {
        Ok(patch) => {
            if let Some(spec) = &patch.spec {
                accepted_spec(spec);
            }
            if let Some(action) = &patch.action {
                let _ = action_json(action);
            }
        }
        Err(e) => assert_named_rejection(&ApiError::from(e)),
    }
});
