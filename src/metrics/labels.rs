//! The label values of the metrics (the enums the proxy passes in), their label sets, and
//! the tables that hold one series per value, reached through an exhaustive `match`.

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct StatusLabel {
    pub(super) status: u16,
}

/// The result of looking a session up.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum LookupResult {
    /// Active session found.
    hit,
    /// Verified cookie, session gone.
    miss,
    /// Cookie failed format or signature checks (no store access).
    invalid,
    /// The store could not answer.
    error,
}

/// Why a session ended, for `sessiongate_sessions_destroyed_total{reason}` (SPEC §13).
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum DestroyReason {
    /// The upstream's `X-Session-Destroy` for the current session.
    logout,
    /// `X-Session-Destroy: all`, `others`, `handle:`, or the admin API.
    revoke,
    /// Past `session.max_per_user`.
    limit,
    /// Idle or absolute expiry, when the proxy sees it (the memory store; `absolute_ttl_sec`).
    expired,
    /// Past the memory store's `store.max_sessions`.
    evicted,
}

impl DestroyReason {
    pub(super) const ALL: [Self; 5] = [
        Self::logout,
        Self::revoke,
        Self::limit,
        Self::expired,
        Self::evicted,
    ];
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct ReasonLabel {
    pub(super) reason: DestroyReason,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct LookupLabel {
    pub(super) result: LookupResult,
}

/// A store operation, for `sessiongate_store_seconds{op}`.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum StoreOp {
    /// Read and slide.
    load,
    /// Create if absent.
    create,
    /// Compare-and-set.
    replace,
    /// Delete.
    delete,
    /// The per-user index: join, leave, revoke (SPEC §13).
    index,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct OpLabel {
    pub(super) op: StoreOp,
}

/// Why the upstream exchange failed.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum UpstreamFailure {
    /// Could not connect or the exchange broke.
    unreachable,
    /// No response headers in time.
    timeout,
    /// Invalid session directive.
    bad_directive,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct KindLabel {
    pub(super) kind: UpstreamFailure,
    /// The upstream's `scheme://host:port`, from the config (SPEC §11: one per route).
    pub(super) upstream: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct UpstreamLabel {
    pub(super) upstream: String,
}

/// One value per [`LookupResult`], reached through an exhaustive `match`: a new variant
/// is a compile error here, never an index out of bounds at run time.
#[derive(Debug)]
pub(super) struct ByLookup<T> {
    hit: T,
    miss: T,
    invalid: T,
    error: T,
}

impl<T> ByLookup<T> {
    pub(super) fn new(mut make: impl FnMut(LookupResult) -> T) -> Self {
        Self {
            hit: make(LookupResult::hit),
            miss: make(LookupResult::miss),
            invalid: make(LookupResult::invalid),
            error: make(LookupResult::error),
        }
    }

    pub(super) fn get(&self, result: LookupResult) -> &T {
        match result {
            LookupResult::hit => &self.hit,
            LookupResult::miss => &self.miss,
            LookupResult::invalid => &self.invalid,
            LookupResult::error => &self.error,
        }
    }
}

/// One value per [`StoreOp`], like [`ByLookup`].
#[derive(Debug)]
pub(super) struct ByOp<T> {
    load: T,
    create: T,
    replace: T,
    delete: T,
    index: T,
}

impl<T> ByOp<T> {
    pub(super) fn new(mut make: impl FnMut(StoreOp) -> T) -> Self {
        Self {
            load: make(StoreOp::load),
            create: make(StoreOp::create),
            replace: make(StoreOp::replace),
            delete: make(StoreOp::delete),
            index: make(StoreOp::index),
        }
    }

    pub(super) fn get(&self, op: StoreOp) -> &T {
        match op {
            StoreOp::load => &self.load,
            StoreOp::create => &self.create,
            StoreOp::replace => &self.replace,
            StoreOp::delete => &self.delete,
            StoreOp::index => &self.index,
        }
    }
}
