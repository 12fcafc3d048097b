//! Device Bound Session Credentials on the request path (SPEC §16), when `[dbsc]` is on:
//!
//! - [`Gate::dbsc_offer`]: a response that creates a session offers registration
//!   (`Secure-Session-Registration`, with a challenge for that session);
//! - [`Gate::dbsc_endpoint`]: the registration and refresh endpoints under
//!   [`dbsc::PREFIX`], answered here and never forwarded;
//! - [`Gate::dbsc_check`]: our bound cookie is taken out of `Cookie` on every request, and a
//!   registered session without a valid one is no session for the upstream. A session that
//!   never registered costs one field check.
//!
//! The protocol is the one of the W3C draft as Chrome implements it since its second origin
//! trial (header names `Secure-Session-*`, `Sec-Secure-Session-Id`).

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::request::Parts;
use http::{Method, Response, StatusCode};
use http_body_util::{Either, Full};
use tracing::{debug, info, warn};

use super::{Body, Ctx, Gate, Lookup, plain};
use crate::cookie;
use crate::dbsc::{
    self, Binding, ChallengeError, Dbsc, Proof, ProofError, PublicKey, Purpose, session_identifier,
};
use crate::error::GateError;
use crate::metrics::StoreOp;
use crate::session::{Record, SessionId};
use crate::store::{Cas, SessionStore, StoreError};
use crate::telemetry::Outcome;

static SECURE_SESSION_REGISTRATION: HeaderName =
    HeaderName::from_static("secure-session-registration");
static SECURE_SESSION_RESPONSE: HeaderName = HeaderName::from_static("secure-session-response");
static SECURE_SESSION_CHALLENGE: HeaderName = HeaderName::from_static("secure-session-challenge");
static SEC_SECURE_SESSION_ID: HeaderName = HeaderName::from_static("sec-secure-session-id");

/// How often the compare-and-set that records a proof is retried against concurrent writers.
const CAS_ATTEMPTS: usize = 8;

/// Why a proof is not accepted.
#[derive(Debug, thiserror::Error)]
enum Refused {
    #[error("no Secure-Session-Response proof")]
    NoProof,
    #[error("the registration proof carries no public key")]
    NoKey,
    #[error(transparent)]
    Proof(#[from] ProofError),
    #[error(transparent)]
    Challenge(#[from] ChallengeError),
    #[error("the session is already registered")]
    AlreadyRegistered,
    #[error("the session is not registered with this key")]
    NotRegistered,
}

/// What recording a proof in the session came to.
enum Recorded {
    Done,
    Gone,
    Refused(Refused),
}

impl Gate {
    /// Adds the registration offer to a response that created session `id`.
    pub(super) fn dbsc_offer(&self, ctx: &Ctx, id: &SessionId, headers: &mut HeaderMap) {
        if let Some(dbsc) = &self.dbsc
            && ctx.outcome == Outcome::Created
        {
            headers.append(
                SECURE_SESSION_REGISTRATION.clone(),
                dbsc.registration_offer(id, dbsc::now_ms()),
            );
        }
    }

    /// Takes our bound cookie out of `Cookie`; a registered session without a valid one
    /// (missing, expired, forged, or another session's) becomes no session for this request.
    /// The long cookie is left alone: the browser refreshes the bound cookie and retries.
    pub(super) fn dbsc_check(&self, ctx: &mut Ctx, headers: &mut HeaderMap) {
        let Some(dbsc) = &self.dbsc else {
            return;
        };
        let bound_id = match &ctx.lookup {
            Lookup::Active { id, rec, .. } if rec.dbsc.is_some() => Some(*id),
            _ => None,
        };
        let (valid, found_rest) = match cookie::split_ours(headers, dbsc.cookie_name()) {
            None => (bound_id.is_none(), None),
            Some(found) => {
                let valid = bound_id.is_none_or(|id| {
                    found
                        .values
                        .iter()
                        .any(|v| dbsc.bound_cookie_valid(&id, v, ctx.now()))
                });
                (valid, Some(found.rest))
            }
        };
        if let Some(rest) = found_rest {
            headers.remove(header::COOKIE);
            if let Some(Ok(rest)) = rest.map(HeaderValue::from_maybe_shared) {
                headers.insert(header::COOKIE, rest);
            }
        }
        if !valid {
            debug!(
                "device-bound session without a valid bound cookie; forwarded without a session"
            );
            ctx.lookup = Lookup::Anonymous;
            ctx.outcome = Outcome::Unbound;
        }
    }

    /// Answers a request under [`dbsc::PREFIX`] (never forwarded).
    pub(super) async fn dbsc_endpoint(
        &self,
        ctx: &mut Ctx,
        dbsc: &Dbsc,
        parts: &mut Parts,
        path: &str,
    ) -> Result<Response<Body>, GateError> {
        let register = match path {
            dbsc::REGISTER_PATH => true,
            dbsc::REFRESH_PATH => false,
            _ => return Ok(plain(StatusCode::NOT_FOUND, "not found")),
        };
        if parts.method != Method::POST {
            let mut res = plain(StatusCode::METHOD_NOT_ALLOWED, "method not allowed");
            res.headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static("POST"));
            return Ok(res);
        }
        self.on_request(ctx, &mut parts.headers).await?;
        let Lookup::Active { id, rec, .. } = &ctx.lookup else {
            return Ok(if register {
                plain(StatusCode::UNAUTHORIZED, "no session to bind")
            } else {
                end_session()
            });
        };
        let (id, rec, now) = (*id, rec.clone(), ctx.now());
        if register {
            self.dbsc_register(now, dbsc, &parts.headers, id, rec).await
        } else {
            self.dbsc_refresh(now, dbsc, &parts.headers, id, rec).await
        }
    }

    /// Registration, at `now`: a proof signed with the new key over our registration challenge.
    async fn dbsc_register(
        &self,
        now: u64,
        dbsc: &Dbsc,
        headers: &HeaderMap,
        id: SessionId,
        rec: Record,
    ) -> Result<Response<Body>, GateError> {
        let checked = (|| {
            let proof = Proof::parse(
                headers
                    .get(&SECURE_SESSION_RESPONSE)
                    .ok_or(Refused::NoProof)?
                    .as_bytes(),
            )?;
            let key = proof.key().ok_or(Refused::NoKey)?.clone();
            proof.verify(&key)?;
            let issued = dbsc.check_challenge(
                proof.jti().unwrap_or_default(),
                Purpose::Register,
                &id,
                dbsc::now_ms(),
                0,
            )?;
            Ok::<_, Refused>((key, issued))
        })();
        let (key, issued) = match checked {
            Ok(v) => v,
            Err(why) => {
                info!(reason = %why, "dbsc registration refused");
                return Ok(plain(StatusCode::BAD_REQUEST, "registration refused"));
            }
        };
        let recorded = self
            .record_proof(&id, rec, now, |current| match &current.dbsc {
                Some(_) => Err(Refused::AlreadyRegistered),
                None => Ok(Binding {
                    key: key.clone(),
                    last_challenge_ms: issued,
                }),
            })
            .await?;
        Ok(match recorded {
            Recorded::Done => {
                info!(alg = key.alg(), "dbsc session registered");
                configured(dbsc, &id, now)
            }
            Recorded::Gone => plain(StatusCode::UNAUTHORIZED, "no session to bind"),
            Recorded::Refused(why) => {
                info!(reason = %why, "dbsc registration refused");
                plain(StatusCode::BAD_REQUEST, "registration refused")
            }
        })
    }

    /// Refresh: without a proof, a challenge (403); with a proof over a fresh challenge
    /// signed by the registered key, a new bound cookie.
    async fn dbsc_refresh(
        &self,
        now: u64,
        dbsc: &Dbsc,
        headers: &HeaderMap,
        id: SessionId,
        rec: Record,
    ) -> Result<Response<Body>, GateError> {
        let Some(binding) = rec.dbsc.clone() else {
            debug!("dbsc refresh for a session that is not registered; ending it");
            return Ok(end_session());
        };
        // A browser session registered with an earlier session (one the upstream has since
        // replaced by a new ID) names itself differently: it ends.
        if let Some(named) = headers.get(&SEC_SECURE_SESSION_ID)
            && named.as_bytes() != session_identifier(&id).as_bytes()
        {
            debug!("dbsc refresh names another session; ending it");
            return Ok(end_session());
        }
        let Some(response) = headers.get(&SECURE_SESSION_RESPONSE) else {
            return Ok(challenge(dbsc, &id));
        };
        let checked = (|| {
            let proof = Proof::parse(response.as_bytes())?;
            proof.verify(&binding.key)?;
            Ok::<_, Refused>(dbsc.check_challenge(
                proof.jti().unwrap_or_default(),
                Purpose::Refresh,
                &id,
                dbsc::now_ms(),
                binding.last_challenge_ms,
            )?)
        })();
        let issued = match checked {
            Ok(issued) => issued,
            Err(why) => {
                info!(reason = %why, "dbsc refresh proof refused; challenged again");
                return Ok(challenge(dbsc, &id));
            }
        };
        let recorded = self
            .record_proof(&id, rec, now, |current| {
                refreshed(current.dbsc.as_deref(), &binding.key, issued)
            })
            .await?;
        Ok(match recorded {
            Recorded::Done => configured(dbsc, &id, now),
            Recorded::Gone | Recorded::Refused(Refused::NotRegistered) => end_session(),
            Recorded::Refused(why) => {
                info!(reason = %why, "dbsc refresh proof refused; challenged again");
                challenge(dbsc, &id)
            }
        })
    }

    /// Writes the binding `next` makes of the current record, by compare-and-set from
    /// `expected`: of two requests answering one challenge, one wins and the other is
    /// refused by `next` when it sees the winner's record.
    async fn record_proof(
        &self,
        id: &SessionId,
        mut expected: Record,
        now: u64,
        next: impl Fn(&Record) -> Result<Binding, Refused>,
    ) -> Result<Recorded, GateError> {
        for _ in 0..CAS_ATTEMPTS {
            let binding = match next(&expected) {
                Ok(b) => b,
                Err(why) => return Ok(Recorded::Refused(why)),
            };
            let new = Record {
                dbsc: Some(binding.into()),
                ..expected.clone()
            };
            let ttl = self.lifetime.ttl_for(&new, now);
            match self
                .timed(
                    StoreOp::replace,
                    self.store.replace(id, &expected, &new, ttl),
                )
                .await
            {
                Ok(Cas::Applied) => return Ok(Recorded::Done),
                Ok(Cas::Changed(current)) => expected = current,
                Ok(Cas::Gone) => return Ok(Recorded::Gone),
                Err(e @ StoreError::Corrupt { .. }) => {
                    warn!(error = %e, "stored session refused while recording a dbsc proof");
                    return Ok(Recorded::Gone);
                }
                Err(e) => return Err(e.into()),
            }
        }
        Err(GateError::Store(StoreError::Contention(
            "session kept changing while a dbsc proof was recorded",
        )))
    }
}

/// The binding after a refresh proof for the challenge issued at `issued`, signed by `key`,
/// given the session's current binding.
fn refreshed(current: Option<&Binding>, key: &PublicKey, issued: u64) -> Result<Binding, Refused> {
    match current {
        Some(b) if b.key == *key && b.last_challenge_ms < issued => Ok(Binding {
            key: b.key.clone(),
            last_challenge_ms: issued,
        }),
        Some(b) if b.key == *key => Err(ChallengeError::Used.into()),
        _ => Err(Refused::NotRegistered),
    }
}

/// 200 with the session configuration and a fresh bound cookie.
fn configured(dbsc: &Dbsc, id: &SessionId, now: u64) -> Response<Body> {
    let mut res = json(StatusCode::OK, dbsc.session_config(id));
    res.headers_mut()
        .append(header::SET_COOKIE, dbsc.bound_cookie(id, now));
    res
}

/// 403 with a fresh refresh challenge for session `id`.
fn challenge(dbsc: &Dbsc, id: &SessionId) -> Response<Body> {
    let mut res = plain(StatusCode::FORBIDDEN, "proof of possession required");
    res.headers_mut().insert(
        SECURE_SESSION_CHALLENGE.clone(),
        dbsc.refresh_challenge(id, dbsc::now_ms()),
    );
    res
}

/// The draft's answer that ends the browser's device-bound session.
fn end_session() -> Response<Body> {
    json(StatusCode::OK, r#"{"continue":false}"#.to_owned())
}

fn json(status: StatusCode, body: String) -> Response<Body> {
    let mut res = Response::new(Either::Right(Full::new(Bytes::from(body))));
    *res.status_mut() = status;
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    res.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    res
}
