//! The projected service-account token: read fresh for every exchange, never logged.
//!
//! The kubelet rewrites the projected token file well before the token expires, so the agent
//! reads it again for every STS call instead of caching it. The token's `exp` claim is decoded
//! without verifying the signature (STS verifies it): only to export its expiry as a metric and
//! to warn when the kubelet apparently stopped rotating it.
//!
//! The file is read only up to what a token can be: STS accepts a `WebIdentityToken` of at
//! most 20,000 characters, and a projected service-account token is about 1 KB. A larger file
//! is refused without reading it whole and without calling STS, so a wrong mount (a log file,
//! a huge secret) costs neither the sidecar's memory nor a doomed request per attempt.

use std::io::{ErrorKind, Read};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use secrecy::{ExposeSecret, SecretString};

/// The longest token STS accepts (`AssumeRoleWithWebIdentity`'s `WebIdentityToken` limit).
pub const MAX_TOKEN_LEN: usize = 20_000;
/// Whitespace around the token that is tolerated (and dropped) beyond [`MAX_TOKEN_LEN`].
const WHITESPACE_SLACK: usize = 16;

/// A web identity token as read from its file. `Debug` shows only its expiry.
pub struct WebIdentityToken {
    token: SecretString,
    /// The unverified `exp` claim, when the token is a JWT that has one.
    pub expires_at: Option<SystemTime>,
}

impl std::fmt::Debug for WebIdentityToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebIdentityToken")
            .field("token", &"[redacted]")
            .field("expires_at", &self.expires_at)
            .finish()
    }
}

impl WebIdentityToken {
    /// The token itself, for the STS request only.
    pub fn expose(&self) -> &str {
        self.token.expose_secret()
    }
}

/// Why the token could not be used. The messages name the file, never its contents.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error(
        "web identity token file {0} does not exist; is the projected service-account token volume mounted?"
    )]
    Missing(PathBuf),
    #[error("web identity token file {path} cannot be read: {kind}")]
    Unreadable { path: PathBuf, kind: ErrorKind },
    #[error("web identity token file {0} is empty")]
    Empty(PathBuf),
    #[error("web identity token file {0} is not UTF-8 text")]
    NotText(PathBuf),
    #[error(
        "web identity token file {path} holds more than {limit} bytes, more than STS accepts in a token; is the right file mounted there?"
    )]
    TooLarge { path: PathBuf, limit: usize },
}

impl TokenError {
    /// Stable label for the `reason` of the token error metric.
    pub fn reason(&self) -> &'static str {
        match self {
            TokenError::Missing(_) => "missing",
            TokenError::Unreadable { .. } => "unreadable",
            TokenError::Empty(_) => "empty",
            TokenError::NotText(_) => "not_text",
            TokenError::TooLarge { .. } => "too_large",
        }
    }
}

/// Reads and checks the token file. Blocking I/O on a tiny file: call from a blocking context
/// or accept the microseconds.
pub fn read(path: &Path) -> Result<WebIdentityToken, TokenError> {
    let io_error = |e: std::io::Error| match e.kind() {
        ErrorKind::NotFound => TokenError::Missing(path.to_owned()),
        kind => TokenError::Unreadable {
            path: path.to_owned(),
            kind,
        },
    };
    let limit = MAX_TOKEN_LEN + WHITESPACE_SLACK;
    let file = std::fs::File::open(path).map_err(io_error)?;
    let mut bytes = Vec::new();
    // One byte more than allowed tells "too large" from "exactly at the limit".
    file.take(limit as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(io_error)?;
    if bytes.len() > limit {
        return Err(TokenError::TooLarge {
            path: path.to_owned(),
            limit: MAX_TOKEN_LEN,
        });
    }
    from_bytes(bytes, path)
}

/// Checks the file's bytes as [`read`] does once it has them; `path` only names the file in
/// errors.
pub fn from_bytes(bytes: Vec<u8>, path: &Path) -> Result<WebIdentityToken, TokenError> {
    let text = String::from_utf8(bytes).map_err(|_| TokenError::NotText(path.to_owned()))?;
    parse(text, path)
}

/// Checks the file's contents: surrounding whitespace is dropped, nothing else is changed.
pub fn parse(text: String, path: &Path) -> Result<WebIdentityToken, TokenError> {
    let trimmed = text.trim();
    if trimmed.is_empty() {
        return Err(TokenError::Empty(path.to_owned()));
    }
    if trimmed.len() > MAX_TOKEN_LEN {
        return Err(TokenError::TooLarge {
            path: path.to_owned(),
            limit: MAX_TOKEN_LEN,
        });
    }
    let expires_at = jwt_expiry(trimmed);
    let token = if trimmed.len() == text.len() {
        SecretString::from(text)
    } else {
        SecretString::from(trimmed.to_owned())
    };
    Ok(WebIdentityToken { token, expires_at })
}

/// The `exp` claim of a JWT, decoded without verifying anything. `None` when the token is
/// not a JWT or has no numeric `exp`.
pub fn jwt_expiry(token: &str) -> Option<SystemTime> {
    let payload = token.split('.').nth(1)?;
    let bytes = URL_SAFE_NO_PAD.decode(payload.trim_end_matches('=')).ok()?;
    let claims: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    let exp = claims.get("exp")?.as_u64()?;
    UNIX_EPOCH.checked_add(Duration::from_secs(exp))
}

/// How close a token is to expiring, for a log line that explains a coming failure.
#[derive(Debug, PartialEq, Eq)]
pub enum TokenFreshness {
    Fresh,
    /// Less than this much lifetime remains; the kubelet normally rotates at 80% of it.
    ExpiresSoon(Duration),
    Expired,
    Unknown,
}

/// Classifies a token's expiry relative to `now`; "soon" means under five minutes.
pub fn freshness(expires_at: Option<SystemTime>, now: SystemTime) -> TokenFreshness {
    const SOON: Duration = Duration::from_secs(300);
    match expires_at.map(|exp| exp.duration_since(now)) {
        None => TokenFreshness::Unknown,
        Some(Err(_)) => TokenFreshness::Expired,
        Some(Ok(left)) if left < SOON => TokenFreshness::ExpiresSoon(left),
        Some(Ok(_)) => TokenFreshness::Fresh,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jwt(payload: &str) -> String {
        format!(
            "{}.{}.c2ln",
            URL_SAFE_NO_PAD.encode(r#"{"alg":"RS256"}"#),
            URL_SAFE_NO_PAD.encode(payload)
        )
    }

    #[test]
    fn reads_exp_from_a_jwt_without_verifying_it() {
        let t = jwt(r#"{"aud":["sts.amazonaws.com"],"exp":1900000000,"sub":"x"}"#);
        assert_eq!(
            jwt_expiry(&t),
            Some(UNIX_EPOCH + Duration::from_secs(1_900_000_000))
        );
    }

    #[test]
    fn tokens_without_a_usable_exp_have_no_expiry() {
        for t in [
            "opaque".to_owned(),
            "a.b.c".to_owned(),
            jwt(r#"{"sub":"x"}"#),
            jwt(r#"{"exp":"soon"}"#),
            jwt("not json"),
        ] {
            assert_eq!(jwt_expiry(&t), None, "{t}");
        }
    }

    #[test]
    fn trailing_newlines_are_dropped_and_empty_files_rejected() {
        let p = Path::new("/t");
        let t = parse(format!("{}\n", jwt(r#"{"exp":1}"#)), p).unwrap();
        assert!(!t.expose().ends_with('\n'));
        assert!(matches!(parse(" \n".into(), p), Err(TokenError::Empty(_))));
    }

    #[test]
    fn file_errors_name_the_file_and_say_why() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope");
        let err = read(&missing).unwrap_err();
        assert_eq!(err.reason(), "missing");
        assert!(err.to_string().contains("does not exist"), "{err}");
        let empty = dir.path().join("empty");
        std::fs::write(&empty, "").unwrap();
        assert_eq!(read(&empty).unwrap_err().reason(), "empty");
        let binary = dir.path().join("bin");
        std::fs::write(&binary, [0xff, 0xfe]).unwrap();
        assert_eq!(read(&binary).unwrap_err().reason(), "not_text");
        let is_dir = read(dir.path()).unwrap_err();
        assert_eq!(is_dir.reason(), "unreadable");
    }

    #[test]
    fn files_larger_than_any_token_are_refused_without_reading_them_whole() {
        let dir = tempfile::tempdir().unwrap();
        let at_limit = dir.path().join("at-limit");
        std::fs::write(&at_limit, format!("{}\n", "a".repeat(MAX_TOKEN_LEN))).unwrap();
        assert_eq!(read(&at_limit).unwrap().expose().len(), MAX_TOKEN_LEN);
        let over = dir.path().join("over");
        std::fs::write(&over, "a".repeat(MAX_TOKEN_LEN + 1)).unwrap();
        assert_eq!(read(&over).unwrap_err().reason(), "too_large");
        let huge = dir.path().join("huge");
        std::fs::write(&huge, vec![b'a'; 10 << 20]).unwrap();
        let err = read(&huge).unwrap_err();
        assert_eq!(err.reason(), "too_large");
        assert!(err.to_string().contains("more than 20000 bytes"), "{err}");
    }

    #[test]
    fn debug_output_never_shows_the_token() {
        let t = parse("secret-token-value".into(), Path::new("/t")).unwrap();
        assert!(!format!("{t:?}").contains("secret-token-value"));
    }

    #[test]
    fn freshness_flags_expired_and_expiring_tokens() {
        let now = UNIX_EPOCH + Duration::from_secs(1000);
        let at = |s| Some(UNIX_EPOCH + Duration::from_secs(s));
        assert_eq!(freshness(at(999), now), TokenFreshness::Expired);
        assert_eq!(
            freshness(at(1100), now),
            TokenFreshness::ExpiresSoon(Duration::from_secs(100))
        );
        assert_eq!(freshness(at(5000), now), TokenFreshness::Fresh);
        assert_eq!(freshness(None, now), TokenFreshness::Unknown);
    }
}
