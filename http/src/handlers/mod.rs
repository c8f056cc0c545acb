//! Route handlers, one module per family, and [`handle`]: the one exhaustive map from
//! every [`Op`] to its family. It has no `_` arm, so an `Op` added to the router without
//! a handler does not compile. Inside a family, an op the family does not know is a
//! server bug ([`unrouted`]), never a 404 a client could mistake for a missing object.

pub(crate) mod activities;
pub(crate) mod bridge;
pub(crate) mod commands;
pub(crate) mod control;
pub(crate) mod deployments;
pub(crate) mod fleet;
pub(crate) mod imports;
pub(crate) mod namespaces;
pub(crate) mod operator;
pub(crate) mod payloads;
pub(crate) mod probes;
pub(crate) mod query_tasks;
pub(crate) mod reads;
pub(crate) mod schedules;
pub(crate) mod services;
pub(crate) mod sessions;
pub(crate) mod system;
pub(crate) mod worker;

use hyper::StatusCode;

use crate::call::{AppState, Call, Reply};
use crate::error::ApiError;
use crate::router::Op;

/// Runs `op`'s handler.
pub async fn handle(state: &AppState, op: Op, call: Call) -> Result<Reply, ApiError> {
    match op {
        Op::Health | Op::Ready | Op::ClusterInfo | Op::PrometheusMetrics => {
            probes::handle(state, op, call).await
        }
        Op::ListNamespaces
        | Op::CreateNamespace
        | Op::DescribeNamespace
        | Op::UpdateNamespace
        | Op::SetNamespaceExternalStorage
        | Op::ListSearchAttributes
        | Op::CreateSearchAttribute
        | Op::DeleteSearchAttribute => namespaces::handle(state, op, call).await,
        Op::SystemHealth
        | Op::SystemMetrics
        | Op::SystemOperatorMetrics
        | Op::SystemRepair
        | Op::SystemRepairPass
        | Op::SystemActivityTimeouts
        | Op::SystemActivityTimeoutsPass
        | Op::SystemRetention
        | Op::SystemRetentionPass => system::handle(state, op, call).await,
        Op::ListSchedules
        | Op::CreateSchedule
        | Op::DescribeSchedule
        | Op::UpdateSchedule
        | Op::DeleteSchedule
        | Op::PauseSchedule
        | Op::ResumeSchedule
        | Op::TriggerSchedule
        | Op::BackfillSchedule
        | Op::ScheduleHistory => schedules::handle(state, op, call).await,
        Op::StartWorkflow | Op::DescribeWorkflow | Op::DescribeRun | Op::RunHistory => {
            control::handle(state, op, call).await
        }
        Op::SignalWorkflow
        | Op::SignalRun
        | Op::QueryWorkflow
        | Op::QueryRun
        | Op::UpdateWorkflow
        | Op::UpdateRun
        | Op::CancelWorkflow
        | Op::CancelRun
        | Op::TerminateWorkflow
        | Op::TerminateRun => commands::handle(state, op, call).await,
        Op::ListWorkflows
        | Op::ListRuns
        | Op::ExportRunHistory
        | Op::DebugWorkflow
        | Op::DebugRun
        | Op::RepairWorkflow
        | Op::RepairRun
        | Op::ArchiveWorkflow
        | Op::ArchiveRun => reads::handle(state, op, call).await,
        Op::ListWorkers
        | Op::DescribeWorker
        | Op::DeleteWorker
        | Op::ListTaskQueues
        | Op::DescribeTaskQueue
        | Op::ListBuildIds
        | Op::DrainBuildId
        | Op::ResumeBuildId => fleet::handle(state, op, call).await,
        Op::PromoteBuildId
        | Op::ListDeployments
        | Op::DescribeDeployment
        | Op::PromoteDeployment
        | Op::DrainDeployment
        | Op::ResumeDeployment
        | Op::RollbackDeployment => deployments::handle(state, op, call).await,
        Op::ImportEmbeddedV2 => imports::handle(state, op, call).await,
        Op::StartActivity | Op::ListActivities | Op::DescribeActivity => {
            activities::handle(state, op, call).await
        }
        Op::CreateWorkerSession
        | Op::HeartbeatWorkerSession
        | Op::CloseWorkerSession
        | Op::ListWorkerSessions
        | Op::DescribeWorkerSession => sessions::handle(state, op, call).await,
        Op::PollQueryTask | Op::CompleteQueryTask | Op::FailQueryTask => {
            query_tasks::handle(state, op, call).await
        }
        Op::RegisterWorker
        | Op::HeartbeatWorker
        | Op::DeregisterWorker
        | Op::PollWorkflowTask
        | Op::WorkflowTaskHistory
        | Op::HeartbeatWorkflowTask
        | Op::CompleteWorkflowTask
        | Op::FailWorkflowTask
        | Op::PollActivityTask
        | Op::HeartbeatActivityTask
        | Op::CompleteActivityTask
        | Op::FailActivityTask => worker::handle(state, op, call).await,
        Op::OperatorDoctor
        | Op::OperatorForceRedeploy
        | Op::OperatorCleanupStaleDeployments
        | Op::OperatorRecoverStuckWorkflow
        | Op::OperatorAudit
        | Op::AuditTrail => operator::handle(state, op, call).await,
        Op::ListServiceEndpoints
        | Op::CreateServiceEndpoint
        | Op::DescribeServiceEndpoint
        | Op::UpdateServiceEndpoint
        | Op::DeleteServiceEndpoint
        | Op::ListServices
        | Op::CreateService
        | Op::DescribeService
        | Op::UpdateService
        | Op::DeleteService
        | Op::ListOperations
        | Op::CreateOperation
        | Op::DescribeOperation
        | Op::UpdateOperation
        | Op::DeleteOperation => services::handle(state, op, call).await,
        Op::ExecuteOperation | Op::DescribeServiceCall | Op::CancelServiceCall => {
            services::handle_calls(state, op, call).await
        }
        Op::BridgeWebhook
        | Op::ListBridgeAdapters
        | Op::DescribeBridgeAdapter
        | Op::PutBridgeAdapter
        | Op::DeleteBridgeAdapter => bridge::handle(state, op, call).await,
        Op::UploadExternalPayload | Op::FetchExternalPayload | Op::StorageTest => {
            payloads::handle(state, op, call).await
        }
    }
}

/// The answer of a family's handler to an op [`handle`] did not send it: a server bug.
pub(crate) fn unrouted(op: Op) -> ApiError {
    ApiError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "route_without_handler",
        format!("no handler for {}", op.name()),
    )
}
