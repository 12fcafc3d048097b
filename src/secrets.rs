//! Secrets, read only from the environment (SPEC §2), behind the [`Env`] trait so tests
//! never touch the process environment.

use std::collections::HashMap;
use std::fmt;

/// Smallest accepted key, in bytes (SPEC §2).
pub const MIN_SECRET_BYTES: usize = 32;

/// The variable holding the cookie signing key.
pub const SESSION_SECRET: &str = "SESSION_SECRET";
/// The variable holding older cookie keys, comma-separated.
pub const SESSION_SECRET_PREVIOUS: &str = "SESSION_SECRET_PREVIOUS";
/// The variable holding the key that signs the upstream token.
pub const SESSION_UPSTREAM_SECRET: &str = "SESSION_UPSTREAM_SECRET";
/// The variable holding the admin API's bearer token (SPEC §13).
pub const SESSION_ADMIN_TOKEN: &str = "SESSION_ADMIN_TOKEN";

/// Reads environment variables.
pub trait Env {
    /// The value of `key`, or `None` when unset (or not Unicode).
    fn var(&self, key: &str) -> Option<String>;
}

/// The real process environment.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcessEnv;

impl Env for ProcessEnv {
    fn var(&self, key: &str) -> Option<String> {
        std::env::var(key).ok()
    }
}

impl Env for HashMap<String, String> {
    fn var(&self, key: &str) -> Option<String> {
        self.get(key).cloned()
    }
}

/// Key material. `Debug` never shows it.
#[derive(Clone)]
pub struct Secret(Box<[u8]>);

impl Secret {
    /// Wraps key bytes.
    pub fn new(bytes: Vec<u8>) -> Self {
        Self(bytes.into_boxed_slice())
    }

    /// The key bytes, for building a MAC.
    pub fn expose(&self) -> &[u8] {
        &self.0
    }

    /// Length in bytes, the only thing `check` prints about a secret.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// True for an empty key (never accepted by [`Secrets::from_env`]).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(..)")
    }
}

/// What is wrong with the secrets in the environment.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    /// The required variable is unset or empty.
    #[error("{var} is not set; generate one with `sessiongate gen-secret` and export it")]
    Missing {
        /// The variable.
        var: &'static str,
    },
    /// The key is shorter than [`MIN_SECRET_BYTES`].
    #[error(
        "{var} must be at least {MIN_SECRET_BYTES} bytes, got {len}; generate one with `sessiongate gen-secret`"
    )]
    TooShort {
        /// The variable.
        var: &'static str,
        /// Its length in bytes.
        len: usize,
    },
    /// One entry of the comma-separated previous keys is too short.
    #[error(
        "{SESSION_SECRET_PREVIOUS} entry {index} must be at least {MIN_SECRET_BYTES} bytes, got {len}"
    )]
    PreviousTooShort {
        /// 1-based position in the list.
        index: usize,
        /// Its length in bytes.
        len: usize,
    },
}

/// All secrets the proxy uses.
#[derive(Debug, Clone)]
pub struct Secrets {
    /// Signs cookies.
    pub session: Secret,
    /// Older cookie keys, still accepted.
    pub previous: Vec<Secret>,
    /// Signs the upstream token.
    pub upstream: Secret,
    /// False when `SESSION_UPSTREAM_SECRET` was unset and `SESSION_SECRET` is reused.
    pub upstream_is_separate: bool,
    /// The admin API's bearer token; `None` (unset or empty) turns the API off.
    pub admin_token: Option<Secret>,
}

impl Secrets {
    /// Reads and checks the secrets.
    ///
    /// # Errors
    /// When `SESSION_SECRET` is missing, or any key (or `SESSION_ADMIN_TOKEN`) is shorter
    /// than 32 bytes.
    pub fn from_env(env: &dyn Env) -> Result<Self, SecretError> {
        let session = required(env, SESSION_SECRET)?;
        let previous = match env.var(SESSION_SECRET_PREVIOUS) {
            None => Vec::new(),
            Some(list) => list
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .enumerate()
                .map(|(i, s)| {
                    if s.len() < MIN_SECRET_BYTES {
                        Err(SecretError::PreviousTooShort {
                            index: i + 1,
                            len: s.len(),
                        })
                    } else {
                        Ok(Secret::new(s.as_bytes().to_vec()))
                    }
                })
                .collect::<Result<_, _>>()?,
        };
        let (upstream, upstream_is_separate) = match env.var(SESSION_UPSTREAM_SECRET) {
            Some(v) if !v.is_empty() => (checked(SESSION_UPSTREAM_SECRET, v)?, true),
            _ => (session.clone(), false),
        };
        let admin_token = match env.var(SESSION_ADMIN_TOKEN) {
            Some(v) if !v.is_empty() => Some(checked(SESSION_ADMIN_TOKEN, v)?),
            _ => None,
        };
        Ok(Self {
            session,
            previous,
            upstream,
            upstream_is_separate,
            admin_token,
        })
    }
}

fn required(env: &dyn Env, var: &'static str) -> Result<Secret, SecretError> {
    match env.var(var) {
        Some(v) if !v.is_empty() => checked(var, v),
        _ => Err(SecretError::Missing { var }),
    }
}

fn checked(var: &'static str, v: String) -> Result<Secret, SecretError> {
    if v.len() < MIN_SECRET_BYTES {
        return Err(SecretError::TooShort { var, len: v.len() });
    }
    Ok(Secret::new(v.into_bytes()))
}

/// A fresh secret: 32 bytes from the OS CSPRNG as base64url without padding (43 characters).
pub fn generate() -> String {
    use base64::Engine as _;
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).expect("the OS random source is available");
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    const GOOD: &str = "0123456789abcdef0123456789abcdef";

    #[test]
    fn missing_and_short_secrets_name_the_variable_and_the_fix() {
        let err = Secrets::from_env(&env(&[])).unwrap_err().to_string();
        assert_eq!(
            err,
            "SESSION_SECRET is not set; generate one with `sessiongate gen-secret` and export it"
        );
        let err = Secrets::from_env(&env(&[(SESSION_SECRET, "short")]))
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "SESSION_SECRET must be at least 32 bytes, got 5; generate one with `sessiongate gen-secret`"
        );
        let err = Secrets::from_env(&env(&[
            (SESSION_SECRET, GOOD),
            (SESSION_UPSTREAM_SECRET, "x"),
        ]))
        .unwrap_err();
        assert!(matches!(
            err,
            SecretError::TooShort {
                var: SESSION_UPSTREAM_SECRET,
                len: 1
            }
        ));
        let err = Secrets::from_env(&env(&[
            (SESSION_SECRET, GOOD),
            (SESSION_SECRET_PREVIOUS, &format!("{GOOD},tiny")),
        ]))
        .unwrap_err();
        assert!(matches!(
            err,
            SecretError::PreviousTooShort { index: 2, len: 4 }
        ));
    }

    #[test]
    fn upstream_secret_defaults_to_session_secret() {
        let s = Secrets::from_env(&env(&[(SESSION_SECRET, GOOD)])).unwrap();
        assert!(!s.upstream_is_separate);
        assert_eq!(s.upstream.expose(), GOOD.as_bytes());
        assert!(s.previous.is_empty());
        assert_eq!(format!("{:?}", s.session), "Secret(..)");
    }

    #[test]
    fn the_admin_token_is_optional_but_never_short() {
        let s =
            Secrets::from_env(&env(&[(SESSION_SECRET, GOOD), (SESSION_ADMIN_TOKEN, "")])).unwrap();
        assert!(s.admin_token.is_none());
        let s = Secrets::from_env(&env(&[(SESSION_SECRET, GOOD), (SESSION_ADMIN_TOKEN, GOOD)]))
            .unwrap();
        assert_eq!(s.admin_token.map(|t| t.len()), Some(GOOD.len()));
        let err = Secrets::from_env(&env(&[
            (SESSION_SECRET, GOOD),
            (SESSION_ADMIN_TOKEN, "0123456789"),
        ]))
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "SESSION_ADMIN_TOKEN must be at least 32 bytes, got 10; generate one with `sessiongate gen-secret`"
        );
    }

    #[test]
    fn generated_secrets_are_long_url_safe_and_distinct() {
        let a = generate();
        assert_eq!(a.len(), 43);
        assert!(
            a.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        );
        assert_ne!(a, generate());
    }
}
