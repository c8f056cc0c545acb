//! Runs the external work of a leased service-call attempt (`invocable_http`: one HTTP
//! request; `query_workflow`: one query through the query path) outside any transaction,
//! then records its outcome with `services::finish_dispatch`. A crash before that leaves
//! the attempt's lease timer, which redelivers it: at-least-once, the call id the
//! request's `Idempotency-Key`.

use crate::avro::{envelope, AvroValue};
use crate::error::Error;
use crate::queries::QueryRequest;
use crate::services::outbound::{host_allowed, parse_http_url, send, HttpResponse};
use crate::services::{Dispatch, DispatchOutcome, DispatchWork, HOST_NOT_ALLOWED};

use crate::kernel::Engine;

/// Query failures another attempt may cure (no worker answered, or none was there).
const TRANSIENT_QUERY_REASONS: &[&str] = &[
    "query_worker_timeout",
    "query_worker_unavailable",
    "query_task_queue_full",
];

impl Engine {
    pub(super) async fn run_dispatch(&self, d: Dispatch) {
        let outcome = match &d.work {
            DispatchWork::Http {
                url,
                method,
                headers,
                body,
                timeout,
            } => {
                self.http_attempt(url, method, headers, body, *timeout)
                    .await
            }
            DispatchWork::Query {
                workflow_id,
                run_id,
                query_name,
                input,
                timeout,
            } => {
                let req = QueryRequest {
                    workflow_id: workflow_id.clone(),
                    run_id: run_id.clone(),
                    query_name: query_name.clone(),
                    input: input.clone(),
                    timeout: *timeout,
                };
                query_outcome(self.query_workflow(&d.namespace, &req).await)
            }
        };
        let (d, outcome) = (&d, &outcome);
        let recorded = self
            .transact(move |tx| {
                Box::pin(async move {
                    let now = tx.now;
                    let (txn, fx) = (tx.txn.as_mut(), &mut tx.fx);
                    crate::services::finish_dispatch(txn, d, outcome.clone(), now, fx).await
                })
            })
            .await;
        if let Err(e) = recorded {
            // The lease timer redelivers the attempt.
            tracing::warn!(
                service_call_id = %d.service_call_id,
                attempt = d.attempt,
                error = %e,
                "recording a service call attempt failed; it will be retried when its lease lapses"
            );
        }
    }

    async fn http_attempt(
        &self,
        url: &str,
        method: &str,
        headers: &[(String, String)],
        body: &[u8],
        timeout: std::time::Duration,
    ) -> DispatchOutcome {
        // The allow-list is checked again here: it may have changed since admission.
        let target = match parse_http_url(url) {
            Ok(t) => t,
            Err(why) => {
                return DispatchOutcome::Failed {
                    reason: "invocable_http_url_invalid".into(),
                    message: why,
                    retryable: false,
                }
            }
        };
        if !host_allowed(&self.inner.config.service_http.allow, &target) {
            return DispatchOutcome::Failed {
                reason: HOST_NOT_ALLOWED.into(),
                message: format!(
                    "{} is not on this server's --service-http-allow list",
                    target.authority
                ),
                retryable: false,
            };
        }
        match send(&target, method, headers, body, timeout).await {
            Err(why) => DispatchOutcome::Failed {
                reason: "invocable_http_unreachable".into(),
                message: why,
                retryable: true,
            },
            Ok(r) => http_outcome(r),
        }
    }
}

/// 2xx: completed with the body as the result (JSON decoded when it says it is JSON,
/// else a string, else bytes; empty: null). 4xx: failed, not retried. 5xx and anything
/// else: failed, retried under the retry policy. Messages name the status, never the
/// body.
fn http_outcome(r: HttpResponse) -> DispatchOutcome {
    match r.status {
        200..=299 => {
            let json = r
                .content_type
                .as_deref()
                .is_some_and(|t| t.contains("json"));
            let value = if r.body.is_empty() {
                AvroValue::Null
            } else if let Some(v) = json
                .then(|| serde_json::from_slice::<serde_json::Value>(&r.body).ok())
                .flatten()
            {
                AvroValue::from_json(&v)
            } else {
                match String::from_utf8(r.body) {
                    Ok(text) => AvroValue::String(text),
                    Err(e) => AvroValue::Bytes(e.into_bytes()),
                }
            };
            DispatchOutcome::Completed(envelope(&value))
        }
        400..=499 => DispatchOutcome::Failed {
            reason: "invocable_http_client_error".into(),
            message: format!("the endpoint answered HTTP {}", r.status),
            retryable: false,
        },
        status => DispatchOutcome::Failed {
            reason: "invocable_http_server_error".into(),
            message: format!("the endpoint answered HTTP {status}"),
            retryable: true,
        },
    }
}

fn query_outcome(r: crate::error::Result<crate::queries::QueryAnswer>) -> DispatchOutcome {
    match r {
        Ok(answer) => DispatchOutcome::Completed(if answer.result_envelope.is_object() {
            answer.result_envelope
        } else {
            envelope(&AvroValue::from_json(&answer.result))
        }),
        Err(Error::Rejected {
            reason, message, ..
        }) => DispatchOutcome::Failed {
            reason: reason.to_string(),
            message,
            retryable: TRANSIENT_QUERY_REASONS.contains(&reason),
        },
        Err(e) => DispatchOutcome::Failed {
            reason: "query_unavailable".into(),
            message: e.to_string(),
            retryable: true,
        },
    }
}
