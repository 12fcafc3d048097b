//! File descriptors: raise the soft `RLIMIT_NOFILE` to the hard limit at start, and derive
//! the client connection ceiling (`server.max_connections = 0`) from it.
//!
//! Every client connection is one descriptor, and while it has a request in flight a
//! second one to the upstream (the pool keeps up to one per concurrent request). A fixed
//! reserve covers the rest: listeners, Redis connections, the TLS and CA files read at a
//! reload, the runtime's epoll and wake-up descriptors, stdio. So the derived ceiling is
//!
//! ```text
//! max_connections = (soft limit - RESERVE) / 2
//! ```
//!
//! which leaves every client connection room for one upstream connection; past it the
//! proxy stops accepting (the kernel's listen backlog holds new connections) instead of
//! failing accepts with `EMFILE`.

use std::io;

/// Descriptors kept for everything but client and upstream connections.
pub const RESERVE: u64 = 256;

/// The `RLIMIT_NOFILE` pair after [`raise`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NoFile {
    /// The soft limit before the raise.
    pub was: u64,
    /// The soft limit in force.
    pub soft: u64,
    /// The hard limit (the soft limit's ceiling for an unprivileged process).
    pub hard: u64,
}

/// Raises the soft descriptor limit to the hard limit (capped by the kernel's per-process
/// maximum where the platform has one).
///
/// # Errors
/// When the limit cannot be read or set.
pub fn raise() -> io::Result<NoFile> {
    let (was, hard) = current()?;
    let soft = rlimit::increase_nofile_limit(u64::MAX)?;
    Ok(NoFile { was, soft, hard })
}

/// The soft and hard descriptor limits in force.
///
/// # Errors
/// When the limit cannot be read.
pub fn current() -> io::Result<(u64, u64)> {
    rlimit::getrlimit(rlimit::Resource::NOFILE)
}

/// The client connection ceiling that a soft descriptor limit allows (see the module doc),
/// at least 1 and at most what a semaphore can count.
pub fn ceiling(soft: u64) -> usize {
    let n = soft.saturating_sub(RESERVE) / 2;
    usize::try_from(n)
        .unwrap_or(usize::MAX)
        .clamp(1, tokio::sync::Semaphore::MAX_PERMITS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ceiling_leaves_the_reserve_and_one_upstream_descriptor_per_connection() {
        assert_eq!(ceiling(1024), 384);
        assert_eq!(ceiling(1_048_576), 524_160);
        assert_eq!(ceiling(100), 1, "never zero");
        assert_eq!(ceiling(u64::MAX), tokio::sync::Semaphore::MAX_PERMITS);
    }

    #[test]
    fn raising_never_lowers_the_soft_limit() {
        let (before, hard) = current().unwrap();
        let raised = raise().unwrap();
        assert_eq!(raised.hard, hard);
        assert!(raised.soft >= before && raised.soft <= hard, "{raised:?}");
    }
}
