//! The storage conformance suite: every Keel backend is held to the contract of
//! [`keel_storage`] by the same cases.
//!
//! This is an ordinary public crate, not `cfg(test)` code, so a backend in another
//! repository can run the suite too. A backend provides a [`StoreFactory`] and stamps out
//! one test per case with [`conformance_suite!`]:
//!
//! ```no_run
//! use std::sync::Arc;
//! use keel_conformance::{conformance_suite, Fixture, StoreFactory};
//! use keel_storage::{memory::MemoryStore, Result};
//!
//! struct MemoryFactory;
//!
//! impl StoreFactory for MemoryFactory {
//!     fn create(&self) -> Result<Fixture> {
//!         Ok(Fixture::ephemeral(Arc::new(MemoryStore::new())))
//!     }
//! }
//!
//! conformance_suite!(MemoryFactory);
//! # fn main() {}
//! ```
//!
//! The macro stamps every case twice, as it is and through the fault-injecting decorator
//! with delays only ([`faults::FaultyFactory`]), plus the fault-tolerance checks
//! ([`faults`]) with every fault on. A failing test names the case, the capability it
//! exercises and the contract sentence it checks ([`cases::CASES`]).
//!
//! Each case is also a plain `pub async fn` in [`cases`], taking `&dyn StoreFactory`, for
//! callers that want to run one under their own harness. Cases that depend on a
//! capability ([`keel_storage::Capabilities`], including its
//! [`EnforcedLimits`](keel_storage::EnforcedLimits)) return early, passing, where the
//! store does not declare it. Two more harnesses use the same factory: the crash harness
//! ([`crash`], for reopenable backends) and, with the `engine-model` feature, the engine
//! model check ([`engine_model`]). The porting guide is `conformance/README.md`.

#![warn(missing_docs)]

use std::any::Any;
use std::future::Future;
use std::sync::Arc;

use keel_storage::{KvStore, Result, StorageError};

pub mod cases;
pub mod crash;
#[cfg(feature = "engine-model")]
pub mod engine_model;
pub mod faults;

pub use keel_storage::{Capabilities, EnforcedLimits};

/// Where a store lives, kept opaque to the suite: the factory puts whatever it needs to
/// reopen the store in it (for example a temporary directory, which also keeps the
/// directory alive for as long as the location exists).
pub struct Location(Option<Box<dyn Any + Send + Sync>>);

impl Location {
    /// A location holding `value`.
    pub fn new<T: Any + Send + Sync>(value: T) -> Self {
        Location(Some(Box::new(value)))
    }

    /// No location: the store cannot be reopened.
    pub fn none() -> Self {
        Location(None)
    }

    /// The value the factory stored, if it has type `T`.
    pub fn get<T: Any>(&self) -> Option<&T> {
        self.0.as_ref().and_then(|v| v.downcast_ref())
    }
}

/// A freshly created store and its location.
pub struct Fixture {
    /// The store. Cases that "crash" it drop this (the only handle) without shutdown.
    pub store: Arc<dyn KvStore>,
    /// Where it lives, for [`StoreFactory::reopen`].
    pub location: Location,
}

impl Fixture {
    /// A store that cannot be reopened.
    pub fn ephemeral(store: Arc<dyn KvStore>) -> Self {
        Fixture {
            store,
            location: Location::none(),
        }
    }
}

/// How the suite gets stores of the backend under test.
pub trait StoreFactory: Send + Sync {
    /// A fresh, empty store at a new location.
    fn create(&self) -> Result<Fixture>;

    /// Opens the store at `location` again, after every handle of the previous one was
    /// dropped (a crash) or after a shutdown. Called only when the store's capabilities
    /// say `reopenable`.
    fn reopen(&self, location: &Location) -> Result<Arc<dyn KvStore>> {
        let _ = location;
        Err(StorageError::NotImplemented {
            backend: "this factory",
            operation: "StoreFactory::reopen",
        })
    }
}

/// Runs one case to completion on a fresh multi-threaded runtime (two workers, time and
/// I/O enabled), so crates using the suite need no runtime of their own.
pub fn block_on<F: Future>(case: F) -> F::Output {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("invariant: a tokio runtime can be built")
        .block_on(case)
}

/// Runs the case called `name` (one of [`cases::CASES`]) with [`block_on`]; if it panics,
/// panics again with a message naming the case, the capability it exercises, the
/// contract sentence it checks and the original failure.
pub fn run_case<F: Future<Output = ()>>(name: &str, case: F) {
    let info = cases::CASES.iter().find(|c| c.name == name);
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| block_on(case)));
    if let Err(payload) = outcome {
        let cause = payload
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| payload.downcast_ref::<&str>().copied())
            .unwrap_or("(non-text panic)");
        match info {
            Some(c) => panic!(
                "conformance case `{}` failed\n  capability: {}\n  contract:   {}\n  failure:    {cause}\n  \
                 read: the keel-storage crate docs (the contract) and conformance/README.md \
                 (what each capability means)",
                c.name, c.capability, c.contract
            ),
            None => panic!("conformance case `{name}` failed: {cause}"),
        }
    }
}

#[doc(hidden)]
#[macro_export]
macro_rules! __stamp_cases {
    ($factory:expr; $($case:ident),* $(,)?) => {
        $(
            #[test]
            fn $case() {
                let factory = $factory;
                $crate::run_case(stringify!($case), $crate::cases::$case(&factory));
            }
        )*
    };
}

/// Stamps out one `#[test]` per conformance case, named after the case, each creating its
/// stores with the given [`StoreFactory`] expression (evaluated once per test); then the
/// same cases again in a module `through_fault_decorator`, each store wrapped in the
/// fault-injecting decorator with random delays only (which reorder concurrent
/// transactions but must change no outcome), and in that module the fault-tolerance
/// checks of [`faults`] with every fault on.
///
/// Each test runs its case with [`block_on`], on its own multi-threaded tokio runtime, so
/// the calling crate needs no tokio dependency. Put the invocation in its own module (or
/// integration-test file) so the case names do not clash with other items.
///
/// ```ignore
/// keel_conformance::conformance_suite!(MyFactory::new());
/// ```
#[macro_export]
macro_rules! conformance_suite {
    ($factory:expr $(,)?) => {
        $crate::__all_cases!($factory);

        /// The same cases with every store behind the fault-injecting decorator.
        mod through_fault_decorator {
            #[allow(unused_imports)]
            use super::*;

            $crate::__all_cases!($crate::faults::FaultyFactory::new(
                $factory,
                $crate::faults::delays_only(),
            ));

            #[test]
            fn retry_runner_increments_are_exact_under_every_fault() {
                let factory = $factory;
                $crate::run_case(
                    "retry_runner_increments_are_exact_under_every_fault",
                    $crate::faults::retry_runner_increments_are_exact_under_every_fault(&factory),
                );
            }

            #[test]
            fn two_handles_increment_exactly_under_every_fault() {
                let factory = $factory;
                $crate::run_case(
                    "two_handles_increment_exactly_under_every_fault",
                    $crate::faults::two_handles_increment_exactly_under_every_fault(&factory),
                );
            }
        }
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __all_cases {
    ($factory:expr) => {
        // The one list of cases; keep it in step with the functions in `cases`.
        $crate::__stamp_cases!($factory;
            set_get_clear_round_trip,
            withdrawn_key_is_absent,
            reads_see_own_writes,
            writes_are_invisible_until_commit,
            dropped_transaction_writes_nothing,
            range_read_returns_keys_in_order_up_to_limit,
            range_read_by_prefix,
            range_read_merges_buffered_writes,
            clear_range_removes_only_keys_inside,
            atomic_add_accumulates_across_commits,
            atomic_add_after_clear_starts_from_zero,
            concurrent_atomic_adds_do_not_conflict,
            point_read_write_overlap_conflicts,
            range_read_write_overlap_conflicts,
            limited_range_read_conflicts_only_on_observed_part,
            snapshot_reads_do_not_conflict,
            blind_writes_do_not_conflict,
            add_read_conflict_makes_blind_write_conflict,
            read_only_commit_succeeds_with_version_zero,
            reads_are_consistent_or_commit_fails,
            commit_versions_increase,
            watch_fires_on_committed_write,
            watch_fires_at_once_if_changed_since_version,
            watch_fires_on_clear_range,
            entries_up_to_the_limits_are_accepted,
            oversized_key_or_value_is_rejected,
            oversized_transaction_is_rejected,
            large_value_split_across_keys_round_trips,
            concurrent_increments_through_retry_runner_are_exact,
            acknowledged_commits_survive_crash_and_reopen,
            relaxed_commits_are_ordered_visible_and_survive_a_process_crash,
            versions_stay_monotonic_across_reopen,
            shutdown_rejects_later_transactions,
        );
    };
}

#[cfg(test)]
mod tests {
    /// Every `pub async fn` case in `cases/` is stamped out by `conformance_suite!`.
    #[test]
    fn suite_macro_lists_every_case() {
        let cases = [
            include_str!("cases/basics.rs"),
            include_str!("cases/ranges.rs"),
            include_str!("cases/atomics.rs"),
            include_str!("cases/conflicts.rs"),
            include_str!("cases/watches.rs"),
            include_str!("cases/limits.rs"),
            include_str!("cases/durability.rs"),
        ]
        .concat();
        let files = std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/src/cases"))
            .expect("cases dir")
            .count();
        assert_eq!(files, 8, "a new file in cases/ must be added to this list");
        let lib = include_str!("lib.rs");
        let macro_body = &lib[lib.find("macro_rules! conformance_suite").expect("macro")..];
        for line in cases.lines() {
            let Some(rest) = line.strip_prefix("pub async fn ") else {
                continue;
            };
            let name = rest.split('(').next().expect("fn name");
            if rest.contains("factory: &dyn StoreFactory") {
                assert!(
                    macro_body.contains(&format!("{name},")),
                    "case {name} missing from the macro"
                );
                assert!(
                    crate::cases::CASES.iter().any(|c| c.name == name),
                    "case {name} missing from cases::CASES"
                );
            }
        }
        for fault_case in [
            "retry_runner_increments_are_exact_under_every_fault",
            "two_handles_increment_exactly_under_every_fault",
        ] {
            assert!(macro_body.contains(fault_case));
            assert!(crate::cases::CASES.iter().any(|c| c.name == fault_case));
        }
    }

    #[test]
    fn a_failing_case_names_itself_its_capability_and_its_contract_sentence() {
        let failure = std::panic::catch_unwind(|| {
            crate::run_case("oversized_transaction_is_rejected", async {
                panic!("expected LimitExceeded, got Ok");
            })
        })
        .expect_err("the case fails");
        let message = failure
            .downcast_ref::<String>()
            .expect("a formatted message");
        for part in [
            "conformance case `oversized_transaction_is_rejected` failed",
            "capability: limits.transaction_bytes",
            "contract:   A commit writing over MAX_TXN_BYTES fails with LimitExceeded",
            "failure:    expected LimitExceeded, got Ok",
            "conformance/README.md",
        ] {
            assert!(message.contains(part), "{part:?} missing from:\n{message}");
        }
    }
}
