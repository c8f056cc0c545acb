//! A small explicit router: a table of routes, each with its method, path pattern and
//! plane (which decides the version header it requires). Path segments are
//! percent-decoded before matching, since the SDK encodes ids inconsistently.

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

/// The operations Keel serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Health,
    Ready,
    ClusterInfo,
    StartWorkflow,
    DescribeWorkflow,
    DescribeRun,
    RunHistory,
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
}

macro_rules! route {
    ($method:ident, [$($seg:expr),*], $plane:ident, $op:ident) => {
        Route { method: Method::$method, path: &[$($seg),*], plane: Plane::$plane, op: Op::$op }
    };
}

fn routes() -> &'static [Route] {
    static ROUTES: std::sync::OnceLock<Vec<Route>> = std::sync::OnceLock::new();
    ROUTES.get_or_init(|| {
        vec![
            route!(GET, [L("health")], Public, Health),
            route!(GET, [L("ready")], Public, Ready),
            route!(GET, [L("cluster"), L("info")], Discovery, ClusterInfo),
            route!(POST, [L("workflows")], Control, StartWorkflow),
            route!(GET, [L("workflows"), P], Control, DescribeWorkflow),
            route!(GET, [L("workflows"), P, L("runs"), P], Control, DescribeRun),
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
        ]
    })
}

/// The outcome of matching a request line.
#[derive(Debug, PartialEq, Eq)]
pub enum Match {
    /// A route matched: its operation, plane and decoded path parameters.
    Found(Op, Plane, Vec<String>),
    /// The path exists, but not for this method.
    MethodNotAllowed,
    /// No route has this path.
    NotFound,
}

/// Matches `method` and `path` (the full path, starting with `/api/`).
pub fn route(method: &Method, path: &str) -> Match {
    let Some(rest) = path.strip_prefix("/api/") else {
        return Match::NotFound;
    };
    let segments: Vec<String> = rest
        .trim_end_matches('/')
        .split('/')
        .map(|s| {
            percent_encoding::percent_decode_str(s)
                .decode_utf8_lossy()
                .into_owned()
        })
        .collect();
    let mut path_matched = false;
    for r in routes() {
        if r.path.len() != segments.len() {
            continue;
        }
        let mut params = Vec::new();
        let fits = r.path.iter().zip(&segments).all(|(seg, s)| match seg {
            Seg::Lit(l) => l == s,
            Seg::Param => {
                params.push(s.clone());
                !s.is_empty()
            }
        });
        if fits {
            if r.method == *method {
                return Match::Found(r.op, r.plane, params);
            }
            path_matched = true;
        }
    }
    if path_matched {
        Match::MethodNotAllowed
    } else {
        Match::NotFound
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn known_path_with_wrong_method_is_method_not_allowed() {
        assert_eq!(
            route(&Method::DELETE, "/api/workflows"),
            Match::MethodNotAllowed
        );
        assert_eq!(route(&Method::GET, "/api/nope"), Match::NotFound);
        assert_eq!(route(&Method::GET, "/elsewhere"), Match::NotFound);
    }
}
