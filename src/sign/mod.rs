//! Signing HTTP step calls exactly as Upstash QStash signs its deliveries, and verifying such signatures.
//!
//! Pure core: no I/O, no clock and no randomness in here. The caller passes the issue time (`iat`), the
//! verification time (`now`) and the random bytes for new keys and token ids; the I/O shell supplies them.
//!
//! The `Upstash-Signature` header is a compact JWS (HS256) whose claims are, in this order,
//! `iss` (`"Upstash"`), `sub` (the exact destination URL), `exp` (`iat + 300`), `nbf` (`iat`), `iat`, `jti`
//! and `body` (base64url of the SHA-256 of the raw body, `=` padding kept). The HMAC key is the UTF-8 bytes of
//! the key string itself (`sig_…`), not a decoding of it. See `reference/qstash-signing.md` for the worked
//! example the tests reproduce byte for byte.

mod keys;
pub use keys::Keys;

use base64::Engine as _;
use base64::engine::general_purpose::{URL_SAFE, URL_SAFE_NO_PAD};
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

type HmacSha256 = Hmac<Sha256>;

/// The issuer every receiver checks.
pub const ISSUER: &str = "Upstash";

/// Seconds a token stays valid after `iat` (QStash's value).
pub const TOKEN_LIFETIME_SECS: i64 = 300;

/// base64url of `{"alg":"HS256","typ":"JWT"}`, the only JOSE header QStash sends.
const HEADER_B64: &str = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9";

const ALPHANUMERIC: &[u8; 62] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";

/// The claims of an `Upstash-Signature` token.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Claims {
    pub iss: String,
    /// The destination URL the token was issued for.
    pub sub: String,
    pub exp: i64,
    pub nbf: i64,
    pub iat: i64,
    pub jti: String,
    /// base64url of the SHA-256 of the body, as the signer wrote it (QStash keeps the `=` padding).
    pub body: String,
}

/// Why a signature was refused. The checks run in the order of the variants below, as in the TypeScript
/// `Receiver`: token shape, signature (current key, then next), `iss`, `nbf`, `exp`, `sub`, body hash.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error("no signing key to verify with; configure the current and the next signing key")]
    NoKeys,
    #[error("malformed `Upstash-Signature` token: {reason}")]
    Malformed { reason: String },
    #[error("`Upstash-Signature` token uses algorithm `{alg}`; only `HS256` is accepted")]
    UnsupportedAlgorithm { alg: String },
    #[error("`Upstash-Signature` does not match the current or the next signing key")]
    BadSignature,
    #[error("`Upstash-Signature` token lacks the `{claim}` claim or it has the wrong type")]
    InvalidClaim { claim: &'static str },
    #[error("`Upstash-Signature` token was issued by `{iss}`, not `Upstash`")]
    Issuer { iss: String },
    #[error(
        "`Upstash-Signature` token is not valid before {nbf} (now {now}); check the signer's clock"
    )]
    NotYetValid { nbf: i64, now: i64 },
    #[error("`Upstash-Signature` token expired at {exp} (now {now})")]
    Expired { exp: i64, now: i64 },
    #[error("`Upstash-Signature` token is for `{sub}`, not `{url}`")]
    Subject { sub: String, url: String },
    #[error(
        "body does not match the `Upstash-Signature` token: hash `{computed}`, token says `{claimed}`"
    )]
    BodyHash { claimed: String, computed: String },
}

/// HS256 compact JWS exactly as QStash: header `{"alg":"HS256","typ":"JWT"}`, claims in this order
/// `iss` `"Upstash"`, `sub` = url, `exp` = iat+300, `nbf` = iat, `iat`, `jti`, `body` = base64url(SHA-256(body))
/// with `=` padding. HMAC key = the UTF-8 bytes of the key string.
pub fn sign(key: &str, url: &str, body: &[u8], iat: i64, jti: &str) -> String {
    let payload = format!(
        r#"{{"iss":{},"sub":{},"exp":{},"nbf":{iat},"iat":{iat},"jti":{},"body":{}}}"#,
        json_string(ISSUER),
        json_string(url),
        iat.saturating_add(TOKEN_LIFETIME_SECS),
        json_string(jti),
        json_string(&body_hash(body)),
    );
    sign_payload(key, &payload)
}

/// base64url (URL alphabet, `=` padding kept) of the SHA-256 of `body`: the `body` claim.
pub fn body_hash(body: &[u8]) -> String {
    URL_SAFE.encode(Sha256::digest(body))
}

/// Verifies an `Upstash-Signature` token with the rules of the TypeScript `Receiver` of `@upstash/qstash`:
/// the signature must match one of `keys` (current first, then next); `iss` must be `Upstash`; `nbf <= now`
/// and `now < exp`, with no clock tolerance; `sub` must equal `url` when one is given; and the body hash must
/// match, compared with `=` padding stripped.
///
/// Stricter than that `Receiver` in two ways, both of which QStash tokens always satisfy: only `HS256` is
/// accepted (as in the Python receiver) and all seven claims must be present with their JSON types.
pub fn verify(
    token: &str,
    keys: &[&str],
    url: Option<&str>,
    body: &[u8],
    now: i64,
) -> Result<Claims, VerifyError> {
    if keys.is_empty() {
        return Err(VerifyError::NoKeys);
    }
    let malformed = |reason: &str| VerifyError::Malformed {
        reason: reason.to_owned(),
    };
    let mut parts = token.split('.');
    let (Some(header_b64), Some(payload_b64), Some(signature_b64), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(malformed("expected three `.`-separated parts"));
    };

    let header =
        decode_json_object(header_b64).ok_or_else(|| malformed("header is not base64url JSON"))?;
    match header.get("alg") {
        Some(serde_json::Value::String(alg)) if alg == "HS256" => {}
        Some(serde_json::Value::String(alg)) => {
            return Err(VerifyError::UnsupportedAlgorithm { alg: alg.clone() });
        }
        _ => return Err(malformed("header has no `alg`")),
    }
    let signature =
        decode_b64url(signature_b64).ok_or_else(|| malformed("signature is not base64url"))?;
    let signing_input = &token[..header_b64.len() + 1 + payload_b64.len()];
    let key_matches = keys.iter().any(|key| {
        let mut mac = hmac_for(key);
        mac.update(signing_input.as_bytes());
        mac.verify_slice(&signature).is_ok()
    });
    if !key_matches {
        return Err(VerifyError::BadSignature);
    }

    let payload = decode_json_object(payload_b64)
        .ok_or_else(|| malformed("payload is not base64url JSON"))?;
    let string = |claim: &'static str| match payload.get(claim) {
        Some(serde_json::Value::String(s)) => Ok(s.clone()),
        _ => Err(VerifyError::InvalidClaim { claim }),
    };
    let integer = |claim: &'static str| {
        payload
            .get(claim)
            .and_then(serde_json::Value::as_i64)
            .ok_or(VerifyError::InvalidClaim { claim })
    };
    let claims = Claims {
        iss: string("iss")?,
        sub: string("sub")?,
        exp: integer("exp")?,
        nbf: integer("nbf")?,
        iat: integer("iat")?,
        jti: string("jti")?,
        body: string("body")?,
    };

    if claims.iss != ISSUER {
        return Err(VerifyError::Issuer { iss: claims.iss });
    }
    if claims.nbf > now {
        return Err(VerifyError::NotYetValid {
            nbf: claims.nbf,
            now,
        });
    }
    if claims.exp <= now {
        return Err(VerifyError::Expired {
            exp: claims.exp,
            now,
        });
    }
    if let Some(url) = url
        && claims.sub != url
    {
        return Err(VerifyError::Subject {
            sub: claims.sub,
            url: url.to_owned(),
        });
    }
    let computed = body_hash(body);
    if claims.body.trim_end_matches('=') != computed.trim_end_matches('=') {
        return Err(VerifyError::BodyHash {
            claimed: claims.body,
            computed,
        });
    }
    Ok(claims)
}

/// A new signing key, `sig_` followed by 28 characters from `[A-Za-z0-9]` (QStash's shape), made from
/// caller-provided random bytes. The 28 characters are the low base-62 digits of the 256-bit number, so they
/// carry ~166 bits and are uniform to within 2^-89.
pub fn key_from_random(bytes: [u8; 32]) -> String {
    format!("sig_{}", base62(&bytes, 28))
}

/// A new token id, `jwt_` followed by 32 characters from `[A-Za-z0-9]` (QStash's shape). The 128 random bits
/// are spread over the 32 characters through SHA-256, so all of them are kept: each half of the digest gives
/// 16 base-62 digits (about 95 bits). One is made per call sent, so this avoids the byte-wise long division
/// of [`base62`] (a tenth of a signed call's CPU).
pub fn jti_from_random(bytes: [u8; 16]) -> String {
    let digest = Sha256::digest(bytes);
    let mut out = String::with_capacity(36);
    out.push_str("jwt_");
    for half in digest.chunks_exact(16) {
        let mut n = u128::from_be_bytes(half.try_into().expect("16 bytes"));
        for _ in 0..16 {
            out.push(char::from(ALPHANUMERIC[(n % 62) as usize]));
            n /= 62;
        }
    }
    out
}

/// Signs an already serialized claims set.
fn sign_payload(key: &str, payload: &str) -> String {
    let signing_input = format!("{HEADER_B64}.{}", URL_SAFE_NO_PAD.encode(payload));
    let mut mac = hmac_for(key);
    mac.update(signing_input.as_bytes());
    let signature = mac.finalize().into_bytes();
    format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(signature))
}

fn hmac_for(key: &str) -> HmacSha256 {
    HmacSha256::new_from_slice(key.as_bytes()).expect("HMAC-SHA256 accepts keys of any length")
}

fn json_string(s: &str) -> String {
    serde_json::to_string(s).expect("serializing a string to JSON cannot fail")
}

/// base64url without padding; trailing `=` tolerated, as `jose` does.
fn decode_b64url(part: &str) -> Option<Vec<u8>> {
    URL_SAFE_NO_PAD.decode(part.trim_end_matches('=')).ok()
}

fn decode_json_object(part: &str) -> Option<serde_json::Map<String, serde_json::Value>> {
    match serde_json::from_slice(&decode_b64url(part)?).ok()? {
        serde_json::Value::Object(map) => Some(map),
        _ => None,
    }
}

/// The `len` least significant base-62 digits of the big-endian number `bytes`, least significant first.
fn base62(bytes: &[u8], len: usize) -> String {
    let mut number = bytes.to_vec();
    let mut out = String::with_capacity(len);
    for _ in 0..len {
        let mut remainder = 0u32;
        for byte in &mut number {
            let current = remainder * 256 + u32::from(*byte);
            *byte = u8::try_from(current / 62).expect("current < 62 * 256, so current / 62 < 256");
            remainder = current % 62;
        }
        out.push(char::from(ALPHANUMERIC[remainder as usize]));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    // reference/qstash-signing.md, worked example.
    const KEY: &str = "sig_7kYjw48mhY7kAjqNGcy6cr29RJ6r";
    const NEXT_KEY: &str = "sig_5ZB6DVzB1wjE8S6rZ7eenA8Pdnhs";
    const URL: &str = "https://example.com/api/hook";
    const BODY: &[u8] = br#"{"hello":"world"}"#;
    const IAT: i64 = 1_795_297_788;
    const JTI: &str = "jwt_2mZq8FJ6n1vXc3R7yT4wK9pL0aBd";
    const PAYLOAD: &str = r#"{"iss":"Upstash","sub":"https://example.com/api/hook","exp":1795298088,"nbf":1795297788,"iat":1795297788,"jti":"jwt_2mZq8FJ6n1vXc3R7yT4wK9pL0aBd","body":"k6I5cakU5erL8KjSUVTNownDwccvu5kU1Hxg88toFYg="}"#;
    const TOKEN: &str = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJpc3MiOiJVcHN0YXNoIiwic3ViIjoiaHR0cHM6Ly9leGFtcGxlLmNvbS9hcGkvaG9vayIsImV4cCI6MTc5NTI5ODA4OCwibmJmIjoxNzk1Mjk3Nzg4LCJpYXQiOjE3OTUyOTc3ODgsImp0aSI6Imp3dF8ybVpxOEZKNm4xdlhjM1I3eVQ0d0s5cEwwYUJkIiwiYm9keSI6Ims2STVjYWtVNWVyTDhLalNVVlROb3duRHdjY3Z1NWtVMUh4Zzg4dG9GWWc9In0.bFk6bDlGR2SVG-z6wZc_ZEzFY1Gs2I0HVMGhLxszE_U";

    fn payload_of(token: &str) -> String {
        let part = token.split('.').nth(1).expect("three parts");
        String::from_utf8(URL_SAFE_NO_PAD.decode(part).expect("base64url")).expect("UTF-8")
    }

    #[test]
    fn worked_example_byte_for_byte() {
        assert_eq!(
            body_hash(BODY),
            "k6I5cakU5erL8KjSUVTNownDwccvu5kU1Hxg88toFYg="
        );
        let token = sign(KEY, URL, BODY, IAT, JTI);
        assert_eq!(payload_of(&token), PAYLOAD);
        assert_eq!(token, TOKEN);
        assert_eq!(
            URL_SAFE_NO_PAD.decode(HEADER_B64).unwrap(),
            br#"{"alg":"HS256","typ":"JWT"}"#
        );
    }

    #[test]
    fn verify_round_trip() {
        let claims = verify(TOKEN, &[KEY, NEXT_KEY], Some(URL), BODY, IAT).unwrap();
        assert_eq!(
            claims,
            Claims {
                iss: "Upstash".into(),
                sub: URL.into(),
                exp: IAT + 300,
                nbf: IAT,
                iat: IAT,
                jti: JTI.into(),
                body: "k6I5cakU5erL8KjSUVTNownDwccvu5kU1Hxg88toFYg=".into(),
            }
        );
        // Without a URL the subject is not checked, as in the TypeScript Receiver.
        assert!(verify(TOKEN, &[KEY], None, BODY, IAT).is_ok());
        assert!(verify(TOKEN, &[KEY], None, BODY, IAT + 299).is_ok());
    }

    #[test]
    fn verify_rejections() {
        let other_key = key_from_random([7; 32]);
        // (name, keys, url, body, now, expected error)
        type Case<'a> = (
            &'a str,
            &'a [&'a str],
            Option<&'a str>,
            &'a [u8],
            i64,
            VerifyError,
        );
        let cases: &[Case] = &[
            (
                "changed body",
                &[KEY],
                Some(URL),
                br#"{"hello":"world!"}"#,
                IAT,
                VerifyError::BodyHash {
                    claimed: "k6I5cakU5erL8KjSUVTNownDwccvu5kU1Hxg88toFYg=".into(),
                    computed: body_hash(br#"{"hello":"world!"}"#),
                },
            ),
            (
                "other url (trailing slash)",
                &[KEY],
                Some("https://example.com/api/hook/"),
                BODY,
                IAT,
                VerifyError::Subject {
                    sub: URL.into(),
                    url: "https://example.com/api/hook/".into(),
                },
            ),
            (
                "expired exactly at exp",
                &[KEY],
                Some(URL),
                BODY,
                IAT + 300,
                VerifyError::Expired {
                    exp: IAT + 300,
                    now: IAT + 300,
                },
            ),
            (
                "nbf in the future",
                &[KEY],
                Some(URL),
                BODY,
                IAT - 1,
                VerifyError::NotYetValid {
                    nbf: IAT,
                    now: IAT - 1,
                },
            ),
            (
                "unrelated key",
                &[&other_key],
                Some(URL),
                BODY,
                IAT,
                VerifyError::BadSignature,
            ),
            (
                "unrelated current and next keys",
                &[&other_key, "sig_x"],
                Some(URL),
                BODY,
                IAT,
                VerifyError::BadSignature,
            ),
            ("no keys", &[], Some(URL), BODY, IAT, VerifyError::NoKeys),
        ];
        for (name, keys, url, body, now, want) in cases {
            assert_eq!(
                verify(TOKEN, keys, *url, body, *now).as_ref(),
                Err(want),
                "{name}"
            );
        }
    }

    #[test]
    fn verify_rejects_other_issuer_and_bad_claims() {
        let hash = body_hash(BODY);
        let cases = [
            (
                format!(
                    r#"{{"iss":"Upstash2","sub":"{URL}","exp":{},"nbf":{IAT},"iat":{IAT},"jti":"j","body":"{hash}"}}"#,
                    IAT + 300
                ),
                VerifyError::Issuer {
                    iss: "Upstash2".into(),
                },
            ),
            (
                format!(
                    r#"{{"iss":"Upstash","sub":"{URL}","nbf":{IAT},"iat":{IAT},"jti":"j","body":"{hash}"}}"#
                ),
                VerifyError::InvalidClaim { claim: "exp" },
            ),
            (
                format!(
                    r#"{{"iss":"Upstash","sub":"{URL}","exp":"{}","nbf":{IAT},"iat":{IAT},"jti":"j","body":"{hash}"}}"#,
                    IAT + 300
                ),
                VerifyError::InvalidClaim { claim: "exp" },
            ),
            (
                "[1,2]".to_owned(),
                VerifyError::Malformed {
                    reason: "payload is not base64url JSON".into(),
                },
            ),
        ];
        for (payload, want) in cases {
            let token = sign_payload(KEY, &payload);
            assert_eq!(
                verify(&token, &[KEY], Some(URL), BODY, IAT),
                Err(want),
                "{payload}"
            );
        }
    }

    #[test]
    fn verify_accepts_next_key_and_unpadded_body_hash() {
        let signed_with_next = sign(NEXT_KEY, URL, BODY, IAT, JTI);
        assert!(verify(&signed_with_next, &[KEY, NEXT_KEY], Some(URL), BODY, IAT).is_ok());
        assert_eq!(
            verify(&signed_with_next, &[KEY], Some(URL), BODY, IAT),
            Err(VerifyError::BadSignature)
        );
        assert!(verify(TOKEN, &[NEXT_KEY, KEY], Some(URL), BODY, IAT).is_ok());

        // Receivers strip `=` before comparing, so a signer that omits the padding is accepted too.
        let unpadded = format!(
            r#"{{"iss":"Upstash","sub":"{URL}","exp":{},"nbf":{IAT},"iat":{IAT},"jti":"j","body":"{}"}}"#,
            IAT + 300,
            body_hash(BODY).trim_end_matches('=')
        );
        assert!(verify(&sign_payload(KEY, &unpadded), &[KEY], Some(URL), BODY, IAT).is_ok());
    }

    #[test]
    fn verify_rejects_malformed_tokens_and_other_algorithms() {
        let [header, payload, signature]: [&str; 3] =
            TOKEN.split('.').collect::<Vec<_>>().try_into().unwrap();
        let hs512 = URL_SAFE_NO_PAD.encode(r#"{"alg":"HS512","typ":"JWT"}"#);
        let none = URL_SAFE_NO_PAD.encode(r#"{"alg":"none","typ":"JWT"}"#);
        let cases = [
            (String::new(), "malformed"),
            (format!("{header}.{payload}"), "malformed"),
            (format!("{TOKEN}.x"), "malformed"),
            (format!("!!.{payload}.{signature}"), "malformed"),
            (format!("{header}.{payload}.!!"), "malformed"),
            (format!("{hs512}.{payload}.{signature}"), "alg HS512"),
            (format!("{none}.{payload}."), "alg none"),
            (format!("{header}.{payload}x.{signature}"), "bad signature"),
        ];
        for (token, want) in cases {
            let got = verify(&token, &[KEY], Some(URL), BODY, IAT);
            let ok = match want {
                "malformed" => matches!(got, Err(VerifyError::Malformed { .. })),
                "alg HS512" => {
                    got == Err(VerifyError::UnsupportedAlgorithm {
                        alg: "HS512".into(),
                    })
                }
                "alg none" => got == Err(VerifyError::UnsupportedAlgorithm { alg: "none".into() }),
                _ => got == Err(VerifyError::BadSignature),
            };
            assert!(ok, "{token:?}: want {want}, got {got:?}");
        }
    }

    #[test]
    fn urls_are_json_escaped_and_kept_exactly() {
        for url in [
            "https://example.com/a?b=1&c=%20d#frag",
            r#"https://example.com/"quoted"\back"#,
            "https://exämple.com/ünïcode/\u{2028}",
        ] {
            let token = sign(KEY, url, b"", IAT, JTI);
            let payload: serde_json::Value = serde_json::from_str(&payload_of(&token)).unwrap();
            assert_eq!(payload["sub"], url);
            assert_eq!(
                verify(&token, &[KEY], Some(url), b"", IAT).unwrap().sub,
                url
            );
        }
    }

    #[test]
    fn body_hash_of_empty_body() {
        assert_eq!(
            body_hash(b""),
            "47DEQpj8HBSa-_TImW-5JCeuQeRkm5NMpJWZG3hSuFU="
        );
    }

    #[test]
    fn generated_keys_and_ids_have_qstash_shape() {
        let cases: [[u8; 32]; 4] = [
            [0; 32],
            [255; 32],
            [1; 32],
            core::array::from_fn(|i| i as u8),
        ];
        let mut seen = std::collections::HashSet::new();
        for bytes in cases {
            let key = key_from_random(bytes);
            assert_eq!(key.len(), 32, "{key}");
            assert!(key.starts_with("sig_"), "{key}");
            assert!(key[4..].bytes().all(|b| b.is_ascii_alphanumeric()), "{key}");
            assert_eq!(key, key_from_random(bytes), "deterministic");
            assert!(seen.insert(key));

            let jti = jti_from_random(bytes[..16].try_into().unwrap());
            assert_eq!(jti.len(), 36, "{jti}");
            assert!(jti.starts_with("jwt_"), "{jti}");
            assert!(jti[4..].bytes().all(|b| b.is_ascii_alphanumeric()), "{jti}");
            assert!(seen.insert(jti));
        }
        assert_eq!(key_from_random([0; 32]), format!("sig_{}", "A".repeat(28)));
        // 61 = `9`, the last digit; 62 carries into the second digit.
        let mut bytes = [0; 32];
        bytes[31] = 61;
        assert_eq!(key_from_random(bytes), format!("sig_9{}", "A".repeat(27)));
        bytes[31] = 62;
        assert_eq!(key_from_random(bytes), format!("sig_AB{}", "A".repeat(26)));
    }

    #[test]
    fn generated_key_characters_are_roughly_uniform() {
        // A cheap bias check over deterministic pseudo-random input (the digits are exact, not sampled).
        let mut counts = [0u32; 62];
        let mut state = [0u8; 32];
        for i in 0..2000u32 {
            state = Sha256::digest([&state[..], &i.to_le_bytes()].concat()).into();
            for c in key_from_random(state)[4..].bytes() {
                let index = ALPHANUMERIC.iter().position(|&a| a == c).unwrap();
                counts[index] += 1;
            }
        }
        let expected = 2000 * 28 / 62; // ≈ 903
        for (i, count) in counts.iter().enumerate() {
            assert!(
                (expected * 8 / 10..expected * 12 / 10).contains(count),
                "{}: {count}",
                ALPHANUMERIC[i] as char
            );
        }
    }
}
