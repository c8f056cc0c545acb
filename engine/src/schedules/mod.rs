//! Schedules: start a workflow on a calendar (cron, intervals, time zones, bounds), with
//! an overlap policy, jitter, a run limit and an audit history.
//!
//! **Firing is a durable timer.** An active schedule holds exactly one
//! [`crate::model::TimerAction::ScheduleFire`] row, named by `ScheduleRecord::fire_timer` (a timer the
//! record no longer names is stale and does nothing). The timer's transaction deletes the
//! row, starts the workflow (or skips or buffers it), records the audit event and arms the
//! next timer, all at once: a crash before the commit fires it again after restart, a crash
//! after it never does. The workflow id of an occurrence is deterministic,
//! `{schedule_id}-{occurrence time}`, so even a fire applied twice by two paths (a timer
//! and a backfill of the same window) starts one run.
//!
//! **Catch-up after downtime** (`fire_once_on_resume_then_skip_remaining_missed`): when a
//! timer fires late, every occurrence due by now is collapsed into one fire of the latest,
//! provided it is no older than the catch-up window (`catchup_window_seconds`, default
//! [`DEFAULT_CATCHUP_WINDOW_SECONDS`]); the others are recorded as one
//! `ScheduleTriggerSkipped` with `skipped_trigger_count`. Resume computes the next fire
//! from the resume time, with no catch-up of the paused window.
//!
//! **Overlap** is judged against the runs this schedule started that are still open
//! (their current run, through continue-as-new): `skip` drops the fire, `buffer_one` keeps
//! at most one waiting fire, `buffer_all` keeps up to [`MAX_BUFFER`], `allow_all` starts
//! regardless, `cancel_other` / `terminate_other` close the open runs (the engine's one
//! cancel/terminate path, in the same transaction) and then start. A buffered fire starts
//! when the last open run closes: closing a scheduled run arms a
//! [`crate::model::TimerAction::ScheduleRunClosed`] timer for its schedule.
//!
//! **Jitter** delays each fire by a pseudo-random `0..=jitter_seconds` derived from the
//! schedule and the occurrence (so a re-computation agrees), at most half the gap to the
//! next occurrence; the workflow id keeps the nominal time.
//!
//! Started runs carry the search attributes `DurableWorkflowScheduleId` and
//! `DurableWorkflowScheduledStartTime` (system attributes) besides the schedule's own.

mod firing;
mod input;
mod record;
mod render;
mod service;
pub mod spec;
mod visibility;

pub(crate) use firing::fire;
pub use firing::occurrence_workflow_id;
pub(crate) use firing::on_run_closed;
pub(crate) use firing::run_closed;
pub use input::{parse_instant, ScheduleInput, SchedulePatch, MAX_MEMO_BYTES};
pub use record::{
    ActionRecord, BackfillFire, BackfillResult, BufferedFire, FireOutcome, HistoryPage,
    OverlapPolicy, RecentAction, RequestReceipt, ScheduleListPage, ScheduleListQuery,
    ScheduleRecord, ScheduleStatus, StoredFire, TriggerKind, TriggerResult,
};
pub use render::{action_json, future_action_times, spec_json};
pub use visibility::parse_visibility_query;

/// Search attribute naming the schedule that started a run.
pub const SCHEDULE_ID_ATTRIBUTE: &str = "DurableWorkflowScheduleId";
/// Search attribute holding the nominal occurrence time a scheduled run stands for.
pub const SCHEDULED_START_ATTRIBUTE: &str = "DurableWorkflowScheduledStartTime";
/// Default catch-up window: after downtime, the latest missed occurrence still fires if it
/// is at most this old.
pub const DEFAULT_CATCHUP_WINDOW_SECONDS: u64 = 3600;
/// Most fires a `buffer_all` schedule keeps waiting.
pub const MAX_BUFFER: usize = 1000;
/// Most occurrences one backfill may cover.
pub const MAX_BACKFILL_FIRES: usize = 1000;
/// Task queue of an action that names none.
pub const DEFAULT_TASK_QUEUE: &str = "default";
/// Most page entries of a schedule list.
pub const MAX_LIST_PAGE: usize = 200;
/// Most events of one history page.
pub const MAX_HISTORY_PAGE: usize = 500;
/// Recent actions kept on the record for `describe`.
const RECENT_ACTIONS: usize = 10;
/// Open runs of an `allow_all` schedule tracked for overlap (older ones are forgotten).
const MAX_TRACKED_RUNS: usize = 100;
/// Counting of missed occurrences stops here (the skip event says "at least").
const MISSED_COUNT_CAP: usize = 10_000;
/// Occurrences started per backfill transaction.
const BACKFILL_BATCH: usize = 25;
/// Upcoming fire times shown by `describe`.
const FUTURE_ACTION_TIMES: usize = 5;
