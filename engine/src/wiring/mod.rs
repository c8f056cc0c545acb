//! The wiring: opens the engine, installs the one list of cross-subsystem reactions
//! (`hooks`), and routes each durable timer and service-call dispatch to the subsystem
//! that owns it. The only module that names every subsystem.

use std::collections::HashMap;
use std::sync::Mutex;

use tokio::sync::watch;

use crate::clock::Clock;
use crate::cluster::Cluster;
use crate::error::Result;
use crate::kernel::{Engine, EngineConfig, Inner};
use crate::matching::Matching;
use crate::model::{TimerAction, TimerKey};
use crate::storage::KvStore;
use crate::sync::Arc;
use crate::timers::{TimerHandler, Timers};

mod dispatch;
mod hooks;
mod timers;

struct TimerBridge(std::sync::Weak<Inner>);

impl TimerHandler for TimerBridge {
    fn fire(
        &self,
        timer: TimerKey,
        action: Option<TimerAction>,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<()>> + Send + '_>> {
        Box::pin(async move {
            match self.0.upgrade() {
                Some(inner) => Engine { inner }.fire_timer_with(timer, action).await,
                None => Ok(()),
            }
        })
    }
}

impl Engine {
    /// Opens the engine on `store`: creates the default namespace on first start,
    /// rebuilds the ready index (and, on a single-node store, the per-queue counts and
    /// lease timers) from storage, and starts the timer service.
    pub async fn open(
        store: Arc<dyn KvStore>,
        clock: Arc<dyn Clock>,
        config: EngineConfig,
    ) -> Result<Engine> {
        let (stop, stop_rx) = watch::channel(false);
        let matching = Matching::with_limits(config.park_limits);
        // On a cluster, the node's queue watchers must not hand out again what this node
        // announced itself.
        let matching = Arc::new(match config.cluster {
            Some(_) => matching.remembering_local_offers(),
            None => matching,
        });
        // With other nodes on the store, timers fire only once this node holds the
        // scheduler lease.
        let timers = Arc::new(Timers::new(config.cluster.is_none() && config.scheduler));
        let cluster = config.cluster.clone().map(|c| {
            Cluster::new(
                c,
                config.scheduler,
                store.clone(),
                clock.clone(),
                matching.clone(),
                timers.clone(),
                stop_rx.clone(),
            )
        });
        let hooks = Box::new(hooks::Hooks {
            service_http: config.service_http.clone(),
            eager: crate::workflow::EagerLeases {
                enabled: config.eager_leases && config.max_leases_per_queue.is_none(),
                clock: clock.clone(),
                matching: matching.clone(),
                workflow_lease_ms: config.workflow_task_lease.as_millis() as crate::clock::Millis,
                activity_lease_ms: config.activity_task_lease.as_millis() as crate::clock::Millis,
            },
        });
        let counts = crate::kernel::QueueTally::new(store.capabilities().multi_node);
        let inner = Arc::new(Inner {
            counts,
            store,
            clock,
            config,
            matching,
            timers,
            cluster,
            workers: Mutex::new(HashMap::new()),
            namespaces: Mutex::new(std::collections::HashSet::new()),
            cohorts: Mutex::new(HashMap::new()),
            poll_requests: Default::default(),
            queries: Default::default(),
            sticky: Default::default(),
            hooks,
            stop,
            services: Mutex::new(Vec::new()),
        });
        let engine = Engine { inner };
        engine.ensure_schema_version().await?;
        engine.mark_service_call_namespaces().await?;
        engine
            .ensure_namespace(&engine.inner.config.default_namespace.clone())
            .await?;
        engine.rebuild_ready_index().await?;
        engine.rebuild_counts_and_lease_timers().await?;
        let handler: Arc<dyn TimerHandler> = Arc::new(TimerBridge(Arc::downgrade(&engine.inner)));
        let mut services = vec![tokio::spawn(engine.inner.timers.clone().run(
            engine.inner.store.clone(),
            engine.inner.clock.clone(),
            handler,
            stop_rx,
        ))];
        if let Some(cluster) = &engine.inner.cluster {
            services.push(tokio::spawn(cluster.clone().run()));
        }
        *engine
            .inner
            .services
            .lock()
            .expect("invariant: handle lock not poisoned") = services;
        Ok(engine)
    }
}
