//! The lifetime rules of a session (SPEC §7), as pure arithmetic on Unix seconds: no clock
//! is read here, so every rule is tested on a fixed `now`.
//!
//! - idle timeout: the store entry expires `ttl_sec` after its last use (sliding);
//! - absolute limit: `absolute_ttl_sec > 0` ends a session that long after creation,
//!   whatever its activity, and the store TTL never reaches past that moment;
//! - cookie refresh: the cookie is re-sent once `cookie_refresh_sec` has passed since it was
//!   last sent, or at once when it was signed with a previous key.

use std::time::Duration;

use super::Record;

/// The lifetime settings of `[session]`, with `cookie_refresh_sec` already resolved
/// (0 in the file means `ttl_sec / 2`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lifetime {
    /// Idle timeout in seconds.
    pub ttl_sec: u64,
    /// Hard limit since creation in seconds; 0 = none.
    pub absolute_ttl_sec: u64,
    /// How long after the cookie was last sent it is sent again, in seconds.
    pub cookie_refresh_sec: u64,
}

impl Lifetime {
    /// The idle timeout as a duration.
    pub fn ttl(&self) -> Duration {
        Duration::from_secs(self.ttl_sec)
    }

    /// True when `rec` has reached `absolute_ttl_sec` at `now`: it is destroyed on use.
    pub fn is_past_absolute(&self, rec: &Record, now: u64) -> bool {
        self.absolute_ttl_sec > 0 && now.saturating_sub(rec.created) >= self.absolute_ttl_sec
    }

    /// The store TTL for `rec` written at `now`: the idle timeout, capped by what the
    /// absolute limit leaves (at least one second, so a write never expires at once).
    pub fn ttl_for(&self, rec: &Record, now: u64) -> Duration {
        if self.absolute_ttl_sec == 0 {
            return self.ttl();
        }
        let left = (rec.created + self.absolute_ttl_sec)
            .saturating_sub(now)
            .max(1);
        Duration::from_secs(left.min(self.ttl_sec))
    }

    /// True when the cookie must be re-sent on this response: it was signed with a
    /// previous key (`rotated`), or `cookie_refresh_sec` has passed since it was last sent.
    pub fn cookie_due(&self, rec: &Record, rotated: bool, now: u64) -> bool {
        rotated || now.saturating_sub(rec.cookie_sent) >= self.cookie_refresh_sec
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: u64 = 1_700_000_000;

    fn rec(created: u64, cookie_sent: u64) -> Record {
        Record {
            created,
            cookie_sent,
            data: "{}".into(),
            auth_time: None,
            dbsc: None,
        }
    }

    fn lifetime(ttl_sec: u64, absolute_ttl_sec: u64, cookie_refresh_sec: u64) -> Lifetime {
        Lifetime {
            ttl_sec,
            absolute_ttl_sec,
            cookie_refresh_sec,
        }
    }

    #[test]
    fn without_an_absolute_limit_the_ttl_is_the_idle_timeout_forever() {
        let l = lifetime(3600, 0, 1800);
        let r = rec(T0, T0);
        for now in [T0, T0 + 1, T0 + 86_400 * 365] {
            assert!(!l.is_past_absolute(&r, now));
            assert_eq!(l.ttl_for(&r, now), Duration::from_secs(3600));
        }
    }

    #[test]
    fn the_absolute_limit_caps_the_ttl_and_ends_the_session_on_the_second() {
        let l = lifetime(3600, 7200, 1800);
        let r = rec(T0, T0);
        assert_eq!(l.ttl_for(&r, T0), Duration::from_secs(3600));
        assert_eq!(l.ttl_for(&r, T0 + 5400), Duration::from_secs(1800));
        assert_eq!(l.ttl_for(&r, T0 + 7199), Duration::from_secs(1));
        assert!(!l.is_past_absolute(&r, T0 + 7199));
        assert!(l.is_past_absolute(&r, T0 + 7200));
        // Past the limit a write still gets one second, never zero (which Redis refuses).
        assert_eq!(l.ttl_for(&r, T0 + 9000), Duration::from_secs(1));
    }

    #[test]
    fn a_clock_behind_the_creation_time_never_underflows() {
        let l = lifetime(60, 120, 30);
        let r = rec(T0, T0);
        assert!(!l.is_past_absolute(&r, T0 - 10));
        assert_eq!(l.ttl_for(&r, T0 - 10), Duration::from_secs(60));
        assert!(!l.cookie_due(&r, false, T0 - 10));
    }

    #[test]
    fn the_cookie_is_due_after_the_refresh_interval_or_at_once_when_rotated() {
        let l = lifetime(3600, 0, 1800);
        let r = rec(T0, T0 + 100);
        assert!(!l.cookie_due(&r, false, T0 + 100));
        assert!(!l.cookie_due(&r, false, T0 + 1899));
        assert!(l.cookie_due(&r, false, T0 + 1900));
        assert!(l.cookie_due(&r, true, T0 + 100));
    }
}
