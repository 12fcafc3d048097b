//! `[forward]`: the token header and the plain headers rendered from session fields, none
//! of which may be a header the proxy manages itself.

use http::HeaderName;

use super::Validator;
use crate::config::{ConfigError, ForwardSettings, RawForward};

impl Validator<'_> {
    /// Checks `[forward]`.
    pub(super) fn forward(&self, raw: RawForward) -> Result<ForwardSettings, ConfigError> {
        let header = self.header_name("forward.header", &raw.header)?;
        if raw.token_ttl_sec == 0 {
            return Err(self.err("forward.token_ttl_sec", "must be greater than 0"));
        }
        let mut headers = Vec::with_capacity(raw.headers.len());
        for (name, field) in &raw.headers {
            let key = format!("forward.headers{{{name}}}");
            let h = self.header_name(&key, name)?;
            if h == header {
                return Err(self.err(&key, "is already the token header forward.header"));
            }
            if field.is_empty() {
                return Err(self.err(&key, "names an empty session field"));
            }
            headers.push((h, field.clone()));
        }
        Ok(ForwardSettings {
            header,
            token_ttl_sec: raw.token_ttl_sec,
            headers,
        })
    }

    fn header_name(&self, key: &str, name: &str) -> Result<HeaderName, ConfigError> {
        let h = HeaderName::try_from(name)
            .map_err(|_| self.err(key, format!("{name:?} is not a valid header name")))?;
        if crate::protocol::is_hop_by_hop(&h)
            || matches!(
                h.as_str(),
                "host"
                    | "cookie"
                    | "content-length"
                    | "x-forwarded-for"
                    | "x-forwarded-proto"
                    | "x-forwarded-host"
            )
        {
            return Err(self.err(
                key,
                format!("{name:?} is a header the proxy manages itself"),
            ));
        }
        Ok(h)
    }
}

#[cfg(test)]
mod tests {
    use crate::config::tests::{MIN, parse_str};

    #[test]
    fn reserved_header_names_are_refused_for_forwarding() {
        let err = parse_str(&format!("{MIN}[forward]\nheader = \"Cookie\"\n")).unwrap_err();
        assert!(
            err.contains("forward.header: \"Cookie\" is a header the proxy manages"),
            "{err}"
        );
    }
}
