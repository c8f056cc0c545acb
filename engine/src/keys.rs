//! The key registry: every table's fixed one-byte prefix and its order-preserving key
//! encoding. Strings are escaped (`00` → `00 ff`) and terminated by `00 01`, so a string
//! sorts before its extensions whatever follows it; integers are
//! big-endian (signed ones with the sign bit flipped), so byte order equals tuple order.
//!
//! Prefixes are never reused: a retired table keeps its byte reserved here.

use super::storage::KeyRange;

/// Table prefixes.
pub mod prefix {
    /// Namespaces: `(name)`.
    pub const NAMESPACE: u8 = 0x01;
    /// Workflow instances: `(namespace, workflow_id)`.
    pub const INSTANCE: u8 = 0x02;
    /// Runs: `(namespace, run_id)`.
    pub const RUN: u8 = 0x03;
    /// History events: `(namespace, run_id, sequence, chunk)`.
    pub const HISTORY: u8 = 0x04;
    /// Tasks: `(task_id)`.
    pub const TASK: u8 = 0x05;
    /// Ready tasks: `(namespace, queue, kind, priority, available_at, task_id)`.
    pub const READY: u8 = 0x06;
    /// Durable timers: `(fire_at, timer_id)`.
    pub const TIMER: u8 = 0x07;
    /// Worker registrations: `(namespace, worker_id)`.
    pub const WORKER: u8 = 0x08;
    /// Store metadata: `(name)`.
    pub const META: u8 = 0x0A;
    /// Build-id cohorts and their drain intent: `(namespace, queue, build_id)`.
    pub const COHORT: u8 = 0x0B;
    /// Per-queue task counters: `(namespace, queue, kind, counter)`.
    pub const QUEUE_COUNTER: u8 = 0x0C;
    /// Closed runs by close time (retention's index): `(namespace, closed_at, run_id)`.
    pub const CLOSED_RUN: u8 = 0x0D;
    /// Workflow list (visibility), one entry per workflow id at its current run, newest
    /// first: `(namespace, u64::MAX - started_at, bytewise-inverted run_id)`.
    pub const WORKFLOW_LIST: u8 = 0x10;
    /// Workflow counts per status bucket (atomic-add counters): `(namespace, bucket)`.
    pub const WORKFLOW_COUNT: u8 = 0x11;
    /// Workflow updates: `(namespace, run_id, update_id)`.
    pub const UPDATE: u8 = 0x18;
    /// Receipts of control-plane commands by caller `request_id`:
    /// `(namespace, workflow_id, command kind, request_id)`.
    pub const COMMAND_RECEIPT: u8 = 0x19;
    /// Signal, query and update names a workflow type declared on a queue:
    /// `(namespace, queue, workflow_type)`.
    pub const COMMAND_CONTRACT: u8 = 0x1A;
    /// Tombstones of activity tasks deleted with their closed run: `(task_id)`.
    pub const CLOSED_TASK: u8 = 0x1B;
    /// Operator deployments (a `serviceUrl` bound to worker cohorts):
    /// `(namespace, deployment_id)`.
    pub const DEPLOYMENT: u8 = 0x1C;
    /// Operator service registry (active revision of each workflow/activity type):
    /// `(namespace, kind, name)`.
    pub const SERVICE: u8 = 0x1D;
    /// The `service_url` a worker announced at registration: `(namespace, worker_id)`.
    pub const WORKER_ENDPOINT: u8 = 0x1E;
    /// Operator audit log, oldest first per namespace: `(namespace, audit_id)` (ids sort by time).
    pub const OPERATOR_AUDIT: u8 = 0x1F;
    /// Schedules (live and soft-deleted): `(namespace, schedule_id)`.
    pub const SCHEDULE: u8 = 0x20;
    /// Schedule list (visibility), newest first:
    /// `(namespace, u64::MAX - created_at, schedule_id)`.
    pub const SCHEDULE_LIST: u8 = 0x21;
    /// Schedule audit history: `(namespace, schedule_id, sequence)`.
    pub const SCHEDULE_EVENT: u8 = 0x22;
    /// Signals accepted while the run's workflow task was leased, in arrival order,
    /// held out of history until that lease ends: `(namespace, run_id, index, chunk)`.
    pub const DEFERRED_SIGNAL: u8 = 0x23;
    /// Nodes sharing the store: `("node", node_id)` liveness records, `("scheduler")` the
    /// timer-firing lease, `("timer_epoch")` the counter that announces new timers.
    pub const CLUSTER: u8 = 0x24;
    /// Service catalog endpoints: `(namespace, endpoint_name)`.
    pub const SERVICE_ENDPOINT: u8 = 0x30;
    /// Services under an endpoint: `(namespace, endpoint_name, service_name)`.
    pub const SERVICE_DEFINITION: u8 = 0x31;
    /// Operations under a service: `(namespace, endpoint_name, service_name, operation_name)`.
    pub const SERVICE_OPERATION: u8 = 0x32;
    /// Durable service calls by the operation they target:
    /// `(namespace, endpoint_name, service_name, operation_name, service_call_id)`.
    pub const SERVICE_CALL: u8 = 0x33;
    /// Webhook bridge adapters configured for a namespace: `(namespace, adapter)`.
    pub const BRIDGE_ADAPTER: u8 = 0x34;
    /// Accepted webhook bridge events by idempotency key:
    /// `(namespace, adapter, idempotency_key)`.
    pub const BRIDGE_RECEIPT: u8 = 0x35;
    /// Service calls by idempotency key:
    /// `(namespace, endpoint, service, operation, caller_namespace, idempotency_key)`.
    pub const SERVICE_CALL_KEY: u8 = 0x36;
    /// Open service calls by the run that carries them out (a `start_workflow`
    /// binding's linked run): `(namespace, run_id, service_call_id)` → the call's key.
    pub const SERVICE_CALL_BY_RUN: u8 = 0x3C;
    /// Open service calls a workflow waits on: `(caller_namespace, caller_run_id,
    /// service_call_id)` → the call's key.
    pub const SERVICE_CALL_BY_CALLER: u8 = 0x3D;
    /// Open service calls carried out by an update (an `update_workflow` binding):
    /// `(namespace, run_id, update_id, service_call_id)` → the call's key.
    pub const SERVICE_CALL_BY_UPDATE: u8 = 0x3E;
    /// Namespaces where an entry of the three service-call indexes above was ever
    /// written: `(namespace)`, empty value. A run or update closing in a namespace
    /// without it has no index to scan.
    pub const SERVICE_CALL_NAMESPACE: u8 = 0x3F;
    /// External payloads stored through the runtime transport (the record naming the
    /// blob, its integrity metadata and where it lives): `(namespace, reference_id)`.
    pub const PAYLOAD: u8 = 0x40;
    /// Runs whose history references a payload: `(namespace, reference_id, run_id)`.
    pub const PAYLOAD_USE: u8 = 0x41;
    /// Payloads a run's history references (retention's index):
    /// `(namespace, run_id, reference_id)`.
    pub const RUN_PAYLOAD: u8 = 0x42;
    /// The build id a queue's fresh starts are pinned to (its promoted deployment):
    /// `(namespace, queue)`.
    pub const NEW_START_BUILD: u8 = 0x48;
    /// Worker sessions (a worker-held lease that activities are routed by):
    /// `(namespace, session_id)`.
    pub const WORKER_SESSION: u8 = 0x49;
    /// Open activity tasks scheduled with a worker session:
    /// `(namespace, session_id, task_id)`, empty values.
    pub const WORKER_SESSION_TASK: u8 = 0x4A;
    /// The control-plane audit trail, oldest first per scope: `(scope, audit_id)`, the
    /// scope a namespace or [`crate::operator::SYSTEM_AUDIT_SCOPE`].
    pub const AUDIT_TRAIL: u8 = 0x4B;
}

/// The table a prefix byte names (the constant's name in lower case), for reports such
/// as `keel storage check`; `None` for a byte no table uses.
pub fn table_name(prefix_byte: u8) -> Option<&'static str> {
    Some(match prefix_byte {
        prefix::NAMESPACE => "namespace",
        prefix::INSTANCE => "instance",
        prefix::RUN => "run",
        prefix::HISTORY => "history",
        prefix::TASK => "task",
        prefix::READY => "ready",
        prefix::TIMER => "timer",
        prefix::WORKER => "worker",
        prefix::META => "meta",
        prefix::COHORT => "cohort",
        prefix::QUEUE_COUNTER => "queue_counter",
        prefix::CLOSED_RUN => "closed_run",
        prefix::WORKFLOW_LIST => "workflow_list",
        prefix::WORKFLOW_COUNT => "workflow_count",
        prefix::UPDATE => "update",
        prefix::COMMAND_RECEIPT => "command_receipt",
        prefix::COMMAND_CONTRACT => "command_contract",
        prefix::CLOSED_TASK => "closed_task",
        prefix::DEPLOYMENT => "deployment",
        prefix::SERVICE => "service",
        prefix::WORKER_ENDPOINT => "worker_endpoint",
        prefix::OPERATOR_AUDIT => "operator_audit",
        prefix::SCHEDULE => "schedule",
        prefix::SCHEDULE_LIST => "schedule_list",
        prefix::SCHEDULE_EVENT => "schedule_event",
        prefix::DEFERRED_SIGNAL => "deferred_signal",
        prefix::CLUSTER => "cluster",
        prefix::SERVICE_ENDPOINT => "service_endpoint",
        prefix::SERVICE_DEFINITION => "service_definition",
        prefix::SERVICE_OPERATION => "service_operation",
        prefix::SERVICE_CALL => "service_call",
        prefix::BRIDGE_ADAPTER => "bridge_adapter",
        prefix::BRIDGE_RECEIPT => "bridge_receipt",
        prefix::SERVICE_CALL_KEY => "service_call_key",
        prefix::SERVICE_CALL_BY_RUN => "service_call_by_run",
        prefix::SERVICE_CALL_BY_CALLER => "service_call_by_caller",
        prefix::SERVICE_CALL_BY_UPDATE => "service_call_by_update",
        prefix::SERVICE_CALL_NAMESPACE => "service_call_namespace",
        prefix::PAYLOAD => "payload",
        prefix::PAYLOAD_USE => "payload_use",
        prefix::RUN_PAYLOAD => "run_payload",
        prefix::NEW_START_BUILD => "new_start_build",
        prefix::WORKER_SESSION => "worker_session",
        prefix::WORKER_SESSION_TASK => "worker_session_task",
        prefix::AUDIT_TRAIL => "audit_trail",
        _ => return None,
    })
}

/// Builds a key field by field.
#[derive(Debug, Clone)]
pub struct Key(Vec<u8>);

impl Key {
    /// A key in table `prefix`.
    pub fn new(prefix: u8) -> Self {
        let mut v = Vec::with_capacity(48);
        v.push(prefix);
        Key(v)
    }

    /// Appends an escaped, terminated string.
    pub fn str(mut self, s: &str) -> Self {
        // Copied in runs between zero bytes (ids and names rarely hold one).
        let mut rest = s.as_bytes();
        while let Some(zero) = rest.iter().position(|&b| b == 0) {
            self.0.extend_from_slice(&rest[..=zero]);
            self.0.push(0xff);
            rest = &rest[zero + 1..];
        }
        self.0.extend_from_slice(rest);
        self.0.extend_from_slice(&[0, 1]);
        self
    }

    /// Appends a big-endian unsigned integer.
    pub fn u64(mut self, n: u64) -> Self {
        self.0.extend_from_slice(&n.to_be_bytes());
        self
    }

    /// Appends a signed integer, ordered.
    pub fn i64(self, n: i64) -> Self {
        self.u64((n as u64) ^ (1 << 63))
    }

    /// Appends one byte.
    pub fn u8(mut self, n: u8) -> Self {
        self.0.push(n);
        self
    }

    /// Appends a big-endian `u16`.
    pub fn u16(mut self, n: u16) -> Self {
        self.0.extend_from_slice(&n.to_be_bytes());
        self
    }

    /// The encoded bytes.
    pub fn into_bytes(self) -> Vec<u8> {
        self.0
    }

    /// Every key that extends this one.
    pub fn range(&self) -> KeyRange {
        KeyRange::prefix(&self.0)
    }
}

/// Reads fields back out of an encoded key.
pub struct KeyReader<'a> {
    rest: &'a [u8],
}

impl<'a> KeyReader<'a> {
    /// Starts after the one-byte table prefix.
    pub fn new(key: &'a [u8]) -> Self {
        KeyReader {
            rest: key.get(1..).unwrap_or_default(),
        }
    }

    /// Reads an escaped string.
    pub fn str(&mut self) -> Option<String> {
        let mut out = Vec::new();
        let mut i = 0;
        while i < self.rest.len() {
            let b = self.rest[i];
            if b == 0 {
                match self.rest.get(i + 1) {
                    Some(&0xff) => {
                        out.push(0);
                        i += 2;
                        continue;
                    }
                    Some(&1) => {
                        self.rest = &self.rest[i + 2..];
                        return String::from_utf8(out).ok();
                    }
                    _ => return None,
                }
            }
            out.push(b);
            i += 1;
        }
        None
    }

    /// Reads a big-endian `u64`.
    pub fn u64(&mut self) -> Option<u64> {
        let bytes: [u8; 8] = self.rest.get(..8)?.try_into().ok()?;
        self.rest = &self.rest[8..];
        Some(u64::from_be_bytes(bytes))
    }

    /// Reads an ordered `i64`.
    pub fn i64(&mut self) -> Option<i64> {
        self.u64().map(|n| (n ^ (1 << 63)) as i64)
    }

    /// Reads one byte.
    pub fn u8(&mut self) -> Option<u8> {
        let b = *self.rest.first()?;
        self.rest = &self.rest[1..];
        Some(b)
    }
}

#[cfg(test)]
mod tests {
    use super::{table_name, Key, KeyReader};
    use proptest::prelude::*;

    #[test]
    fn every_key_prefix_is_registered_once_with_its_own_byte() {
        let source = include_str!("keys.rs");
        let module = &source[source.find("pub mod prefix {").expect("prefix module")..];
        let module = &module[..module.find("\n}").expect("end of the prefix module")];
        let mut seen = std::collections::BTreeMap::new();
        for line in module.lines().map(str::trim) {
            let Some(decl) = line.strip_prefix("pub const ") else {
                continue;
            };
            let (name, value) = decl.split_once(": u8 = ").expect("`NAME: u8 = 0x..;`");
            let byte = u8::from_str_radix(value.trim_end_matches(';').trim_start_matches("0x"), 16)
                .expect("a hex byte");
            if let Some(other) = seen.insert(byte, name) {
                panic!("prefix {byte:#04x} is used by both {other} and {name}");
            }
            assert_eq!(
                table_name(byte),
                Some(name.to_ascii_lowercase().as_str()),
                "table_name lacks prefix {name}"
            );
        }
        assert!(seen.len() > 20, "the parser found the prefixes: {seen:?}");
    }

    proptest! {
        #[test]
        fn string_and_integer_encoding_preserves_tuple_order(a in ".*", b in ".*", x in any::<i64>(), y in any::<i64>()) {
            let ka = Key::new(1).str(&a).i64(x).into_bytes();
            let kb = Key::new(1).str(&b).i64(y).into_bytes();
            prop_assert_eq!(ka.cmp(&kb), (a.as_bytes(), x).cmp(&(b.as_bytes(), y)));
            let mut r = KeyReader::new(&ka);
            prop_assert_eq!(r.str(), Some(a));
            prop_assert_eq!(r.i64(), Some(x));
        }

        #[test]
        fn strings_with_zero_bytes_keep_their_order_and_read_back(a in "[\\x00\\x01a]{0,8}", b in "[\\x00\\x01a]{0,8}") {
            let ka = Key::new(1).str(&a).u8(7).into_bytes();
            let kb = Key::new(1).str(&b).u8(7).into_bytes();
            prop_assert_eq!(ka.cmp(&kb), a.as_bytes().cmp(b.as_bytes()));
            prop_assert_eq!(KeyReader::new(&ka).str(), Some(a));
        }
    }
}
