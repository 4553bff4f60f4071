//! Executor-loss guard: when an executor leaves the cluster, every query
//! running at that moment is cancelled instead of being recovered.
//!
//! Ballista 55 re-runs the lost executor's tasks, but its bookkeeping keeps
//! the outputs of tasks that already finished on other executors beside the
//! re-run ones, so aggregates can count rows twice (see the cluster test
//! `executor_loss`). A clear failure that the client can re-submit is better
//! than a wrong answer. Queries started after the loss run normally on the
//! remaining executors.

use std::sync::Arc;

use ballista_scheduler::cluster::ClusterStateEvent;
use futures::StreamExt;
use tracing::{info, warn};

use crate::http::Ballista;
use crate::metrics::SchedulerMetrics;

/// Watches cluster membership until the scheduler stops.
pub(crate) async fn cancel_queries_on_executor_loss(
    scheduler: Arc<Ballista>,
    metrics: Arc<SchedulerMetrics>,
) {
    let mut events = match scheduler
        .state
        .executor_manager
        .cluster_state_events()
        .await
    {
        Ok(events) => events,
        Err(e) => {
            warn!(error = %e, "cannot watch executors; lost executors will not cancel queries");
            return;
        }
    };
    while let Some(event) = events.next().await {
        let ClusterStateEvent::RemovedExecutor { executor_id } = event else {
            continue;
        };
        let running: Vec<_> = scheduler
            .state
            .task_manager
            .get_running_job_cache()
            .keys()
            .cloned()
            .collect();
        for job_id in running {
            warn!(%job_id, %executor_id, "cancelling query: an executor it may depend on was lost");
            metrics.queries_cancelled_executor_lost.inc();
            if let Err(e) = scheduler.cancel_job(job_id.clone()).await {
                warn!(%job_id, error = %e, "cancelling the query failed");
            }
        }
        info!(%executor_id, "executor left the cluster");
    }
}
