//! Web-identity token file bytes (written by the kubelet, or by whoever can write the volume)
//! → the token and the claims the agent reads.
//!
//! Properties, for the file as given: bytes that are not UTF-8 are refused as such; blank
//! files are refused as empty; any other file yields exactly its text minus surrounding
//! whitespace, never echoed by `Debug` or by an error. And for the same bytes used as the
//! payload of a JWT: the agent reads `exp` exactly when the payload is a JSON object whose
//! `exp` is a non-negative integer, whatever the padding, and its freshness is consistent.
#![no_main]

use std::path::Path;
use std::time::{Duration, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::{URL_SAFE, URL_SAFE_NO_PAD};
use credvend::agent::token::{self, TokenError, TokenFreshness};
use libfuzzer_sys::fuzz_target;

const PATH: &str = "/var/run/secrets/credvend.io/serviceaccount/token";

fuzz_target!(|data: &[u8]| {
    file_contents(data);
    jwt_payload(data);
});

fn file_contents(data: &[u8]) {
    let text = std::str::from_utf8(data);
    match token::from_bytes(data.to_vec(), Path::new(PATH)) {
        Ok(t) => {
            let text = text.expect("an accepted token is text");
            assert_eq!(t.expose(), text.trim());
            assert!(!t.expose().is_empty());
            assert_eq!(t.expires_at, token::jwt_expiry(t.expose()));
            // `Debug` is the redacted form, whatever the token.
            assert_eq!(
                format!("{t:?}"),
                format!(
                    "WebIdentityToken {{ token: \"[redacted]\", expires_at: {:?} }}",
                    t.expires_at
                )
            );
        }
        Err(TokenError::NotText(_)) => assert!(text.is_err()),
        Err(TokenError::Empty(_)) => assert!(text.is_ok_and(|t| t.trim().is_empty())),
        Err(other) => panic!("bytes alone cannot fail with {other}"),
    }
}

fn jwt_payload(payload: &[u8]) {
    let expected = serde_json::from_slice::<serde_json::Value>(payload)
        .ok()
        .and_then(|claims| claims.get("exp")?.as_u64())
        .and_then(|exp| UNIX_EPOCH.checked_add(Duration::from_secs(exp)));
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"RS256","kid":"k"}"#);
    for body in [URL_SAFE_NO_PAD.encode(payload), URL_SAFE.encode(payload)] {
        let jwt = format!("{header}.{body}.c2lnbmF0dXJl");
        let got = token::jwt_expiry(&jwt);
        assert_eq!(got, expected, "exp of {jwt}");
        let now = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        match (token::freshness(got, now), got) {
            (TokenFreshness::Unknown, None) => {}
            (TokenFreshness::Expired, Some(exp)) => assert!(exp < now),
            (TokenFreshness::ExpiresSoon(left), Some(exp)) => {
                assert_eq!(exp, now + left);
                assert!(left < Duration::from_secs(300));
            }
            (TokenFreshness::Fresh, Some(exp)) => assert!(exp >= now + Duration::from_secs(300)),
            (f, e) => panic!("freshness {f:?} for expiry {e:?}"),
        }
    }
}
