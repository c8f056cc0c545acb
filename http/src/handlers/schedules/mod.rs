//! Schedule routes: `GET/POST /api/schedules`, `GET/PUT/DELETE /api/schedules/{id}`,
//! `POST .../pause|resume|trigger|backfill`, `GET .../history`. The engine owns the
//! semantics (`keel_engine::schedules`); this module reads requests and shapes replies.
//!
//! Errors: 404 `schedule_not_found`, 409 `schedule_already_exists`, 422
//! `validation_failed` (field errors for a bad cron, interval, time zone, ...), 422
//! `memo_too_large`, 422 `invalid_time_range` and `backfill_too_large` (backfill); list
//! refusals (400 `malformed_schedule_page_token`, 403
//! `schedule_page_token_namespace_mismatch`, 409 `schedule_page_token_filter_mismatch` and
//! `stale_schedule_page_token`, 422 `invalid_schedule_visibility_query`,
//! `unsupported_schedule_visibility_predicate`, `unsupported_schedule_visibility_field`,
//! `validation_failed`) carry `field`, `errors`, `validation_errors` and `last_safe_cursor`.

use base64::Engine as _;
use bytes::Bytes;
use hyper::StatusCode;
use keel_engine::schedules::{
    parse_instant, parse_visibility_query, OverlapPolicy, ScheduleInput, ScheduleListQuery,
    SchedulePatch, ScheduleStatus, MAX_HISTORY_PAGE, MAX_LIST_PAGE,
};
use serde_json::{json, Value};

use crate::call::{AppState, Call, Reply};
use crate::error::ApiError;
use crate::router::Op;
use crate::validate::Fields;

mod render;

use render::{backfill_json, schedule_json, trigger_json};

/// Default page size of a schedule list.
const DEFAULT_PAGE_SIZE: usize = 50;
/// Default page size of a schedule history page.
const DEFAULT_HISTORY_LIMIT: usize = 100;

/// Serves a schedule route.
pub async fn handle(state: &AppState, op: Op, call: Call) -> Result<Reply, ApiError> {
    let engine = &state.engine;
    let ns = call.namespace.as_str();
    let id = call.param(0);
    match op {
        Op::ListSchedules => list(state, &call).await,
        Op::CreateSchedule => {
            let input = ScheduleInput::from_json(&call.body)?;
            let s = engine.create_schedule(ns, input).await?;
            Ok(Reply::json(StatusCode::CREATED, &schedule_json(&s)))
        }
        Op::DescribeSchedule => {
            let s = engine.describe_schedule(ns, id).await?;
            Ok(Reply::json(StatusCode::OK, &schedule_json(&s)))
        }
        Op::UpdateSchedule => {
            let patch = SchedulePatch::from_json(&call.body)?;
            let s = engine.update_schedule(ns, id, patch).await?;
            Ok(Reply::json(StatusCode::OK, &schedule_json(&s)))
        }
        Op::DeleteSchedule => {
            engine.delete_schedule(ns, id).await?;
            Ok(Reply::bytes(
                StatusCode::NO_CONTENT,
                Bytes::new(),
                "application/json",
            ))
        }
        Op::PauseSchedule | Op::ResumeSchedule => {
            let mut f = Fields::new(&call.body)?;
            let note = f.optional_str("note", 1000);
            f.finish()?;
            let s = if op == Op::PauseSchedule {
                engine.pause_schedule(ns, id, note).await?
            } else {
                engine.resume_schedule(ns, id, note).await?
            };
            Ok(Reply::json(StatusCode::OK, &schedule_json(&s)))
        }
        Op::TriggerSchedule => {
            let mut f = Fields::new(&call.body)?;
            let overlap = overlap_policy(&mut f);
            f.finish()?;
            let result = engine.trigger_schedule(ns, id, overlap).await?;
            Ok(Reply::json(StatusCode::OK, &trigger_json(&result)))
        }
        Op::BackfillSchedule => {
            let mut f = Fields::new(&call.body)?;
            let instant = |f: &mut Fields<'_>, field: &str| {
                let text = f.required_str(field, 64)?;
                let parsed = parse_instant(&text);
                if parsed.is_none() {
                    f.error(
                        field,
                        format!(
                            "The {field} must be an ISO-8601 instant with an offset (e.g. 2026-01-01T00:00:00Z)."
                        ),
                    );
                }
                parsed
            };
            let start = instant(&mut f, "start_time");
            let end = instant(&mut f, "end_time");
            let overlap = overlap_policy(&mut f);
            f.finish()?;
            let (Some(start), Some(end)) = (start, end) else {
                return Err(ApiError::field("start_time", "The start_time is required."));
            };
            let result = engine
                .backfill_schedule(ns, id, start, end, overlap)
                .await?;
            Ok(Reply::json(StatusCode::OK, &backfill_json(&result)))
        }
        Op::ScheduleHistory => {
            let mut errors = std::collections::BTreeMap::new();
            let limit = match call.query.get("limit").map(|v| v.trim().parse::<i64>()) {
                None => DEFAULT_HISTORY_LIMIT,
                // The SDK documents the limit as clamped by the server.
                Some(Ok(n)) => n.clamp(1, MAX_HISTORY_PAGE as i64) as usize,
                Some(Err(_)) => {
                    errors.insert(
                        "limit".to_string(),
                        vec!["The limit must be an integer.".to_string()],
                    );
                    DEFAULT_HISTORY_LIMIT
                }
            };
            let after = match call
                .query
                .get("after_sequence")
                .map(|v| v.trim().parse::<u64>())
            {
                None => 0,
                Some(Ok(n)) => n,
                Some(Err(_)) => {
                    errors.insert(
                        "after_sequence".to_string(),
                        vec!["The after_sequence must be a non-negative integer.".to_string()],
                    );
                    0
                }
            };
            if !errors.is_empty() {
                return Err(ApiError::validation(errors));
            }
            let page = engine.schedule_history(ns, id, after, limit).await?;
            Ok(Reply::json(
                StatusCode::OK,
                &json!({
                    "schedule_id": id,
                    "namespace": ns,
                    "events": page.events,
                    "has_more": page.has_more,
                    "next_cursor": page.next_cursor,
                }),
            ))
        }
        _ => Err(super::unrouted(op)),
    }
}

fn overlap_policy(f: &mut Fields<'_>) -> Option<OverlapPolicy> {
    let text = f.optional_str("overlap_policy", 32)?;
    let parsed = OverlapPolicy::parse(&text);
    if parsed.is_none() {
        f.error(
            "overlap_policy",
            format!(
                "The overlap_policy must be one of: {}.",
                OverlapPolicy::ALL.map(OverlapPolicy::as_str).join(", ")
            ),
        );
    }
    parsed
}

/// The continuation token: an opaque keyset cursor bound to the namespace and filters.
#[derive(serde::Serialize, serde::Deserialize)]
struct PageToken {
    v: u8,
    ns: String,
    /// The normalized filters.
    f: String,
    /// Anchor: `created_at` (ms) and id of the last schedule of the previous page.
    c: i64,
    s: String,
}

/// The normalized filters a token is bound to.
fn filter_digest(status: Option<&str>, workflow_type: Option<&str>, query: Option<&str>) -> String {
    json!([status, workflow_type, query]).to_string()
}

/// A list refusal in the shape the schedule-list contract pins.
fn list_error(mut e: ApiError, default_field: &str, anchor: Option<&(i64, String)>) -> ApiError {
    let field = e
        .extra
        .get("field")
        .and_then(Value::as_str)
        .unwrap_or(default_field)
        .to_string();
    let errors = match e.extra.get("errors") {
        Some(v @ Value::Object(_)) => v.clone(),
        _ => json!({ field.clone(): [e.message.clone()] }),
    };
    e.extra.insert("field".into(), json!(field));
    e.extra.insert("errors".into(), errors.clone());
    e.extra.insert("validation_errors".into(), errors);
    e.extra.insert(
        "last_safe_cursor".into(),
        anchor.map_or(Value::Null, |(created_at, id)| {
            json!({"created_at": keel_engine::clock::format_timestamp(*created_at), "schedule_id": id})
        }),
    );
    e
}

async fn list(state: &AppState, call: &Call) -> Result<Reply, ApiError> {
    let ns = call.namespace.as_str();
    let q = |k: &str| {
        call.query
            .get(k)
            .map(|v| v.trim())
            .filter(|v| !v.is_empty())
    };
    let status_text = q("status");
    let status = match status_text {
        None => None,
        Some("active") => Some(ScheduleStatus::Active),
        Some("paused") => Some(ScheduleStatus::Paused),
        Some(other) => {
            return Err(list_error(
                ApiError::field(
                    "status",
                    format!("The status must be active or paused, not '{other}'."),
                ),
                "status",
                None,
            ))
        }
    };
    let workflow_type = q("workflow_type");
    if workflow_type.is_some_and(|t| t.len() > 255) {
        return Err(list_error(
            ApiError::field(
                "workflow_type",
                "The workflow_type must not exceed 255 characters.",
            ),
            "workflow_type",
            None,
        ));
    }
    let query = q("query");
    let page_size = match q("page_size").map(str::parse::<usize>) {
        None => DEFAULT_PAGE_SIZE,
        Some(Ok(n)) if (1..=MAX_LIST_PAGE).contains(&n) => n,
        Some(_) => {
            return Err(list_error(
                ApiError::field(
                    "page_size",
                    format!("The page_size must be an integer between 1 and {MAX_LIST_PAGE}."),
                ),
                "page_size",
                None,
            ))
        }
    };
    let digest = filter_digest(status_text, workflow_type, query);
    let after = match q("next_page_token") {
        None => None,
        Some(token) => {
            let decoded = base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(token)
                .ok()
                .and_then(|b| serde_json::from_slice::<PageToken>(&b).ok())
                .filter(|t| t.v == 1);
            let Some(t) = decoded else {
                return Err(list_error(
                    ApiError::new(
                        StatusCode::BAD_REQUEST,
                        "malformed_schedule_page_token",
                        "the next_page_token is not a token this server issued",
                    ),
                    "next_page_token",
                    None,
                ));
            };
            let anchor = (t.c, t.s.clone());
            if t.ns != ns {
                return Err(list_error(
                    ApiError::new(
                        StatusCode::FORBIDDEN,
                        "schedule_page_token_namespace_mismatch",
                        "the next_page_token was issued for another namespace",
                    ),
                    "next_page_token",
                    None,
                ));
            }
            if t.f != digest {
                return Err(list_error(
                    ApiError::new(
                        StatusCode::CONFLICT,
                        "schedule_page_token_filter_mismatch",
                        "the next_page_token was issued for other filters; reuse the same status, workflow_type and query",
                    ),
                    "next_page_token",
                    Some(&anchor),
                ));
            }
            Some(anchor)
        }
    };
    let predicates = match query {
        None => Vec::new(),
        Some(text) if text.len() > 2048 => {
            return Err(list_error(
                ApiError::field("query", "The query must not exceed 2048 characters."),
                "query",
                None,
            ))
        }
        Some(text) => {
            let registered = state
                .engine
                .search_attributes(ns)
                .await
                .map_err(ApiError::from)?;
            parse_visibility_query(text, &registered)
                .map_err(|e| list_error(ApiError::from(e), "query", after.as_ref()))?
        }
    };
    let request = ScheduleListQuery {
        status,
        workflow_type: workflow_type.map(str::to_string),
        predicates,
        page_size,
        after: after.clone(),
    };
    let page = state
        .engine
        .list_schedules(ns, &request)
        .await
        .map_err(|e| list_error(ApiError::from(e), "next_page_token", after.as_ref()))?;
    let next_page_token = page.next.map(|(c, s)| {
        let token = PageToken {
            v: 1,
            ns: ns.to_string(),
            f: digest.clone(),
            c,
            s,
        };
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(serde_json::to_vec(&token).expect("invariant: token serializes"))
    });
    let schedules: Vec<Value> = page.schedules.iter().map(schedule_json).collect();
    Ok(Reply::json(
        StatusCode::OK,
        &json!({
            "namespace": ns,
            "schedules": schedules,
            "schedule_count": schedules.len(),
            "next_page_token": next_page_token,
        }),
    ))
}
