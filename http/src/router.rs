//! A small explicit router: a table of routes, each with its method, path pattern,
//! plane (which decides the version header it requires) and access (the role it
//! requires). Path segments are percent-decoded before matching, since the SDK encodes
//! ids inconsistently.
//!
//! **Access** defaults from the plane ([`Plane::default_access`]): public routes need no
//! token, discovery any role, control-plane routes `operator` (or `admin`), worker routes
//! `worker`. A route that needs something else names it as a fifth argument:
//! `route!(POST, [L("namespaces")], Control, CreateNamespace, Admin)`.
//!
//! The bootstrap gate and the topology gate ([`policy`]) are derived from the plane and
//! the path, so a new route is gated like its family without extra declarations.

use hyper::Method;

/// Which contract a route belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plane {
    /// Health and readiness: no headers required.
    Public,
    /// Discovery: answers either plane's headers, requires neither.
    Discovery,
    /// Control plane: `X-Durable-Workflow-Control-Plane-Version: 2`.
    Control,
    /// Worker plane: `X-Durable-Workflow-Protocol-Version: 1.x`.
    Worker,
}

impl Plane {
    /// The access a route of this plane requires unless it names another.
    pub fn default_access(self) -> Access {
        match self {
            Plane::Public => Access::Public,
            Plane::Discovery => Access::Any,
            Plane::Control => Access::Operator,
            Plane::Worker => Access::Worker,
        }
    }
}

/// The role a route requires.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// No token needed (health, readiness).
    Public,
    /// Any valid token.
    Any,
    /// The `worker` role.
    Worker,
    /// `operator` or `admin`.
    Operator,
    /// `admin`.
    Admin,
}

/// The operations Keel serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    Health,
    Ready,
    ClusterInfo,
    PrometheusMetrics,
    ListNamespaces,
    CreateNamespace,
    DescribeNamespace,
    UpdateNamespace,
    SetNamespaceExternalStorage,
    ListSearchAttributes,
    CreateSearchAttribute,
    DeleteSearchAttribute,
    SystemHealth,
    SystemMetrics,
    SystemOperatorMetrics,
    SystemRepair,
    SystemRepairPass,
    SystemActivityTimeouts,
    SystemActivityTimeoutsPass,
    SystemRetention,
    SystemRetentionPass,
    ListSchedules,
    CreateSchedule,
    DescribeSchedule,
    UpdateSchedule,
    DeleteSchedule,
    PauseSchedule,
    ResumeSchedule,
    TriggerSchedule,
    BackfillSchedule,
    ScheduleHistory,
    StartWorkflow,
    ListWorkflows,
    ListRuns,
    ExportRunHistory,
    DebugWorkflow,
    DebugRun,
    RepairWorkflow,
    RepairRun,
    ArchiveWorkflow,
    ArchiveRun,
    DescribeWorkflow,
    DescribeRun,
    RunHistory,
    SignalWorkflow,
    SignalRun,
    QueryWorkflow,
    QueryRun,
    UpdateWorkflow,
    UpdateRun,
    CancelWorkflow,
    CancelRun,
    TerminateWorkflow,
    TerminateRun,
    PollQueryTask,
    CompleteQueryTask,
    FailQueryTask,
    RegisterWorker,
    HeartbeatWorker,
    DeregisterWorker,
    PollWorkflowTask,
    WorkflowTaskHistory,
    HeartbeatWorkflowTask,
    CompleteWorkflowTask,
    FailWorkflowTask,
    PollActivityTask,
    HeartbeatActivityTask,
    CompleteActivityTask,
    FailActivityTask,
    CreateWorkerSession,
    HeartbeatWorkerSession,
    CloseWorkerSession,
    ListWorkerSessions,
    DescribeWorkerSession,
    ListWorkers,
    DescribeWorker,
    DeleteWorker,
    ListTaskQueues,
    DescribeTaskQueue,
    ListBuildIds,
    DrainBuildId,
    ResumeBuildId,
    PromoteBuildId,
    ListDeployments,
    StartActivity,
    ListActivities,
    DescribeActivity,
    ImportEmbeddedV2,
    DescribeDeployment,
    PromoteDeployment,
    DrainDeployment,
    ResumeDeployment,
    RollbackDeployment,
    OperatorDoctor,
    OperatorForceRedeploy,
    OperatorCleanupStaleDeployments,
    OperatorRecoverStuckWorkflow,
    OperatorAudit,
    AuditTrail,
    ListServiceEndpoints,
    CreateServiceEndpoint,
    DescribeServiceEndpoint,
    UpdateServiceEndpoint,
    DeleteServiceEndpoint,
    ListServices,
    CreateService,
    DescribeService,
    UpdateService,
    DeleteService,
    ListOperations,
    CreateOperation,
    DescribeOperation,
    UpdateOperation,
    DeleteOperation,
    ExecuteOperation,
    DescribeServiceCall,
    CancelServiceCall,
    BridgeWebhook,
    ListBridgeAdapters,
    DescribeBridgeAdapter,
    PutBridgeAdapter,
    DeleteBridgeAdapter,
    UploadExternalPayload,
    FetchExternalPayload,
    StorageTest,
}

#[derive(Debug, Clone, Copy)]
enum Seg {
    Lit(&'static str),
    Param,
}

use Seg::{Lit as L, Param as P};

struct Route {
    method: Method,
    path: &'static [Seg],
    plane: Plane,
    op: Op,
    access: Access,
    /// Served at `/{path}` instead of `/api/{path}` (`/metrics`).
    root: bool,
}

macro_rules! route {
    ($method:ident, [$($seg:expr),*], $plane:ident, $op:ident) => {
        Route {
            method: Method::$method,
            path: &[$($seg),*],
            plane: Plane::$plane,
            op: Op::$op,
            access: Plane::$plane.default_access(),
            root: false,
        }
    };
    ($method:ident, [$($seg:expr),*], $plane:ident, $op:ident, $access:ident) => {
        Route {
            method: Method::$method,
            path: &[$($seg),*],
            plane: Plane::$plane,
            op: Op::$op,
            access: Access::$access,
            root: false,
        }
    };
}

fn routes() -> &'static [Route] {
    static ROUTES: std::sync::OnceLock<Vec<Route>> = std::sync::OnceLock::new();
    ROUTES.get_or_init(|| {
        vec![
            route!(GET, [L("health")], Public, Health),
            route!(GET, [L("ready")], Public, Ready),
            route!(GET, [L("workers")], Control, ListWorkers),
            // Worker sessions (`keel_engine::sessions`): operator reads.
            route!(GET, [L("worker-sessions")], Control, ListWorkerSessions),
            route!(
                GET,
                [L("worker-sessions"), P],
                Control,
                DescribeWorkerSession
            ),
            route!(GET, [L("workers"), P], Control, DescribeWorker),
            route!(DELETE, [L("workers"), P], Control, DeleteWorker, Admin),
            route!(GET, [L("task-queues")], Control, ListTaskQueues),
            route!(GET, [L("task-queues"), P], Control, DescribeTaskQueue),
            route!(
                GET,
                [L("task-queues"), P, L("build-ids")],
                Control,
                ListBuildIds
            ),
            route!(
                POST,
                [L("task-queues"), P, L("build-ids"), L("drain")],
                Control,
                DrainBuildId
            ),
            route!(
                POST,
                [L("task-queues"), P, L("build-ids"), L("resume")],
                Control,
                ResumeBuildId
            ),
            route!(
                POST,
                [L("task-queues"), P, L("build-ids"), L("promote")],
                Control,
                PromoteBuildId
            ),
            // Worker deployments: `{name}` is `namespace/task_queue@build_id`, its `/`
            // percent-encoded.
            route!(GET, [L("deployments")], Control, ListDeployments),
            route!(GET, [L("deployments"), P], Control, DescribeDeployment),
            route!(
                POST,
                [L("deployments"), P, L("promote")],
                Control,
                PromoteDeployment
            ),
            route!(
                POST,
                [L("deployments"), P, L("drain")],
                Control,
                DrainDeployment
            ),
            route!(
                POST,
                [L("deployments"), P, L("resume")],
                Control,
                ResumeDeployment
            ),
            route!(
                POST,
                [L("deployments"), P, L("rollback")],
                Control,
                RollbackDeployment
            ),
            // The operator recovery surface (`crate::operator`): its version is in the
            // path, so the control-plane header is optional (a wrong one is still a 400,
            // as on discovery); the operator role is required (admin included).
            route!(
                POST,
                [
                    L("v2"),
                    L("admin"),
                    L("operator"),
                    L("restate"),
                    L("doctor")
                ],
                Discovery,
                OperatorDoctor,
                Operator
            ),
            route!(
                POST,
                [
                    L("v2"),
                    L("admin"),
                    L("operator"),
                    L("restate"),
                    L("force-redeploy")
                ],
                Discovery,
                OperatorForceRedeploy,
                Operator
            ),
            route!(
                POST,
                [
                    L("v2"),
                    L("admin"),
                    L("operator"),
                    L("restate"),
                    L("cleanup-stale-deployments")
                ],
                Discovery,
                OperatorCleanupStaleDeployments,
                Operator
            ),
            route!(
                POST,
                [
                    L("v2"),
                    L("admin"),
                    L("operator"),
                    L("restate"),
                    L("recover-stuck-workflow")
                ],
                Discovery,
                OperatorRecoverStuckWorkflow,
                Operator
            ),
            route!(
                GET,
                [L("v2"), L("admin"), L("operator"), L("audit")],
                Discovery,
                OperatorAudit,
                Operator
            ),
            // The control-plane audit trail (`crate::audit`): admins only.
            route!(
                GET,
                [L("v2"), L("admin"), L("audit")],
                Discovery,
                AuditTrail,
                Admin
            ),
            route!(GET, [L("cluster"), L("info")], Discovery, ClusterInfo),
            // The runtime external payload transport serves clients and workers alike:
            // either plane's version header (neither required, a wrong one a 400, as on
            // discovery), any role, and the request's namespace (see `namespaced`).
            route!(
                POST,
                [L("external-payloads"), L("v1")],
                Discovery,
                UploadExternalPayload
            ),
            route!(
                GET,
                [L("external-payloads"), L("v1"), P],
                Discovery,
                FetchExternalPayload
            ),
            route!(POST, [L("storage"), L("test")], Control, StorageTest, Admin),
            // Prometheus text at the root; any role, so a scraper can hold the least
            // powerful credential.
            Route {
                method: Method::GET,
                path: &[L("metrics")],
                plane: Plane::Public,
                op: Op::PrometheusMetrics,
                access: Access::Any,
                root: true,
            },
            route!(GET, [L("namespaces")], Control, ListNamespaces),
            route!(POST, [L("namespaces")], Control, CreateNamespace, Admin),
            route!(GET, [L("namespaces"), P], Control, DescribeNamespace),
            route!(PUT, [L("namespaces"), P], Control, UpdateNamespace, Admin),
            route!(
                PUT,
                [L("namespaces"), P, L("external-storage")],
                Control,
                SetNamespaceExternalStorage,
                Admin
            ),
            route!(GET, [L("search-attributes")], Control, ListSearchAttributes),
            route!(
                POST,
                [L("search-attributes")],
                Control,
                CreateSearchAttribute
            ),
            route!(
                DELETE,
                [L("search-attributes"), P],
                Control,
                DeleteSearchAttribute
            ),
            // The service catalog (`keel_engine::services`): admin, namespace-scoped.
            route!(
                GET,
                [L("service-endpoints")],
                Control,
                ListServiceEndpoints,
                Admin
            ),
            route!(
                POST,
                [L("service-endpoints")],
                Control,
                CreateServiceEndpoint,
                Admin
            ),
            route!(
                GET,
                [L("service-endpoints"), P],
                Control,
                DescribeServiceEndpoint,
                Admin
            ),
            route!(
                PUT,
                [L("service-endpoints"), P],
                Control,
                UpdateServiceEndpoint,
                Admin
            ),
            route!(
                DELETE,
                [L("service-endpoints"), P],
                Control,
                DeleteServiceEndpoint,
                Admin
            ),
            route!(
                GET,
                [L("service-endpoints"), P, L("services")],
                Control,
                ListServices,
                Admin
            ),
            route!(
                POST,
                [L("service-endpoints"), P, L("services")],
                Control,
                CreateService,
                Admin
            ),
            route!(
                GET,
                [L("service-endpoints"), P, L("services"), P],
                Control,
                DescribeService,
                Admin
            ),
            route!(
                PUT,
                [L("service-endpoints"), P, L("services"), P],
                Control,
                UpdateService,
                Admin
            ),
            route!(
                DELETE,
                [L("service-endpoints"), P, L("services"), P],
                Control,
                DeleteService,
                Admin
            ),
            route!(
                GET,
                [L("service-endpoints"), P, L("services"), P, L("operations")],
                Control,
                ListOperations,
                Admin
            ),
            route!(
                POST,
                [L("service-endpoints"), P, L("services"), P, L("operations")],
                Control,
                CreateOperation,
                Admin
            ),
            route!(
                GET,
                [
                    L("service-endpoints"),
                    P,
                    L("services"),
                    P,
                    L("operations"),
                    P
                ],
                Control,
                DescribeOperation,
                Admin
            ),
            route!(
                PUT,
                [
                    L("service-endpoints"),
                    P,
                    L("services"),
                    P,
                    L("operations"),
                    P
                ],
                Control,
                UpdateOperation,
                Admin
            ),
            route!(
                DELETE,
                [
                    L("service-endpoints"),
                    P,
                    L("services"),
                    P,
                    L("operations"),
                    P
                ],
                Control,
                DeleteOperation,
                Admin
            ),
            // Service calls: execute and cancel need the operator role (a caller), the
            // seed lists describe among the admin catalog routes.
            route!(
                POST,
                [
                    L("service-endpoints"),
                    P,
                    L("services"),
                    P,
                    L("operations"),
                    P,
                    L("execute")
                ],
                Control,
                ExecuteOperation
            ),
            route!(
                GET,
                [
                    L("service-endpoints"),
                    P,
                    L("services"),
                    P,
                    L("operations"),
                    P,
                    L("service-calls"),
                    P
                ],
                Control,
                DescribeServiceCall,
                Admin
            ),
            route!(
                POST,
                [
                    L("service-endpoints"),
                    P,
                    L("services"),
                    P,
                    L("operations"),
                    P,
                    L("service-calls"),
                    P,
                    L("cancel")
                ],
                Control,
                CancelServiceCall
            ),
            // Webhook bridge adapters: events need the operator role, the adapters'
            // configuration (same path, other methods) admin; all bootstrap-gated.
            route!(
                POST,
                [L("bridge-adapters"), L("webhook"), P],
                Control,
                BridgeWebhook
            ),
            route!(
                GET,
                [L("bridge-adapters")],
                Control,
                ListBridgeAdapters,
                Admin
            ),
            route!(
                GET,
                [L("bridge-adapters"), L("webhook"), P],
                Control,
                DescribeBridgeAdapter,
                Admin
            ),
            route!(
                PUT,
                [L("bridge-adapters"), L("webhook"), P],
                Control,
                PutBridgeAdapter,
                Admin
            ),
            route!(
                DELETE,
                [L("bridge-adapters"), L("webhook"), P],
                Control,
                DeleteBridgeAdapter,
                Admin
            ),
            // Schedules (`crate::schedules`); reads stay open under the bootstrap gate.
            route!(GET, [L("schedules")], Control, ListSchedules),
            route!(POST, [L("schedules")], Control, CreateSchedule),
            route!(GET, [L("schedules"), P], Control, DescribeSchedule),
            route!(PUT, [L("schedules"), P], Control, UpdateSchedule),
            route!(DELETE, [L("schedules"), P], Control, DeleteSchedule),
            route!(
                POST,
                [L("schedules"), P, L("pause")],
                Control,
                PauseSchedule
            ),
            route!(
                POST,
                [L("schedules"), P, L("resume")],
                Control,
                ResumeSchedule
            ),
            route!(
                POST,
                [L("schedules"), P, L("trigger")],
                Control,
                TriggerSchedule
            ),
            route!(
                POST,
                [L("schedules"), P, L("backfill")],
                Control,
                BackfillSchedule
            ),
            route!(
                GET,
                [L("schedules"), P, L("history")],
                Control,
                ScheduleHistory
            ),
            route!(
                GET,
                [L("system"), L("health")],
                Control,
                SystemHealth,
                Admin
            ),
            route!(
                GET,
                [L("system"), L("metrics")],
                Control,
                SystemMetrics,
                Admin
            ),
            route!(
                POST,
                [L("system"), L("metrics")],
                Control,
                SystemMetrics,
                Admin
            ),
            route!(
                GET,
                [L("system"), L("operator-metrics")],
                Control,
                SystemOperatorMetrics,
                Admin
            ),
            route!(
                GET,
                [L("system"), L("repair")],
                Control,
                SystemRepair,
                Admin
            ),
            route!(
                POST,
                [L("system"), L("repair"), L("pass")],
                Control,
                SystemRepairPass,
                Admin
            ),
            route!(
                GET,
                [L("system"), L("activity-timeouts")],
                Control,
                SystemActivityTimeouts,
                Admin
            ),
            route!(
                POST,
                [L("system"), L("activity-timeouts"), L("pass")],
                Control,
                SystemActivityTimeoutsPass,
                Admin
            ),
            route!(
                GET,
                [L("system"), L("retention")],
                Control,
                SystemRetention,
                Admin
            ),
            route!(
                POST,
                [L("system"), L("retention"), L("pass")],
                Control,
                SystemRetentionPass,
                Admin
            ),
            route!(POST, [L("workflows")], Control, StartWorkflow),
            route!(POST, [L("activities")], Control, StartActivity),
            route!(GET, [L("activities")], Control, ListActivities),
            route!(GET, [L("activities"), P], Control, DescribeActivity),
            route!(
                POST,
                [L("workflows"), L("import"), L("embedded-v2")],
                Control,
                ImportEmbeddedV2,
                Admin
            ),
            route!(GET, [L("workflows")], Control, ListWorkflows),
            route!(GET, [L("workflows"), P, L("runs")], Control, ListRuns),
            route!(
                GET,
                [L("workflows"), P, L("runs"), P, L("history"), L("export")],
                Control,
                ExportRunHistory
            ),
            route!(GET, [L("workflows"), P, L("debug")], Control, DebugWorkflow),
            route!(
                GET,
                [L("workflows"), P, L("runs"), P, L("debug")],
                Control,
                DebugRun
            ),
            route!(
                POST,
                [L("workflows"), P, L("repair")],
                Control,
                RepairWorkflow
            ),
            route!(
                POST,
                [L("workflows"), P, L("runs"), P, L("repair")],
                Control,
                RepairRun
            ),
            route!(
                POST,
                [L("workflows"), P, L("archive")],
                Control,
                ArchiveWorkflow
            ),
            route!(
                POST,
                [L("workflows"), P, L("runs"), P, L("archive")],
                Control,
                ArchiveRun
            ),
            route!(GET, [L("workflows"), P], Control, DescribeWorkflow),
            route!(GET, [L("workflows"), P, L("runs"), P], Control, DescribeRun),
            // Workflow commands (signal, query, update, cancel, terminate); the run-targeted
            // forms reject a run that is not current, except queries.
            route!(
                POST,
                [L("workflows"), P, L("signal"), P],
                Control,
                SignalWorkflow
            ),
            route!(
                POST,
                [L("workflows"), P, L("runs"), P, L("signal"), P],
                Control,
                SignalRun
            ),
            route!(
                POST,
                [L("workflows"), P, L("query"), P],
                Control,
                QueryWorkflow
            ),
            route!(
                POST,
                [L("workflows"), P, L("runs"), P, L("query"), P],
                Control,
                QueryRun
            ),
            route!(
                POST,
                [L("workflows"), P, L("update"), P],
                Control,
                UpdateWorkflow
            ),
            route!(
                POST,
                [L("workflows"), P, L("runs"), P, L("update"), P],
                Control,
                UpdateRun
            ),
            route!(
                POST,
                [L("workflows"), P, L("cancel")],
                Control,
                CancelWorkflow
            ),
            route!(
                POST,
                [L("workflows"), P, L("runs"), P, L("cancel")],
                Control,
                CancelRun
            ),
            route!(
                POST,
                [L("workflows"), P, L("terminate")],
                Control,
                TerminateWorkflow
            ),
            route!(
                POST,
                [L("workflows"), P, L("runs"), P, L("terminate")],
                Control,
                TerminateRun
            ),
            route!(
                POST,
                [L("worker"), L("query-tasks"), L("poll")],
                Worker,
                PollQueryTask
            ),
            route!(
                POST,
                [L("worker"), L("query-tasks"), P, L("complete")],
                Worker,
                CompleteQueryTask
            ),
            route!(
                POST,
                [L("worker"), L("query-tasks"), P, L("fail")],
                Worker,
                FailQueryTask
            ),
            route!(
                GET,
                [L("workflows"), P, L("runs"), P, L("history")],
                Control,
                RunHistory
            ),
            route!(POST, [L("worker"), L("register")], Worker, RegisterWorker),
            route!(POST, [L("worker"), L("heartbeat")], Worker, HeartbeatWorker),
            route!(
                DELETE,
                [L("worker"), L("registrations"), P],
                Worker,
                DeregisterWorker
            ),
            route!(
                POST,
                [L("worker"), L("workflow-tasks"), L("poll")],
                Worker,
                PollWorkflowTask
            ),
            route!(
                POST,
                [L("worker"), L("workflow-tasks"), P, L("history")],
                Worker,
                WorkflowTaskHistory
            ),
            route!(
                POST,
                [L("worker"), L("workflow-tasks"), P, L("heartbeat")],
                Worker,
                HeartbeatWorkflowTask
            ),
            route!(
                POST,
                [L("worker"), L("workflow-tasks"), P, L("complete")],
                Worker,
                CompleteWorkflowTask
            ),
            route!(
                POST,
                [L("worker"), L("workflow-tasks"), P, L("fail")],
                Worker,
                FailWorkflowTask
            ),
            route!(
                POST,
                [L("worker"), L("activity-tasks"), L("poll")],
                Worker,
                PollActivityTask
            ),
            route!(
                POST,
                [L("worker"), L("activity-tasks"), P, L("heartbeat")],
                Worker,
                HeartbeatActivityTask
            ),
            route!(
                POST,
                [L("worker"), L("activity-tasks"), P, L("complete")],
                Worker,
                CompleteActivityTask
            ),
            route!(
                POST,
                [L("worker"), L("activity-tasks"), P, L("fail")],
                Worker,
                FailActivityTask
            ),
            // Worker sessions: the holder's lifecycle calls.
            route!(
                POST,
                [L("worker"), L("sessions")],
                Worker,
                CreateWorkerSession
            ),
            route!(
                POST,
                [L("worker"), L("sessions"), P, L("heartbeat")],
                Worker,
                HeartbeatWorkerSession
            ),
            route!(
                DELETE,
                [L("worker"), L("sessions"), P],
                Worker,
                CloseWorkerSession
            ),
        ]
    })
}

/// The outcome of matching a request line.
#[derive(Debug, PartialEq, Eq)]
pub enum Match {
    /// A route matched: its operation, plane and decoded path parameters.
    Found(Op, Plane, Vec<String>),
    /// The path exists, but not for this method.
    MethodNotAllowed {
        /// The methods the path has, in table order (the `Allow` header of the 405).
        allow: Vec<Method>,
        /// Whether every route of the path needs no token, so that telling a caller
        /// without one that the path exists gives nothing away.
        public: bool,
    },
    /// No route has this path.
    NotFound,
}

/// The routes by shape (root or not, segment count), each list in table order: a
/// request is matched against the few routes of its shape.
fn routes_by_shape() -> &'static std::collections::HashMap<(bool, usize), Vec<&'static Route>> {
    static BY_SHAPE: std::sync::OnceLock<
        std::collections::HashMap<(bool, usize), Vec<&'static Route>>,
    > = std::sync::OnceLock::new();
    BY_SHAPE.get_or_init(|| {
        let mut by_shape = std::collections::HashMap::<_, Vec<_>>::new();
        for r in routes() {
            by_shape.entry((r.root, r.path.len())).or_default().push(r);
        }
        by_shape
    })
}

/// Matches `method` and `path` (the full path, starting with `/api/`, or a root route).
pub fn route(method: &Method, path: &str) -> Match {
    let (rest, root) = match path.strip_prefix("/api/") {
        Some(rest) => (rest, false),
        None => (path.strip_prefix('/').unwrap_or(path), true),
    };
    // Borrowed unless a segment has escapes.
    let segments: Vec<std::borrow::Cow<'_, str>> = rest
        .trim_end_matches('/')
        .split('/')
        .map(|s| percent_encoding::percent_decode_str(s).decode_utf8_lossy())
        .collect();
    let mut allow: Vec<Method> = Vec::new();
    let mut public = true;
    let candidates = routes_by_shape()
        .get(&(root, segments.len()))
        .map_or(&[][..], Vec::as_slice);
    for r in candidates {
        let fits = r.path.iter().zip(&segments).all(|(seg, s)| match seg {
            Seg::Lit(l) => l == s,
            Seg::Param => !s.is_empty(),
        });
        if fits {
            if r.method == *method {
                let params = r
                    .path
                    .iter()
                    .zip(&segments)
                    .filter(|(seg, _)| matches!(seg, Seg::Param))
                    .map(|(_, s)| s.to_string())
                    .collect();
                return Match::Found(r.op, r.plane, params);
            }
            if !allow.contains(&r.method) {
                allow.push(r.method.clone());
            }
            public &= r.access == Access::Public;
        }
    }
    if allow.is_empty() {
        Match::NotFound
    } else {
        Match::MethodNotAllowed { allow, public }
    }
}

impl Op {
    /// The operation's name in snake case (`start_workflow`): the metrics label of its
    /// route. Never holds ids. Made once per operation (a finite set), then shared.
    pub fn name(self) -> &'static str {
        static NAMES: std::sync::OnceLock<
            std::sync::Mutex<std::collections::HashMap<Op, &'static str>>,
        > = std::sync::OnceLock::new();
        let mut names = NAMES
            .get_or_init(Default::default)
            .lock()
            .expect("invariant: op names not poisoned");
        names
            .entry(self)
            .or_insert_with(|| Box::leak(self.snake_case().into_boxed_str()))
    }

    fn snake_case(self) -> String {
        let debug = format!("{self:?}");
        let mut out = String::with_capacity(debug.len() + 4);
        for (i, c) in debug.chars().enumerate() {
            if c.is_ascii_uppercase() {
                if i > 0 {
                    out.push('_');
                }
                out.push(c.to_ascii_lowercase());
            } else {
                out.push(c);
            }
        }
        out
    }
}

/// Routes outside the control and worker planes that still act in the request's
/// namespace (resolved, and checked against the token's namespaces, like theirs).
pub fn namespaced(op: Op) -> bool {
    matches!(op, Op::UploadExternalPayload | Op::FetchExternalPayload)
}

/// Topology roles a node must host to serve hosted control-plane routes.
pub const CONTROL_ROLES: &[&str] = &["api_ingress", "control_plane"];
/// Topology roles a node must host to serve worker-protocol routes.
pub const WORKER_ROLES: &[&str] = &["api_ingress", "matching"];

/// How the pipeline treats a route: who may call it and which gates apply.
#[derive(Debug, Clone, Copy)]
pub struct Policy {
    /// The role it requires.
    pub access: Access,
    /// Whether the workflow bootstrap gate applies (workflow starts, commands, lists and
    /// describes, schedule mutations, bridge adapters, the whole worker plane; history,
    /// debug and export reads and schedule reads stay available).
    pub bootstrap_gated: bool,
    /// Topology roles the node must host (empty: served by every node).
    pub required_roles: &'static [&'static str],
}

fn bootstrap_gated(r: &Route) -> bool {
    let lit = |i: usize| match r.path.get(i) {
        Some(Seg::Lit(l)) => Some(*l),
        _ => None,
    };
    let last = r.path.last().and_then(|s| match s {
        Seg::Lit(l) => Some(*l),
        Seg::Param => None,
    });
    match r.plane {
        Plane::Worker => true,
        Plane::Control => match lit(0) {
            Some("workflows") => {
                !(r.method == Method::GET && matches!(last, Some("history" | "debug" | "export")))
            }
            Some("schedules") => r.method != Method::GET,
            Some("bridge-adapters" | "activities") => true,
            _ => false,
        },
        Plane::Public | Plane::Discovery => false,
    }
}

fn route_policy(r: &Route) -> Policy {
    Policy {
        access: r.access,
        bootstrap_gated: bootstrap_gated(r),
        required_roles: match r.plane {
            Plane::Control => CONTROL_ROLES,
            Plane::Worker => WORKER_ROLES,
            Plane::Public | Plane::Discovery => &[],
        },
    }
}

/// The policy of the route serving `op` (every op is served by one route family; when
/// several routes share an op, they share its policy).
pub fn policy(op: Op) -> Policy {
    static BY_OP: std::sync::OnceLock<std::collections::HashMap<Op, Policy>> =
        std::sync::OnceLock::new();
    let by_op = BY_OP.get_or_init(|| {
        let mut by_op = std::collections::HashMap::new();
        for r in routes() {
            by_op.entry(r.op).or_insert_with(|| route_policy(r));
        }
        by_op
    });
    by_op.get(&op).copied().unwrap_or(Policy {
        access: Access::Admin,
        bootstrap_gated: false,
        required_roles: CONTROL_ROLES,
    })
}

/// One route of the table, described for tests and documentation.
#[derive(Debug, Clone)]
pub struct RouteInfo {
    /// Method.
    pub method: Method,
    /// A concrete path for the pattern, each parameter replaced by `sample`.
    pub path: String,
    /// `public`, `discovery`, `control` or `worker`.
    pub plane: &'static str,
    /// The role it requires.
    pub access: Access,
    /// Whether the bootstrap gate applies.
    pub bootstrap_gated: bool,
    /// Topology roles it needs.
    pub required_roles: &'static [&'static str],
    /// The operation name.
    pub op: String,
}

/// Every route, with `sample` standing in for each path parameter.
pub fn table(sample: &str) -> Vec<RouteInfo> {
    routes()
        .iter()
        .map(|r| {
            let segments: Vec<&str> = r
                .path
                .iter()
                .map(|s| match s {
                    Seg::Lit(l) => *l,
                    Seg::Param => sample,
                })
                .collect();
            let policy = route_policy(r);
            RouteInfo {
                method: r.method.clone(),
                path: format!(
                    "{}{}",
                    if r.root { "/" } else { "/api/" },
                    segments.join("/")
                ),
                plane: match r.plane {
                    Plane::Public => "public",
                    Plane::Discovery => "discovery",
                    Plane::Control => "control",
                    Plane::Worker => "worker",
                },
                access: r.access,
                bootstrap_gated: policy.bootstrap_gated,
                required_roles: policy.required_roles,
                op: r.op.name().to_string(),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::{policy, route, routes, Access, Match, Method, Op, Plane, Seg};

    #[test]
    fn every_route_of_the_table_is_found_by_its_own_path_and_method() {
        for r in routes() {
            let segments: Vec<&str> = r
                .path
                .iter()
                .map(|s| match s {
                    Seg::Lit(l) => l,
                    Seg::Param => "sample%2Fid",
                })
                .collect();
            let path = format!(
                "{}{}",
                if r.root { "/" } else { "/api/" },
                segments.join("/")
            );
            let params = r.path.iter().filter(|s| matches!(s, Seg::Param)).count();
            assert_eq!(
                route(&r.method, &path),
                Match::Found(r.op, r.plane, vec!["sample/id".to_string(); params]),
                "{} {path}",
                r.method
            );
        }
    }

    #[test]
    fn percent_encoded_ids_are_decoded() {
        assert_eq!(
            route(&Method::GET, "/api/workflows/order%2F1%3Aa/runs/r1/history"),
            Match::Found(
                Op::RunHistory,
                Plane::Control,
                vec!["order/1:a".into(), "r1".into()]
            )
        );
    }

    #[test]
    fn roles_default_from_the_plane_with_explicit_overrides() {
        assert_eq!(policy(Op::StartWorkflow).access, Access::Operator);
        assert_eq!(policy(Op::PollWorkflowTask).access, Access::Worker);
        assert_eq!(policy(Op::ClusterInfo).access, Access::Any);
        assert_eq!(policy(Op::Health).access, Access::Public);
        assert_eq!(policy(Op::CreateNamespace).access, Access::Admin);
        assert_eq!(policy(Op::SystemRetentionPass).access, Access::Admin);
        assert_eq!(Op::SystemRetentionPass.name(), "system_retention_pass");
    }

    #[test]
    fn bootstrap_gate_covers_workflow_and_worker_routes_but_not_history_reads() {
        assert!(policy(Op::StartWorkflow).bootstrap_gated);
        assert!(policy(Op::DescribeWorkflow).bootstrap_gated);
        assert!(policy(Op::PollActivityTask).bootstrap_gated);
        assert!(!policy(Op::RunHistory).bootstrap_gated);
        assert!(!policy(Op::ListNamespaces).bootstrap_gated);
        assert!(!policy(Op::SystemRepairPass).bootstrap_gated);
        assert!(!policy(Op::ClusterInfo).bootstrap_gated);
    }

    #[test]
    fn schedule_mutations_are_bootstrap_gated_and_schedule_reads_are_not() {
        for op in [
            Op::CreateSchedule,
            Op::UpdateSchedule,
            Op::DeleteSchedule,
            Op::PauseSchedule,
            Op::ResumeSchedule,
            Op::TriggerSchedule,
            Op::BackfillSchedule,
        ] {
            assert!(policy(op).bootstrap_gated, "{op:?}");
        }
        for op in [Op::ListSchedules, Op::DescribeSchedule, Op::ScheduleHistory] {
            assert!(!policy(op).bootstrap_gated, "{op:?}");
        }
        assert_eq!(
            route(&Method::POST, "/api/schedules/nightly/trigger"),
            Match::Found(Op::TriggerSchedule, Plane::Control, vec!["nightly".into()])
        );
    }

    #[test]
    fn metrics_is_served_at_the_root_only() {
        assert!(matches!(
            route(&Method::GET, "/metrics"),
            Match::Found(Op::PrometheusMetrics, Plane::Public, _)
        ));
        assert_eq!(route(&Method::GET, "/api/metrics"), Match::NotFound);
        assert_eq!(route(&Method::GET, "/health"), Match::NotFound);
    }

    #[test]
    fn known_path_with_wrong_method_is_method_not_allowed_with_the_paths_methods() {
        assert_eq!(
            route(&Method::DELETE, "/api/workflows"),
            Match::MethodNotAllowed {
                allow: vec![Method::POST, Method::GET],
                public: false
            }
        );
        assert_eq!(
            route(&Method::POST, "/api/health"),
            Match::MethodNotAllowed {
                allow: vec![Method::GET],
                public: true
            }
        );

        assert_eq!(route(&Method::GET, "/api/nope"), Match::NotFound);
        assert_eq!(route(&Method::GET, "/elsewhere"), Match::NotFound);
    }
}
