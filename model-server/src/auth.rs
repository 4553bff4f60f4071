//! Optional bearer-token authentication for the gRPC services (KServe,
//! Scoring, Flight). Off by default; when a token is configured every gRPC
//! call must carry `authorization: Bearer <token>` or is answered
//! UNAUTHENTICATED. `/healthz`, `/readyz` and `/metrics` stay open, so
//! probes and Prometheus need no secret.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

/// The expected token.
#[derive(Clone)]
pub struct BearerToken(Arc<str>);

impl BearerToken {
    /// Wraps a token (already trimmed, non-empty).
    pub fn new(token: &str) -> Self {
        Self(Arc::from(token))
    }

    /// True if `header` is `Bearer <token>`, compared in constant time.
    fn accepts(&self, header: Option<&[u8]>) -> bool {
        let Some(given) = header.and_then(|h| h.strip_prefix(b"Bearer ")) else {
            return false;
        };
        let want = self.0.as_bytes();
        given.len() == want.len()
            && given
                .iter()
                .zip(want)
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0
    }
}

impl std::fmt::Debug for BearerToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BearerToken(<redacted>)")
    }
}

/// Axum middleware for the gRPC routes.
pub async fn require_bearer(
    State(token): State<BearerToken>,
    request: Request,
    next: Next,
) -> Response {
    let header = request
        .headers()
        .get(http::header::AUTHORIZATION)
        .map(|v| v.as_bytes());
    if token.accepts(header) {
        return next.run(request).await;
    }
    let message = if header.is_some() {
        "the bearer token is not valid"
    } else {
        "this server requires 'authorization: Bearer <token>'"
    };
    tonic::Status::unauthenticated(message)
        .into_http::<axum::body::Body>()
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_exact_bearer_token_is_accepted() {
        let t = BearerToken::new("s3cret");
        assert!(t.accepts(Some(b"Bearer s3cret")));
        assert!(!t.accepts(Some(b"Bearer s3cre")));
        assert!(!t.accepts(Some(b"Bearer s3cret2")));
        assert!(!t.accepts(Some(b"bearer s3cret")));
        assert!(!t.accepts(Some(b"s3cret")));
        assert!(!t.accepts(None));
        assert_eq!(format!("{t:?}"), "BearerToken(<redacted>)");
    }
}
