//! The STS exchange: projected token in, temporary credentials out.
//!
//! `AssumeRoleWithWebIdentity` is an unsigned call (the token is the proof), so the client has
//! no credentials provider at all. The SDK's own retries are off: the refresher owns the retry
//! policy (backoff with jitter, serving cached credentials meanwhile) and counts every attempt.
//! Failures are mapped to a small, stable set of codes used in logs and as a metric label.

use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_config::BehaviorVersion;
use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_sdk_sts::config::http::HttpResponse;
use aws_sdk_sts::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_sts::types::Credentials as StsCredentials;
use secrecy::SecretString;

use super::credentials::Credentials;
use super::token::{self, TokenError, WebIdentityToken};

/// What the agent asks STS for; fixed for the agent's lifetime.
#[derive(Clone, Debug)]
pub struct ExchangeRequest {
    pub role_arn: String,
    pub session_name: String,
    pub duration: Duration,
    pub token_file: PathBuf,
}

/// A successful exchange.
#[derive(Debug)]
pub struct Exchanged {
    pub credentials: Credentials,
    /// How full, in percent, the packed session policy/tags were (STS's PackedPolicySize).
    pub packed_policy_size: Option<i32>,
    /// Expiry of the web identity token that was used.
    pub token_expires_at: Option<SystemTime>,
}

/// STS error codes worth telling apart; everything else is `Other`, so the metric label set
/// stays small whatever STS answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StsErrorCode {
    Throttling,
    AccessDenied,
    InvalidIdentityToken,
    ExpiredToken,
    IdpCommunicationError,
    IdpRejectedClaim,
    MalformedPolicyDocument,
    PackedPolicyTooLarge,
    RegionDisabled,
    InvalidParameter,
    ServerError,
    Timeout,
    Unreachable,
    InvalidResponse,
    Other,
}

impl StsErrorCode {
    /// Maps an STS error code (and the HTTP status, for codes STS does not name) to ours.
    pub fn classify(code: Option<&str>, status: Option<u16>) -> Self {
        match code {
            Some("Throttling" | "ThrottlingException" | "RequestLimitExceeded") => Self::Throttling,
            Some("AccessDenied" | "AccessDeniedException") => Self::AccessDenied,
            Some("InvalidIdentityToken") => Self::InvalidIdentityToken,
            Some("ExpiredTokenException" | "ExpiredToken") => Self::ExpiredToken,
            Some("IDPCommunicationError") => Self::IdpCommunicationError,
            Some("IDPRejectedClaim") => Self::IdpRejectedClaim,
            Some("MalformedPolicyDocument") => Self::MalformedPolicyDocument,
            Some("PackedPolicyTooLarge") => Self::PackedPolicyTooLarge,
            Some("RegionDisabledException") => Self::RegionDisabled,
            Some("InvalidParameterValue" | "ValidationError" | "InvalidParameterCombination") => {
                Self::InvalidParameter
            }
            _ => match status {
                Some(429) => Self::Throttling,
                Some(s) if s >= 500 => Self::ServerError,
                _ => Self::Other,
            },
        }
    }

    /// The metric label and log field.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Throttling => "Throttling",
            Self::AccessDenied => "AccessDenied",
            Self::InvalidIdentityToken => "InvalidIdentityToken",
            Self::ExpiredToken => "ExpiredToken",
            Self::IdpCommunicationError => "IDPCommunicationError",
            Self::IdpRejectedClaim => "IDPRejectedClaim",
            Self::MalformedPolicyDocument => "MalformedPolicyDocument",
            Self::PackedPolicyTooLarge => "PackedPolicyTooLarge",
            Self::RegionDisabled => "RegionDisabled",
            Self::InvalidParameter => "InvalidParameter",
            Self::ServerError => "ServerError",
            Self::Timeout => "Timeout",
            Self::Unreachable => "Unreachable",
            Self::InvalidResponse => "InvalidResponse",
            Self::Other => "Other",
        }
    }

    /// Whether retrying soon can help. Configuration errors (trust policy, audience, policy
    /// documents) will not fix themselves within seconds, so the refresher goes straight to its
    /// longest backoff instead of hammering STS.
    pub fn is_transient(self) -> bool {
        matches!(
            self,
            Self::Throttling
                | Self::IdpCommunicationError
                | Self::ServerError
                | Self::Timeout
                | Self::Unreachable
                | Self::InvalidResponse
                | Self::ExpiredToken
        )
    }

    /// What a user should check, for the log line.
    pub fn hint(self) -> &'static str {
        match self {
            Self::AccessDenied => {
                "the role's trust policy does not allow this service account (check the OIDC provider condition on sub and aud)"
            }
            Self::InvalidIdentityToken => {
                "STS does not accept the token: is the cluster's OIDC issuer registered in IAM, and does the token audience match?"
            }
            Self::ExpiredToken => {
                "the projected token had expired; the kubelet should have rotated it (check the node)"
            }
            Self::MalformedPolicyDocument | Self::PackedPolicyTooLarge => {
                "the binding's session policy is invalid or too large"
            }
            Self::RegionDisabled => "STS is not activated in this region for the account",
            Self::Throttling => "STS is throttling; retrying with backoff",
            Self::Unreachable | Self::Timeout => {
                "STS cannot be reached; check the endpoint, DNS and egress rules"
            }
            _ => "retrying with backoff",
        }
    }
}

/// Why an exchange failed. No variant carries a token or a credential.
#[derive(Debug, thiserror::Error)]
pub enum ExchangeError {
    #[error(transparent)]
    Token(#[from] TokenError),
    #[error("STS AssumeRoleWithWebIdentity failed ({}): {message}; {}", code.as_str(), code.hint())]
    Sts { code: StsErrorCode, message: String },
}

impl ExchangeError {
    /// The STS code, when the failure came from STS (or the way to it).
    pub fn sts_code(&self) -> Option<StsErrorCode> {
        match self {
            ExchangeError::Sts { code, .. } => Some(*code),
            ExchangeError::Token(_) => None,
        }
    }
}

/// Builds the unsigned STS client for `region`, with an optional endpoint override.
///
/// Timeouts are short because a waiting refresh delays nobody (requests are served from the
/// cache) but a hung connection would delay the next attempt.
pub async fn client(region: String, endpoint: Option<String>) -> aws_sdk_sts::Client {
    let timeouts = TimeoutConfig::builder()
        .connect_timeout(Duration::from_secs(3))
        .operation_attempt_timeout(Duration::from_secs(10))
        .operation_timeout(Duration::from_secs(15))
        .build();
    let mut loader = aws_config::defaults(BehaviorVersion::latest())
        .no_credentials()
        .region(aws_config::Region::new(region))
        .retry_config(RetryConfig::disabled())
        .timeout_config(timeouts);
    if let Some(url) = endpoint {
        loader = loader.endpoint_url(url);
    }
    aws_sdk_sts::Client::new(&loader.load().await)
}

/// Reads the token file and exchanges it. The token is read here, every time, because the
/// kubelet rotates it.
pub async fn exchange(
    client: &aws_sdk_sts::Client,
    req: &ExchangeRequest,
) -> Result<Exchanged, ExchangeError> {
    let path = req.token_file.clone();
    let token: WebIdentityToken = tokio::task::spawn_blocking(move || token::read(&path))
        .await
        .map_err(|e| ExchangeError::Sts {
            code: StsErrorCode::Other,
            message: format!("token reader task failed: {e}"),
        })??;
    exchange_token(client, req, &token).await
}

/// The exchange once the token is read: the STS call, its answer mapped to credentials or to
/// one of our error codes.
pub async fn exchange_token(
    client: &aws_sdk_sts::Client,
    req: &ExchangeRequest,
    token: &WebIdentityToken,
) -> Result<Exchanged, ExchangeError> {
    let out = client
        .assume_role_with_web_identity()
        .role_arn(&req.role_arn)
        .role_session_name(&req.session_name)
        .web_identity_token(token.expose())
        .duration_seconds(i32::try_from(req.duration.as_secs()).unwrap_or(i32::MAX))
        .send()
        .await
        .map_err(classify_sdk_error)?;
    let credentials = out.credentials().ok_or_else(|| ExchangeError::Sts {
        code: StsErrorCode::InvalidResponse,
        message: "the response has no Credentials".into(),
    })?;
    // The SDK turns an empty element into an empty string; served, such credentials would
    // fail in the app's SDK, far from the cause.
    if credentials.access_key_id().is_empty()
        || credentials.secret_access_key().is_empty()
        || credentials.session_token().is_empty()
    {
        return Err(ExchangeError::Sts {
            code: StsErrorCode::InvalidResponse,
            message: "the response's Credentials lack an access key id, secret or session token"
                .into(),
        });
    }
    Ok(Exchanged {
        credentials: convert(credentials, out.assumed_role_user().map(|u| u.arn())),
        packed_policy_size: packed_size(&out),
        token_expires_at: token.expires_at,
    })
}

/// How full the session token's packed policy/tag space is, in percent. STS now reports
/// `SessionTokenUtilization` and deprecates `PackedPolicySize`; older STS-compatible servers
/// (and today's moto) still send only the latter, so both are read.
fn packed_size(
    out: &aws_sdk_sts::operation::assume_role_with_web_identity::AssumeRoleWithWebIdentityOutput,
) -> Option<i32> {
    #[allow(deprecated)]
    let legacy = out.packed_policy_size();
    out.session_token_utilization().or(legacy)
}

fn convert(c: &StsCredentials, arn: Option<&str>) -> Credentials {
    let exp = c.expiration();
    let expiration = u64::try_from(exp.secs())
        .ok()
        .and_then(|s| UNIX_EPOCH.checked_add(Duration::from_secs(s)))
        .unwrap_or(UNIX_EPOCH);
    Credentials {
        access_key_id: c.access_key_id().to_owned(),
        secret_access_key: SecretString::from(c.secret_access_key().to_owned()),
        session_token: SecretString::from(c.session_token().to_owned()),
        expiration,
        assumed_role_arn: arn.map(str::to_owned),
    }
}

fn classify_sdk_error<E>(err: SdkError<E, HttpResponse>) -> ExchangeError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    let (code, message) = match &err {
        SdkError::ServiceError(se) => {
            let status = Some(se.raw().status().as_u16());
            (
                StsErrorCode::classify(se.err().code(), status),
                se.err()
                    .message()
                    .filter(|m| !m.is_empty())
                    .unwrap_or("no message")
                    .to_owned(),
            )
        }
        SdkError::TimeoutError(_) => (StsErrorCode::Timeout, "the request timed out".to_owned()),
        SdkError::DispatchFailure(df) => {
            let what = if df.is_timeout() {
                StsErrorCode::Timeout
            } else {
                StsErrorCode::Unreachable
            };
            (
                what,
                "the request could not be sent (connection failed)".to_owned(),
            )
        }
        SdkError::ResponseError(_) => (
            StsErrorCode::InvalidResponse,
            "the response could not be parsed".to_owned(),
        ),
        _ => (
            StsErrorCode::Other,
            "the request could not be built".to_owned(),
        ),
    };
    ExchangeError::Sts { code, message }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sts_codes_map_to_stable_labels() {
        let cases = [
            (Some("Throttling"), None, "Throttling"),
            (Some("AccessDenied"), Some(403), "AccessDenied"),
            (
                Some("InvalidIdentityToken"),
                Some(400),
                "InvalidIdentityToken",
            ),
            (Some("ExpiredTokenException"), Some(400), "ExpiredToken"),
            (
                Some("IDPCommunicationError"),
                Some(400),
                "IDPCommunicationError",
            ),
            (Some("RegionDisabledException"), Some(403), "RegionDisabled"),
            (
                Some("PackedPolicyTooLarge"),
                Some(400),
                "PackedPolicyTooLarge",
            ),
            (None, Some(429), "Throttling"),
            (None, Some(503), "ServerError"),
            (Some("SomethingNew"), Some(400), "Other"),
        ];
        for (code, status, want) in cases {
            assert_eq!(
                StsErrorCode::classify(code, status).as_str(),
                want,
                "{code:?}"
            );
        }
    }

    #[test]
    fn configuration_errors_are_not_retried_quickly() {
        assert!(!StsErrorCode::AccessDenied.is_transient());
        assert!(!StsErrorCode::InvalidIdentityToken.is_transient());
        assert!(StsErrorCode::Throttling.is_transient());
        assert!(StsErrorCode::Unreachable.is_transient());
    }

    /// What `exchange_token` makes of one STS answer, through the SDK's deserializer.
    async fn exchange_answer(status: u16, body: &'static str) -> Result<Exchanged, ExchangeError> {
        let http = aws_smithy_http_client::test_util::infallible_client_fn(move |_| {
            http::Response::builder().status(status).body(body).unwrap()
        });
        let config = aws_sdk_sts::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(aws_config::Region::new("eu-west-1"))
            .retry_config(RetryConfig::disabled())
            .endpoint_url("http://127.0.0.1:9")
            .http_client(http)
            .build();
        let request = ExchangeRequest {
            role_arn: "arn:aws:iam::111122223333:role/r".into(),
            session_name: "s".into(),
            duration: Duration::from_secs(3600),
            token_file: "/t".into(),
        };
        let token = token::parse("t".into(), "/t".as_ref()).unwrap();
        exchange_token(&aws_sdk_sts::Client::from_conf(config), &request, &token).await
    }

    fn answer(access_key_id: &str) -> String {
        format!(
            "<AssumeRoleWithWebIdentityResponse><AssumeRoleWithWebIdentityResult><Credentials>\
             <AccessKeyId>{access_key_id}</AccessKeyId><SecretAccessKey>s</SecretAccessKey>\
             <SessionToken>t</SessionToken><Expiration>2030-01-01T00:00:00Z</Expiration>\
             </Credentials></AssumeRoleWithWebIdentityResult></AssumeRoleWithWebIdentityResponse>"
        )
    }

    #[tokio::test]
    async fn credentials_with_an_empty_field_are_an_invalid_response() {
        let ok = exchange_answer(200, answer("ASIAEXAMPLE").leak())
            .await
            .unwrap();
        assert_eq!(ok.credentials.access_key_id, "ASIAEXAMPLE");
        let err = exchange_answer(200, answer("").leak()).await.unwrap_err();
        assert_eq!(err.sts_code(), Some(StsErrorCode::InvalidResponse), "{err}");
    }

    #[test]
    fn error_messages_name_the_code_and_the_fix() {
        let err = ExchangeError::Sts {
            code: StsErrorCode::AccessDenied,
            message: "Not authorized to perform sts:AssumeRoleWithWebIdentity".into(),
        };
        let text = err.to_string();
        assert!(
            text.contains("AccessDenied") && text.contains("trust policy"),
            "{text}"
        );
    }
}
