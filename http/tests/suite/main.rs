//! The HTTP crate's integration tests, one module per concern, in one test binary (one
//! link of the whole server instead of one per file: CI builds every test binary cold).
//! `connection_limits` stays a binary of its own: it lowers its process's descriptor limit.
//! `common` serves Keel in process; `process` runs the real binary.

mod common;
mod process;

mod activities;
mod audit_trail;
mod auth_matrix;
mod bench_command;
mod console;
mod contract_deviations;
mod deployments;
mod external_payloads;
mod imports;
mod layering;
mod multi_node;
mod namespace_isolation;
mod operations;
mod operator_routes;
mod rate_limits;
mod schedules;
mod server_builder;
mod services;
mod sessions;
mod storage_check;
mod storage_flag;
mod storage_transfer;
mod tls;
mod token_reload;
mod worker_threads;
