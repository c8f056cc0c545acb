//! The conformance suite against a real FoundationDB cluster (`KEEL_FDB_CLUSTER_FILE`),
//! each store in a fresh subspace deleted when its test ends. Without the variable every
//! case passes at once and one line says they were skipped.
#![cfg(feature = "fdb")]

mod common;

use common::FdbFactory;
use keel_conformance::conformance_suite;

// The factory expression runs first in each stamped test: without a cluster it returns
// from the test before the case starts.
conformance_suite!(match FdbFactory::from_env() {
    Some(factory) => factory,
    None => return,
});
