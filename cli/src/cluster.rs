//! An in-process cluster (scheduler + executor) for `encore standalone`,
//! `encore demo` and `encore sql --standalone`, and the connection check for
//! remote schedulers.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use ballista::prelude::{SessionConfigExt, SessionContextExt};
use datafusion::execution::SessionStateBuilder;
use datafusion::prelude::{SessionConfig, SessionContext};
use encore_executor::{ExecutorConfig, ExecutorHandle, start_executor};
use encore_scheduler::{SchedulerConfig, SchedulerHandle, start_scheduler};

/// How long to wait for a TCP connection to a remote scheduler.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long an in-process executor may take to register.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// A scheduler and one executor running in this process.
pub struct LocalCluster {
    /// The scheduler.
    pub scheduler: SchedulerHandle,
    /// The executor.
    pub executor: ExecutorHandle,
}

impl LocalCluster {
    /// Starts both and waits until the executor has registered.
    pub async fn start(
        scheduler: SchedulerConfig,
        executor: ExecutorConfig,
    ) -> anyhow::Result<Self> {
        let scheduler = start_scheduler(scheduler)
            .await
            .context("starting the scheduler")?;
        let addr = scheduler.addr();
        let executor = start_executor(executor.with_scheduler(addr.ip().to_string(), addr.port()))
            .await
            .context("starting the executor")?;
        let deadline = Instant::now() + READY_TIMEOUT;
        while !executor.is_ready() {
            if Instant::now() > deadline {
                bail!(
                    "the executor did not register with the scheduler at {addr} within {}s",
                    READY_TIMEOUT.as_secs()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(Self {
            scheduler,
            executor,
        })
    }

    /// On free ports with `slots` task slots and a memory pool of
    /// `memory_pool` bytes (None: 70% of memory; operators spill beyond
    /// it): for one-shot commands.
    pub async fn ephemeral(slots: usize, memory_pool: Option<u64>) -> anyhow::Result<Self> {
        let mut executor = ExecutorConfig::default()
            .with_free_ports()
            .with_concurrent_tasks(slots);
        if memory_pool.is_some() {
            executor.memory_pool_size_bytes = memory_pool;
        }
        Self::start(SchedulerConfig::default().with_bind_port(0), executor).await
    }

    /// Stops the executor, then the scheduler.
    pub async fn shutdown(mut self) -> anyhow::Result<()> {
        self.executor.abort();
        self.scheduler.shutdown().await?;
        Ok(())
    }
}

/// Where a command runs: the given scheduler, or an in-process cluster it
/// starts (with `slots` task slots, 0 for every core) and stops afterwards.
pub struct Target {
    local: Option<LocalCluster>,
    /// The scheduler URL to connect to.
    pub url: String,
}

impl Target {
    /// Uses `scheduler`, or starts an in-process cluster when it is None
    /// (see [`LocalCluster::ephemeral`]).
    pub async fn start(
        scheduler: Option<&str>,
        slots: usize,
        memory_pool: Option<u64>,
    ) -> anyhow::Result<Self> {
        Ok(match scheduler {
            Some(url) => Self {
                local: None,
                url: url.to_owned(),
            },
            None => {
                let local = LocalCluster::ephemeral(slots, memory_pool).await?;
                let url = local.scheduler.url();
                Self {
                    local: Some(local),
                    url,
                }
            }
        })
    }

    /// Targets a cluster this process already started.
    pub fn local(cluster: LocalCluster) -> Self {
        let url = cluster.scheduler.url();
        Self {
            local: Some(cluster),
            url,
        }
    }

    /// Encore's session settings for this target, then `user`'s (which win):
    /// [`SESSION_DEFAULTS`], plus [`LOCAL_SESSION_DEFAULTS`] for an
    /// in-process cluster.
    pub fn conf(&self, user: &[(String, String)]) -> Vec<(String, String)> {
        let local: &[(&str, &str)] = if self.local.is_some() {
            &LOCAL_SESSION_DEFAULTS
        } else {
            &[]
        };
        SESSION_DEFAULTS
            .iter()
            .chain(local)
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .chain(user.iter().cloned())
            .collect()
    }

    /// Stops the in-process cluster, if one was started, and passes `result` on.
    pub async fn finish<T>(self, result: anyhow::Result<T>) -> anyhow::Result<T> {
        if let Some(local) = self.local {
            local
                .shutdown()
                .await
                .context("stopping the in-process cluster")?;
        }
        result
    }
}

pub use encore_features::plans::SESSION_DEFAULTS;

/// Added for an in-process cluster: its shuffle files never cross a network,
/// so they are not compressed (lz4 cost about a tenth of the feature plan's
/// CPU), and 8 partitions per stage rather than Ballista's 16 (fewer tasks
/// and files on a small machine).
pub const LOCAL_SESSION_DEFAULTS: [(&str, &str); 2] = [
    ("ballista.shuffle.compression.codec", "none"),
    ("datafusion.execution.target_partitions", "8"),
];

/// One `--conf KEY=VALUE` session setting (DataFusion's `datafusion.*` or
/// Ballista's `ballista.*` options, as in `SET key = value`).
pub fn parse_conf(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((key, value)) if !key.trim().is_empty() => {
            Ok((key.trim().to_owned(), value.trim().to_owned()))
        }
        _ => Err(format!(
            "'{text}': expected KEY=VALUE, e.g. datafusion.execution.target_partitions=4"
        )),
    }
}

/// A Ballista session on the scheduler at `url` (`df://host:port`) with the
/// session settings `conf`, after checking that the scheduler answers, so a
/// wrong address fails fast; an unknown setting or bad value is an error
/// naming it.
pub async fn connect(url: &str, conf: &[(String, String)]) -> anyhow::Result<SessionContext> {
    let mut config = SessionConfig::new_with_ballista();
    for (key, value) in conf {
        config
            .options_mut()
            .set(key, value)
            .with_context(|| format!("--conf {key}={value}"))?;
    }
    let parsed = url::Url::parse(url)
        .with_context(|| format!("invalid scheduler URL '{url}' (expected df://HOST:PORT)"))?;
    let (Some(host), Some(port)) = (parsed.host_str(), parsed.port()) else {
        bail!("invalid scheduler URL '{url}' (expected df://HOST:PORT)");
    };
    let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{host}:{port}"))
        .with_context(|| format!("invalid scheduler URL '{url}'"))?
        .connect_timeout(CONNECT_TIMEOUT);
    match tokio::time::timeout(CONNECT_TIMEOUT, endpoint.connect()).await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => bail!("cannot reach scheduler at {url}: {}", root_cause(&e)),
        Err(_) => bail!(
            "cannot reach scheduler at {url}: no answer within {}s",
            CONNECT_TIMEOUT.as_secs()
        ),
    }
    let state = SessionStateBuilder::new()
        .with_config(config)
        .with_default_features()
        .build();
    SessionContext::remote_with_state(&format!("df://{host}:{port}"), state)
        .await
        .with_context(|| format!("cannot open a session on {url}"))
}

fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = e;
    while let Some(next) = cause.source() {
        cause = next;
    }
    cause.to_string()
}
