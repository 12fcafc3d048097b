//! Failures the proxy answers for itself (SPEC §8). The source of a failure picks the
//! status, in one exhaustive `match`; the client gets one short plain-text line and the log
//! gets the detail.
//!
//! Every message carries its cause in its own text and no variant reports it again as
//! `source()`, so the one line logged or printed holds each cause once.

use http::StatusCode;

use crate::protocol::DirectiveError;
use crate::route::PathError;
use crate::store::StoreError;

/// What the proxy refuses in a request's head before anything else (SPEC §5, §11).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BadRequest {
    /// The path cannot be normalized safely.
    #[error("request path refused: {0}")]
    Path(#[from] PathError),
    /// More than one `Host` line (RFC 9112 §3.2).
    #[error("more than one Host header")]
    DuplicateHost,
    /// `Host` names another authority than the absolute-form target (or `:authority`).
    #[error("the Host header disagrees with the authority of the request target")]
    HostMismatch,
}

/// A request the proxy could not complete.
#[derive(Debug, thiserror::Error)]
pub enum GateError {
    /// The upstream could not be reached or broke the exchange.
    #[error("upstream request failed: {0}")]
    Upstream(Box<dyn std::error::Error + Send + Sync>),
    /// The client's request body broke off or was malformed while being forwarded.
    #[error("client request body failed: {0}")]
    ClientBody(Box<dyn std::error::Error + Send + Sync>),
    /// The upstream did not send response headers within `server.upstream_timeout_ms`.
    #[error("upstream did not answer within {0:?}")]
    UpstreamTimeout(std::time::Duration),
    /// The upstream sent an invalid session directive; nothing was applied.
    #[error("rejected session directive from upstream: {0}")]
    BadDirective(DirectiveError),
    /// The session store failed.
    #[error("session store failed: {0}")]
    Store(StoreError),
    /// The request's path or Host is refused (400); the upstream never sees it.
    #[error("bad request: {0}")]
    BadRequest(BadRequest),
}

impl From<BadRequest> for GateError {
    fn from(e: BadRequest) -> Self {
        GateError::BadRequest(e)
    }
}

impl From<DirectiveError> for GateError {
    fn from(e: DirectiveError) -> Self {
        GateError::BadDirective(e)
    }
}

impl From<StoreError> for GateError {
    fn from(e: StoreError) -> Self {
        GateError::Store(e)
    }
}

impl GateError {
    /// The status the client sees.
    pub fn status(&self) -> StatusCode {
        match self {
            GateError::ClientBody(_) | GateError::BadRequest(_) => StatusCode::BAD_REQUEST,
            GateError::Upstream(_) | GateError::BadDirective(_) => StatusCode::BAD_GATEWAY,
            GateError::UpstreamTimeout(_) => StatusCode::GATEWAY_TIMEOUT,
            GateError::Store(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// The one-line body the client sees; never carries detail from inside.
    pub fn public_message(&self) -> &'static str {
        match self {
            GateError::ClientBody(_) => "bad request: malformed request body\n",
            GateError::BadRequest(BadRequest::Path(_)) => "bad request: path refused\n",
            GateError::BadRequest(BadRequest::DuplicateHost | BadRequest::HostMismatch) => {
                "bad request: conflicting Host\n"
            }
            GateError::Upstream(_) => "bad gateway: upstream unreachable\n",
            GateError::UpstreamTimeout(_) => "gateway timeout: upstream did not answer in time\n",
            GateError::BadDirective(_) => "bad gateway: invalid session header from upstream\n",
            GateError::Store(StoreError::Contention(_)) => {
                "service unavailable: session busy, try again\n"
            }
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
        let e = GateError::Store(StoreError::Contention("session kept changing"));
        assert_eq!(e.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(
            e.public_message(),
            "service unavailable: session busy, try again\n"
        );
    }

    #[test]
    fn every_cause_is_printed_once() {
        use std::error::Error as _;
        let errors = [
            GateError::Upstream("connection refused".into()),
            GateError::ClientBody("body ended early".into()),
            GateError::BadDirective(DirectiveError::NotObject {
                header: "X-Session-Set",
            }),
            GateError::Store(StoreError::Unavailable("connection refused".into())),
        ];
        for e in errors {
            assert!(e.source().is_none(), "{e} also reports a source");
            let line = e.to_string();
            assert!(
                line.contains("refused") || line.contains("ended") || line.contains("object"),
                "{line}"
            );
        }
    }
}
