//! What every front end (KServe, typed Scoring, Flight) does around a
//! request: its deadline, its routing key, and the shadow copy.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::metrics::ServerMetrics;

/// The request's deadline from its `grpc-timeout` header, if any.
pub fn deadline(metadata: &tonic::metadata::MetadataMap) -> Result<Option<Instant>> {
    let Some(value) = metadata.get("grpc-timeout") else {
        return Ok(None);
    };
    let text = value.to_str().unwrap_or_default();
    let bad = || Error::InvalidArgument(format!("grpc-timeout '{text}' is malformed"));
    if text.len() < 2 {
        return Err(bad());
    }
    let (digits, unit) = text.split_at(text.len() - 1);
    let amount: u64 = digits.parse().map_err(|_| bad())?;
    let timeout = match unit {
        "H" => Duration::from_secs(amount.saturating_mul(3600)),
        "M" => Duration::from_secs(amount.saturating_mul(60)),
        "S" => Duration::from_secs(amount),
        "m" => Duration::from_millis(amount),
        "u" => Duration::from_micros(amount),
        "n" => Duration::from_nanos(amount),
        _ => return Err(bad()),
    };
    Ok(Instant::now().checked_add(timeout))
}

/// A routing key for requests without a user id: successive requests spread
/// over the split's variants by weight.
pub fn anonymous_routing_key() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// A batching key no other request shares (for generic models whose shared
/// inputs cannot be compared cheaply).
pub fn unique_batch_key() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1 << 63);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// Runs `work` (the same request on the shadow version) in the background
/// and counts its outcome; the client never waits for it.
pub fn shadow<T: Send + 'static>(
    metrics: Arc<ServerMetrics>,
    model: String,
    work: impl Future<Output = Result<T>> + Send + 'static,
) {
    tokio::spawn(async move {
        let outcome = match work.await {
            Ok(_) => "ok",
            Err(Error::Overloaded(_)) => "dropped",
            Err(_) => "error",
        };
        metrics
            .shadow_requests
            .with_label_values(&[model.as_str(), outcome])
            .inc();
    });
}
