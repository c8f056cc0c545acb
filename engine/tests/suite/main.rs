//! The engine's integration tests, one module per concern, in one test binary (one link
//! instead of one per file: CI builds every test binary cold). `loom_matching` stays a
//! binary of its own: it builds only under `--cfg loom`.

mod support;

mod census;
mod chaos;
mod cluster;
mod deployments;
mod eager_leases;
mod lease_timers;
mod limits;
mod lost_leases;
mod messages_and_waits;
mod operator;
mod page_tokens;
mod payloads;
mod queue_counts;
mod record_codec;
mod run_lifecycle;
mod schedules;
mod services;
mod sessions;
mod transfer;
mod workflow_semantics;
