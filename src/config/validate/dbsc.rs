//! `[dbsc]` (SPEC §16): the bound cookie must live at least a second, and at most a day
//! (the browser proves possession of its key at least that often).

use super::Validator;
use crate::config::{ConfigError, DbscSettings, RawDbsc};

/// Longest accepted `bound_cookie_sec`: a day.
const MAX_BOUND_COOKIE_SEC: u64 = 86_400;

impl Validator<'_> {
    /// Checks `[dbsc]`.
    pub(super) fn dbsc(&self, raw: RawDbsc) -> Result<DbscSettings, ConfigError> {
        if !(1..=MAX_BOUND_COOKIE_SEC).contains(&raw.bound_cookie_sec) {
            return Err(self.err(
                "dbsc.bound_cookie_sec",
                format!(
                    "{} is out of range: the bound cookie lives 1 to {MAX_BOUND_COOKIE_SEC} seconds",
                    raw.bound_cookie_sec
                ),
            ));
        }
        Ok(DbscSettings {
            enabled: raw.enabled,
            bound_cookie_sec: raw.bound_cookie_sec,
        })
    }
}

#[cfg(test)]
mod tests {
    use crate::config::tests::{MIN, parse_str};

    #[test]
    fn defaults_are_off_with_ten_minutes() {
        let c = parse_str(MIN).unwrap();
        assert!(!c.dbsc.enabled);
        assert_eq!(c.dbsc.bound_cookie_sec, 600);
    }

    #[test]
    fn bound_cookie_sec_out_of_range_points_at_the_value() {
        for v in ["0", "86401"] {
            let err = parse_str(&format!(
                "{MIN}[dbsc]\nenabled = true\nbound_cookie_sec = {v}\n"
            ))
            .unwrap_err();
            assert!(
                err.starts_with("proxy.toml:5:20: dbsc.bound_cookie_sec: "),
                "{err}"
            );
        }
        let err = parse_str(&format!("{MIN}[dbsc]\nenable = true\n")).unwrap_err();
        assert!(
            err.starts_with("proxy.toml:4:1: unknown field `enable`"),
            "{err}"
        );
    }
}
