//! `/metrics`: Prometheus text for a process' own registry plus the default
//! registry (the process collector, and Ballista's scheduler metrics).

use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use prometheus::{Encoder, Registry, TextEncoder};

/// Prometheus text of `registry` followed by the default registry.
pub fn encode(registry: &Registry) -> Result<String, prometheus::Error> {
    let mut families = registry.gather();
    families.extend(prometheus::gather());
    let mut out = Vec::new();
    TextEncoder::new().encode(&families, &mut out)?;
    Ok(String::from_utf8_lossy(&out).into_owned())
}

/// The HTTP answer for `/metrics`: the text, or a 500 naming the failure.
pub fn response(text: Result<String, prometheus::Error>) -> Response {
    match text {
        Ok(text) => ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response(),
    }
}
