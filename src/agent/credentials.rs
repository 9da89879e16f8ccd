//! Credentials as the agent holds them, and the one JSON document it serves for them.
//!
//! The response body is rendered once per refresh (see `cache`), so the request path only
//! copies a reference-counted buffer. The format follows what every AWS SDK's container
//! provider parses: `Expiration` in UTC with a literal `Z` and whole seconds (the Rust and
//! JavaScript SDKs reject `+00:00`), `AccountId` taken from the assumed-role ARN, and no
//! top-level `Code` field (some SDKs treat it as an error).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use secrecy::{ExposeSecret, SecretString};
use serde::Serialize;

/// Temporary credentials from STS. `Debug` shows the expiry and the assumed-role ARN only:
/// the access key id is not a secret, but the README promises that no part of a credential
/// reaches a log, and CloudTrail correlation needs only the ARN (which holds the session name).
pub struct Credentials {
    pub access_key_id: String,
    pub secret_access_key: SecretString,
    pub session_token: SecretString,
    pub expiration: SystemTime,
    /// The assumed-role ARN STS reported, e.g. `arn:aws:sts::111122223333:assumed-role/r/s`.
    pub assumed_role_arn: Option<String>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("access_key_id", &"[not logged]")
            .field("secret_access_key", &"[redacted]")
            .field("session_token", &"[redacted]")
            .field("expiration", &format_expiration(self.expiration))
            .field("assumed_role_arn", &self.assumed_role_arn)
            .finish()
    }
}

/// A rendered response body. It contains secrets, so `Debug` only shows its size.
#[derive(Clone)]
pub struct SecretBody(Bytes);

impl SecretBody {
    /// The bytes to send; only the endpoint's response path calls this.
    pub fn bytes(&self) -> Bytes {
        self.0.clone()
    }
}

impl std::fmt::Debug for SecretBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SecretBody({} bytes)", self.0.len())
    }
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct Wire<'a> {
    access_key_id: &'a str,
    secret_access_key: &'a str,
    token: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    account_id: Option<&'a str>,
    expiration: String,
}

impl Credentials {
    /// The account id from the assumed-role ARN (`arn:aws:sts::ACCOUNT:assumed-role/...`).
    pub fn account_id(&self) -> Option<&str> {
        self.assumed_role_arn
            .as_deref()
            .and_then(account_id_from_arn)
    }

    /// Renders the container-credentials JSON document.
    pub fn render(&self) -> SecretBody {
        let wire = Wire {
            access_key_id: &self.access_key_id,
            secret_access_key: self.secret_access_key.expose_secret(),
            token: self.session_token.expose_secret(),
            account_id: self.account_id(),
            expiration: format_expiration(self.expiration),
        };
        // Serializing a struct of strings cannot fail; an empty body would be answered as
        // unusable by every SDK rather than served wrong.
        SecretBody(Bytes::from(serde_json::to_vec(&wire).unwrap_or_default()))
    }

    /// Lifetime left at `now` (zero once expired).
    pub fn remaining(&self, now: SystemTime) -> Duration {
        self.expiration.duration_since(now).unwrap_or_default()
    }
}

/// The fifth field of an ARN, when it is a 12-digit account id.
pub fn account_id_from_arn(arn: &str) -> Option<&str> {
    let account = arn.split(':').nth(4)?;
    (account.len() == 12 && account.bytes().all(|b| b.is_ascii_digit())).then_some(account)
}

/// `2026-11-23T12:00:00Z`: UTC, whole seconds, a literal `Z`.
pub fn format_expiration(t: SystemTime) -> String {
    let secs = t
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default();
    let dt = time::OffsetDateTime::from_unix_timestamp(i64::try_from(secs).unwrap_or(i64::MAX))
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    let format =
        time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]Z");
    dt.format(&format).unwrap_or_default()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn sample(expiration: SystemTime) -> Credentials {
        Credentials {
            access_key_id: "ASIAEXAMPLE".into(),
            secret_access_key: SecretString::from("secret-key".to_owned()),
            session_token: SecretString::from("session-token".to_owned()),
            expiration,
            assumed_role_arn: Some("arn:aws:sts::111122223333:assumed-role/reader/ns.pod".into()),
        }
    }

    #[test]
    fn renders_the_document_every_sdk_parses() {
        let creds = sample(UNIX_EPOCH + Duration::from_secs(1_795_435_200));
        let body: serde_json::Value = serde_json::from_slice(&creds.render().bytes()).unwrap();
        assert_eq!(
            body,
            serde_json::json!({
                "AccessKeyId": "ASIAEXAMPLE",
                "SecretAccessKey": "secret-key",
                "Token": "session-token",
                "AccountId": "111122223333",
                "Expiration": "2026-11-23T12:00:00Z",
            })
        );
    }

    #[test]
    fn expiration_is_utc_with_z_and_whole_seconds() {
        let t = UNIX_EPOCH + Duration::from_millis(1_795_435_200_999);
        assert_eq!(format_expiration(t), "2026-11-23T12:00:00Z");
    }

    #[test]
    fn account_id_is_omitted_when_the_arn_has_none() {
        let mut creds = sample(UNIX_EPOCH);
        creds.assumed_role_arn = Some("not-an-arn".into());
        let body: serde_json::Value = serde_json::from_slice(&creds.render().bytes()).unwrap();
        assert!(body.get("AccountId").is_none());
        assert!(body.get("Code").is_none());
    }

    #[test]
    fn debug_never_shows_secrets() {
        let creds = sample(UNIX_EPOCH);
        let dbg = format!("{creds:?} {:?}", creds.render());
        assert!(
            !dbg.contains("secret-key")
                && !dbg.contains("session-token")
                && !dbg.contains("ASIAEXAMPLE"),
            "{dbg}"
        );
        assert!(dbg.contains("assumed-role/reader/ns.pod"), "{dbg}");
    }
}
