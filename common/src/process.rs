//! What every Encore binary does at start and stop.

/// Logs to stderr, filtered by `RUST_LOG` or else `default_level`
/// (stdout stays free for results and the addresses a process prints).
pub fn init_logging(default_level: &str) {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| format!("{default_level},{QUIET}").into()),
        )
        .init();
}

/// Warnings that are not news in Encore, kept out of the default log:
/// a Ballista task runs one file group of a scan whose day-grouped files
/// declared one partition per group (`preserve_file_partitions`), and
/// DataFusion warns once per task that the task's scan has fewer groups.
const QUIET: &str = "datafusion_datasource::file_scan_config=error";

/// A multi-threaded tokio runtime with room for Ballista's deeply recursive planner.
pub fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_stack_size(32 * 1024 * 1024)
        .build()
}

/// Resolves on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {},
                    _ = term.recv() => {},
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
}

/// A server running on a tokio task that stops gracefully when asked (or
/// when dropped). A panic inside the server resurfaces in [`Self::wait`].
pub struct ServerTask<E> {
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<Result<(), E>>>,
}

impl<E: Send + 'static> ServerTask<E> {
    /// Spawns `serve`, handing it the future that resolves when the server should stop.
    pub fn spawn<F>(
        serve: impl FnOnce(std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>) -> F,
    ) -> Self
    where
        F: std::future::Future<Output = Result<(), E>> + Send + 'static,
    {
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let stop = Box::pin(async move {
            let _ = rx.await;
        });
        Self {
            shutdown: Some(tx),
            task: Some(tokio::spawn(serve(stop))),
        }
    }

    /// Waits until the server stops (after [`Self::shutdown`], or on its own error).
    pub async fn wait(&mut self) -> Result<(), E> {
        match self.task.take() {
            Some(task) => match task.await {
                Ok(result) => result,
                Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
                Err(_) => Ok(()),
            },
            None => Ok(()),
        }
    }

    /// Asks the server to stop (in-flight requests finish), then waits for it.
    pub async fn shutdown(&mut self) -> Result<(), E> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        self.wait().await
    }

    /// Serves until the server stops or Ctrl-C / SIGTERM arrives, then stops it gracefully.
    pub async fn run_until_signal(&mut self) -> Result<(), E> {
        tokio::select! {
            result = self.wait() => result,
            _ = shutdown_signal() => {
                tracing::info!("shutting down");
                self.shutdown().await
            }
        }
    }
}

impl<E> Drop for ServerTask<E> {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// A listen address that could not be bound.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {addr}: {source}")]
pub struct BindError {
    /// `host:port` that was asked for.
    pub addr: String,
    /// Why.
    pub source: std::io::Error,
}

/// Binds `host:port` (port 0 picks a free one) and returns the listener with
/// the address actually bound.
pub async fn bind(
    host: &str,
    port: u16,
) -> Result<(tokio::net::TcpListener, std::net::SocketAddr), BindError> {
    let addr = format!("{host}:{port}");
    let listener = match tokio::net::TcpListener::bind(&addr).await {
        Ok(listener) => listener,
        Err(source) => return Err(BindError { addr, source }),
    };
    match listener.local_addr() {
        Ok(bound) => Ok((listener, bound)),
        Err(source) => Err(BindError { addr, source }),
    }
}
