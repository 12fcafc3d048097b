//! Failures the proxy answers for itself (SPEC §8). The source of a failure picks the
//! status, in one exhaustive `match`; the client gets one short plain-text line and the log
//! gets the detail.

use http::StatusCode;

use crate::protocol::DirectiveError;
use crate::store::StoreError;

/// A request the proxy could not complete.
#[derive(Debug, thiserror::Error)]
pub enum GateError {
    /// The upstream could not be reached or broke the exchange.
    #[error("upstream request failed: {0}")]
    Upstream(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The client's request body broke off or was malformed while being forwarded.
    #[error("client request body failed: {0}")]
    ClientBody(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The upstream did not send response headers within `server.upstream_timeout_ms`.
    #[error("upstream did not answer within {0:?}")]
    UpstreamTimeout(std::time::Duration),
    /// The upstream sent an invalid session directive; nothing was applied.
    #[error("rejected session directive from upstream: {0}")]
    BadDirective(#[from] DirectiveError),
    /// The session store failed.
    #[error("session store failed: {0}")]
    Store(#[from] StoreError),
}

impl GateError {
    /// The status the client sees.
    pub fn status(&self) -> StatusCode {
        match self {
            GateError::ClientBody(_) => StatusCode::BAD_REQUEST,
            GateError::Upstream(_) | GateError::BadDirective(_) => StatusCode::BAD_GATEWAY,
            GateError::UpstreamTimeout(_) => StatusCode::GATEWAY_TIMEOUT,
            GateError::Store(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// The one-line body the client sees; never carries detail from inside.
    pub fn public_message(&self) -> &'static str {
        match self {
            GateError::ClientBody(_) => "bad request: malformed request body\n",
            GateError::Upstream(_) => "bad gateway: upstream unreachable\n",
            GateError::UpstreamTimeout(_) => "gateway timeout: upstream did not answer in time\n",
            GateError::BadDirective(_) => "bad gateway: invalid session header from upstream\n",
            GateError::Store(_) => "service unavailable: session store unavailable\n",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_follow_the_source() {
        let e = GateError::UpstreamTimeout(std::time::Duration::from_secs(1));
        assert_eq!(e.status(), StatusCode::GATEWAY_TIMEOUT);
        let e = GateError::BadDirective(DirectiveError::NotObject {
            header: "X-Session-Set",
        });
        assert_eq!(e.status(), StatusCode::BAD_GATEWAY);
        let e = GateError::Store(StoreError::Timeout(std::time::Duration::from_secs(1)));
        assert_eq!(e.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(e.public_message().ends_with('\n') && e.public_message().lines().count() == 1);
    }
}
