//! Ballista's execution engine wrapped to count and time the tasks this
//! executor runs, plus the shuffle-client pool it needs (Ballista's own
//! pool is private to its crate).

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ballista_core::JobId;
use ballista_core::client::BallistaClient;
use ballista_core::client_pool::{BallistaClientPool, PooledClient};
use ballista_core::extension::BallistaConfigGrpcEndpoint;
use ballista_core::serde::protobuf::{
    RuntimeStatsReport, ShuffleWritePartition, TaskColumnStats, WindowStateReport,
};
use ballista_core::utils::GrpcClientConfig;
use ballista_executor::execution_engine::{
    DefaultExecutionEngine, ExecutionEngine, QueryStageExecutor,
};
use datafusion::error::Result;
use datafusion::execution::context::TaskContext;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::metrics::MetricsSet;
use datafusion::prelude::SessionConfig;

use crate::metrics::ExecutorMetrics;

/// The default engine, with every task it creates reported to [`ExecutorMetrics`].
pub(crate) struct MeteredEngine {
    inner: DefaultExecutionEngine,
    metrics: Arc<ExecutorMetrics>,
}

impl MeteredEngine {
    pub(crate) fn new(metrics: Arc<ExecutorMetrics>, client_idle_timeout: Duration) -> Self {
        let pool = Arc::new(ClientPool::new(client_idle_timeout));
        Self {
            inner: DefaultExecutionEngine::with_client_pool(pool),
            metrics,
        }
    }
}

impl ExecutionEngine for MeteredEngine {
    fn create_query_stage_exec(
        &self,
        job_id: JobId,
        stage_id: usize,
        task_id: usize,
        global_output_partition_ids: Vec<usize>,
        plan: Arc<dyn ExecutionPlan>,
        work_dir: &str,
        config: &SessionConfig,
    ) -> Result<Arc<dyn QueryStageExecutor>> {
        let inner = self.inner.create_query_stage_exec(
            job_id,
            stage_id,
            task_id,
            global_output_partition_ids,
            plan,
            work_dir,
            config,
        )?;
        Ok(Arc::new(MeteredStage {
            inner,
            metrics: self.metrics.clone(),
        }))
    }
}

struct MeteredStage {
    inner: Arc<dyn QueryStageExecutor>,
    metrics: Arc<ExecutorMetrics>,
}

impl fmt::Debug for MeteredStage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.inner, f)
    }
}

impl fmt::Display for MeteredStage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.inner, f)
    }
}

#[async_trait::async_trait]
impl QueryStageExecutor for MeteredStage {
    async fn execute_query_stage(
        &self,
        task_id: usize,
        context: Arc<TaskContext>,
    ) -> Result<Vec<ShuffleWritePartition>> {
        let _running = self.metrics.task_started();
        let started = Instant::now();
        let result = self.inner.execute_query_stage(task_id, context).await;
        self.metrics
            .task_finished(result.is_ok(), started.elapsed());
        result
    }

    fn collect_plan_metrics(&self) -> Vec<MetricsSet> {
        self.inner.collect_plan_metrics()
    }

    fn collect_runtime_stats_reports(&self) -> Vec<RuntimeStatsReport> {
        self.inner.collect_runtime_stats_reports()
    }

    fn collect_window_state_reports(&self) -> Result<Vec<WindowStateReport>> {
        self.inner.collect_window_state_reports()
    }

    fn collect_column_stats(&self) -> Vec<TaskColumnStats> {
        self.inner.collect_column_stats()
    }
}

type PoolKey = (String, u16, GrpcClientConfig);
type IdleClients = HashMap<PoolKey, Vec<(BallistaClient, Instant)>>;

/// Reuses Flight connections to other executors for shuffle reads, so a
/// shuffle-heavy query does not open one connection per partition fetch.
/// Connections idle longer than the timeout are dropped on the next acquire.
struct ClientPool {
    idle: Arc<Mutex<IdleClients>>,
    idle_timeout: Duration,
}

impl fmt::Debug for ClientPool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientPool")
            .field("idle_timeout", &self.idle_timeout)
            .finish_non_exhaustive()
    }
}

impl ClientPool {
    fn new(idle_timeout: Duration) -> Self {
        Self {
            idle: Arc::default(),
            idle_timeout,
        }
    }

    fn lock(idle: &Mutex<IdleClients>) -> std::sync::MutexGuard<'_, IdleClients> {
        // A panic while holding the lock leaves only a cache behind; keep going.
        idle.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[async_trait::async_trait]
impl BallistaClientPool for ClientPool {
    async fn acquire(
        &self,
        host: &str,
        port: u16,
        config: &GrpcClientConfig,
        customize_endpoint: Option<Arc<BallistaConfigGrpcEndpoint>>,
    ) -> ballista_core::error::Result<PooledClient> {
        self.evict_idle().await;
        let key: PoolKey = (host.to_owned(), port, config.clone());
        let reused = Self::lock(&self.idle)
            .get_mut(&key)
            .and_then(|clients| clients.pop())
            .map(|(client, _)| client);
        let client = match reused {
            Some(client) => client,
            None => {
                BallistaClient::try_new(
                    host,
                    port,
                    config.max_message_size,
                    config.use_tls,
                    customize_endpoint,
                    config.io_retries_times,
                    config.io_retry_wait_time_ms,
                    config.initial_connection_window_size,
                    config.initial_stream_window_size,
                )
                .await?
            }
        };
        let idle = self.idle.clone();
        Ok(PooledClient::new(
            client,
            Box::new(move |client| {
                Self::lock(&idle)
                    .entry(key)
                    .or_default()
                    .push((client, Instant::now()));
            }),
        ))
    }

    async fn evict_idle(&self) {
        let now = Instant::now();
        Self::lock(&self.idle).retain(|_, clients| {
            clients.retain(|(_, since)| now.duration_since(*since) < self.idle_timeout);
            !clients.is_empty()
        });
    }
}
