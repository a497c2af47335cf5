//! The API token: what is accepted as one at start (`check_token`), how a request presents it
//! (`bearer`), and comparing the two in constant time (`ApiToken::matches`).

use axum::http::HeaderValue;
use sha2::{Digest, Sha256};
use std::net::SocketAddr;

/// The shortest token accepted when the daemon listens beyond loopback.
pub const MIN_TOKEN_CHARS: usize = 16;

/// The token requests must present. Only its SHA-256 digest is kept: a presented token is
/// hashed and the two digests compared in full, so the time taken says nothing about how much
/// of it was right, nor about the token's length.
#[derive(Clone)]
pub struct ApiToken {
    digest: [u8; 32],
}

impl std::fmt::Debug for ApiToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ApiToken(…)")
    }
}

impl ApiToken {
    pub fn new(token: &str) -> ApiToken {
        ApiToken {
            digest: Sha256::digest(token.as_bytes()).into(),
        }
    }

    pub fn matches(&self, given: &str) -> bool {
        let given: [u8; 32] = Sha256::digest(given.as_bytes()).into();
        let diff = given
            .iter()
            .zip(self.digest.iter())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b));
        std::hint::black_box(diff) == 0
    }
}

/// The token of an `Authorization: Bearer …` header. The scheme is case-insensitive (RFC 7235).
pub fn bearer(header: Option<&HeaderValue>) -> Option<&str> {
    let value = header?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim_start_matches(' '))
}

/// Checks the configured token before anything listens: None when there is none (allowed on
/// loopback only). A token must be one a client can send (no whitespace at its ends, no control
/// or non-ASCII characters: an `Authorization` header cannot carry them), and beyond loopback a
/// real secret of at least [`MIN_TOKEN_CHARS`] characters.
pub fn check_token(listen: SocketAddr, token: Option<&str>) -> Result<Option<ApiToken>, String> {
    let token = token.filter(|t| !t.is_empty());
    let beyond_loopback = !listen.ip().is_loopback();
    let Some(token) = token else {
        if beyond_loopback {
            return Err(format!(
                "refusing to listen on {listen} without an API token: set RUNNER_API_TOKEN to a secret of {MIN_TOKEN_CHARS} characters or more (e.g. `openssl rand -hex 32`), or listen on 127.0.0.1"
            ));
        }
        return Ok(None);
    };
    if token.trim().is_empty() {
        return Err(
            "RUNNER_API_TOKEN is only whitespace: set a real secret (e.g. `openssl rand -hex 32`), or unset it to listen on 127.0.0.1 without one"
                .to_string(),
        );
    }
    if token.trim() != token {
        return Err("RUNNER_API_TOKEN starts or ends with whitespace, which no client can send in an `Authorization` header: remove it".to_string());
    }
    if token.chars().any(|c| !(c == ' ' || c.is_ascii_graphic())) {
        return Err("RUNNER_API_TOKEN has a control or non-ASCII character, which an `Authorization` header cannot carry: use letters, digits and punctuation".to_string());
    }
    let chars = token.chars().count();
    if beyond_loopback && chars < MIN_TOKEN_CHARS {
        return Err(format!(
            "RUNNER_API_TOKEN is {chars} character{} long; listening on {listen} needs a real secret of {MIN_TOKEN_CHARS} characters or more (e.g. `openssl rand -hex 32`)",
            if chars == 1 { "" } else { "s" }
        ));
    }
    Ok(Some(ApiToken::new(token)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_match_only_when_equal() {
        let t = ApiToken::new("s3cret-s3cret-s3cret");
        assert!(t.matches("s3cret-s3cret-s3cret"));
        for other in [
            "",
            "s",
            "s3cret-s3cret-s3cre",
            "s3cret-s3cret-s3cret ",
            "S3cret-s3cret-s3cret",
        ] {
            assert!(!t.matches(other), "{other:?}");
        }
        assert_eq!(format!("{t:?}"), "ApiToken(…)", "never printed");
    }

    #[test]
    fn the_bearer_scheme_is_case_insensitive() {
        let h = |s: &'static str| HeaderValue::from_static(s);
        for (value, want) in [
            ("Bearer abc", Some("abc")),
            ("bearer abc", Some("abc")),
            ("BEARER abc", Some("abc")),
            ("Bearer   abc", Some("abc")),
            ("Basic abc", None),
            ("Bearerabc", None),
            ("abc", None),
        ] {
            assert_eq!(bearer(Some(&h(value))), want, "{value:?}");
        }
        assert_eq!(bearer(None), None);
    }

    #[test]
    fn a_real_secret_is_required_beyond_loopback() {
        let any: SocketAddr = "0.0.0.0:8080".parse().expect("addr");
        let local: SocketAddr = "127.0.0.1:8080".parse().expect("addr");
        let long = "0123456789abcdef";
        assert!(check_token(any, Some(long)).is_ok_and(|t| t.is_some()));
        assert!(
            check_token(local, Some("x")).is_ok_and(|t| t.is_some()),
            "short is fine on loopback"
        );
        assert!(check_token(local, None).is_ok_and(|t| t.is_none()));
        assert!(
            check_token(local, Some("")).is_ok_and(|t| t.is_none()),
            "empty is unset"
        );
        for (addr, token, says) in [
            (any, None, "without an API token"),
            (any, Some(""), "without an API token"),
            (any, Some("x"), "1 character long"),
            (any, Some("0123456789abcde"), "15 characters long"),
            (any, Some("                "), "only whitespace"),
            (local, Some(" \t "), "only whitespace"),
            (
                any,
                Some(" 0123456789abcdef"),
                "starts or ends with whitespace",
            ),
            (
                local,
                Some("0123456789abcdef\n"),
                "starts or ends with whitespace",
            ),
            (any, Some("0123456789\u{1}abcdef"), "control or non-ASCII"),
            (any, Some("0123456789abcdéf"), "control or non-ASCII"),
        ] {
            let e = check_token(addr, token).expect_err(&format!("{token:?} on {addr}"));
            assert!(e.contains(says), "{token:?} on {addr}: {e}");
        }
    }
}
