//! The agent's STS client and what its failures mean: a small, stable set of codes used in
//! logs and as a metric label, each with a hint. The calls themselves are in
//! [`exchange`](super::exchange).
//!
//! `AssumeRoleWithWebIdentity` is an unsigned call (the token is the proof), so the client has
//! no credentials provider at all; chain hops derive signed clients from it. The SDK's own
//! retries are off: the refresher owns the retry policy (backoff with jitter, serving cached
//! credentials meanwhile) and counts every attempt. Connection failures keep their cause
//! (refused, reset, TLS, DNS) in the code and the message.

use std::time::{Duration, UNIX_EPOCH};

use aws_config::BehaviorVersion;
use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_sdk_sts::config::http::HttpResponse;
use aws_sdk_sts::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_sts::types::Credentials as StsCredentials;
use secrecy::SecretString;

use super::credentials::Credentials;
use super::exchange::{Call, ExchangeError};

/// STS error codes worth telling apart; everything else is `Other`, so the metric label set
/// stays small whatever STS answers. The last group describes the way to STS, not STS itself.
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
    /// Nothing listens at the endpoint (TCP connection refused).
    ConnectionRefused,
    /// The connection was reset or closed before an answer.
    ConnectionReset,
    /// The TLS handshake failed (certificate, protocol, or not TLS at all).
    TlsError,
    /// The endpoint's name does not resolve.
    DnsError,
    /// Any other failure to connect.
    Unreachable,
    /// The reply is not an STS reply (cannot be parsed, or has no credentials).
    InvalidResponse,
    /// STS answered with credentials that had already expired by the node's clock.
    ExpiredOnArrival,
    /// The child process that runs the calls ([`exchange_process`](super::exchange_process))
    /// could not be started, died, or gave no readable answer.
    ExchangeProcessFailed,
    Other,
}

impl StsErrorCode {
    /// Every code, for reading one back from its label.
    pub const ALL: [StsErrorCode; 21] = [
        Self::Throttling,
        Self::AccessDenied,
        Self::InvalidIdentityToken,
        Self::ExpiredToken,
        Self::IdpCommunicationError,
        Self::IdpRejectedClaim,
        Self::MalformedPolicyDocument,
        Self::PackedPolicyTooLarge,
        Self::RegionDisabled,
        Self::InvalidParameter,
        Self::ServerError,
        Self::Timeout,
        Self::ConnectionRefused,
        Self::ConnectionReset,
        Self::TlsError,
        Self::DnsError,
        Self::Unreachable,
        Self::InvalidResponse,
        Self::ExpiredOnArrival,
        Self::ExchangeProcessFailed,
        Self::Other,
    ];

    /// The code whose label ([`as_str`](Self::as_str)) is `label`: how the agent reads the
    /// code its exchange process reported.
    pub fn from_label(label: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.as_str() == label)
    }

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
            // STS always names its errors; a reply without a code was not an STS error
            // document (a 200 that does not parse, a proxy's HTML page), which a retry can fix.
            Some(_) => match status {
                Some(429) => Self::Throttling,
                Some(s) if s >= 500 => Self::ServerError,
                _ => Self::Other,
            },
            None => match status {
                Some(429) => Self::Throttling,
                Some(s) if s >= 500 => Self::ServerError,
                _ => Self::InvalidResponse,
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
            Self::ConnectionRefused => "ConnectionRefused",
            Self::ConnectionReset => "ConnectionReset",
            Self::TlsError => "TlsError",
            Self::DnsError => "DnsError",
            Self::Unreachable => "Unreachable",
            Self::InvalidResponse => "InvalidResponse",
            Self::ExpiredOnArrival => "CredentialsExpiredOnArrival",
            Self::ExchangeProcessFailed => "ExchangeProcessFailed",
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
                | Self::ConnectionRefused
                | Self::ConnectionReset
                | Self::TlsError
                | Self::DnsError
                | Self::Unreachable
                | Self::InvalidResponse
                | Self::ExpiredOnArrival
                | Self::ExpiredToken
                | Self::ExchangeProcessFailed
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
            Self::Unreachable | Self::Timeout | Self::ConnectionRefused | Self::ConnectionReset => {
                "STS cannot be reached; check the endpoint, DNS and egress rules"
            }
            Self::DnsError => {
                "the STS endpoint's name does not resolve; check the endpoint and the pod's DNS"
            }
            Self::TlsError => {
                "the TLS handshake with STS failed; check the endpoint URL and any TLS-intercepting proxy"
            }
            Self::InvalidResponse => {
                "the endpoint's reply is not an STS reply; is --sts-endpoint an STS endpoint? retrying with backoff"
            }
            Self::ExpiredOnArrival => {
                "STS returned credentials that had already expired: the node's clock is wrong (check its time synchronisation) or the STS endpoint misbehaves; retrying with backoff"
            }
            Self::ExchangeProcessFailed => {
                "the process that runs the STS calls (credvend agent-exchange) failed; its log lines above say why, and one killed by a signal may have hit the sidecar's memory limit; retrying with backoff"
            }
            _ => "retrying with backoff",
        }
    }
}

/// The longest one STS call may take, retries included (there are none).
pub const OPERATION_TIMEOUT: Duration = Duration::from_secs(15);

/// Builds the unsigned STS client for `region`, with an optional endpoint override.
///
/// Timeouts are short because a waiting refresh delays nobody (requests are served from the
/// cache) but a hung connection would delay the next attempt.
pub async fn client(region: String, endpoint: Option<String>) -> aws_sdk_sts::Client {
    let timeouts = TimeoutConfig::builder()
        .connect_timeout(Duration::from_secs(3))
        .operation_attempt_timeout(Duration::from_secs(10))
        .operation_timeout(OPERATION_TIMEOUT)
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

/// STS's credentials as the agent keeps them.
pub(super) fn convert(c: &StsCredentials, arn: Option<&str>) -> Credentials {
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

/// Maps an SDK failure of `call` to one of our codes, with a message that never quotes the
/// request or a half-parsed reply.
pub(super) fn classify_sdk_error<E>(call: Call, err: SdkError<E, HttpResponse>) -> ExchangeError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    let (code, message) = match &err {
        SdkError::ServiceError(se) => {
            let status = se.raw().status().as_u16();
            let code = StsErrorCode::classify(se.err().code(), Some(status));
            let message = match (se.err().message().filter(|m| !m.is_empty()), code) {
                (Some(m), _) => m.to_owned(),
                (None, StsErrorCode::InvalidResponse) => {
                    format!("the reply (HTTP {status}) could not be read as an STS reply")
                }
                (None, _) => format!("HTTP {status} with no message"),
            };
            (code, message)
        }
        SdkError::TimeoutError(_) => (StsErrorCode::Timeout, "the request timed out".to_owned()),
        SdkError::DispatchFailure(df) => {
            let what = if df.is_timeout() {
                StsErrorCode::Timeout
            } else {
                connection_failure(&err)
            };
            // The chain of a connection failure holds addresses, OS errors and TLS alerts,
            // never the request body (where the token is).
            (
                what,
                format!(
                    "the request could not be sent: {}",
                    crate::telemetry::error_chain(&err)
                ),
            )
        }
        // Not the SDK's own chain: a half-parsed reply could quote the credentials in it.
        SdkError::ResponseError(re) => (
            StsErrorCode::InvalidResponse,
            format!(
                "the reply (HTTP {}) could not be read as an STS reply",
                re.raw().status().as_u16()
            ),
        ),
        _ => (
            StsErrorCode::Other,
            "the request could not be built".to_owned(),
        ),
    };
    ExchangeError::sts(call, code, message)
}

/// Names the cause of a failed connection from the error's source chain: the OS error kind
/// where there is one, the TLS library's error, or hyper's "dns error".
pub fn connection_failure(err: &(dyn std::error::Error + 'static)) -> StsErrorCode {
    let chain: Vec<_> = crate::telemetry::causes(err).collect();
    // The TLS library's error anywhere in the chain names the failure, whatever wraps it.
    if chain.iter().any(|e| e.is::<rustls::Error>()) {
        return StsErrorCode::TlsError;
    }
    for e in chain {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            match io.kind() {
                std::io::ErrorKind::ConnectionRefused => return StsErrorCode::ConnectionRefused,
                std::io::ErrorKind::ConnectionReset
                | std::io::ErrorKind::ConnectionAborted
                | std::io::ErrorKind::BrokenPipe
                | std::io::ErrorKind::UnexpectedEof => return StsErrorCode::ConnectionReset,
                _ => {}
            }
        }
        // hyper-util's connector names DNS failures only in its message.
        if e.to_string().starts_with("dns error") {
            return StsErrorCode::DnsError;
        }
    }
    StsErrorCode::Unreachable
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_reads_back_from_its_label_and_labels_are_distinct() {
        for code in StsErrorCode::ALL {
            assert_eq!(StsErrorCode::from_label(code.as_str()), Some(code));
        }
        let mut labels: Vec<&str> = StsErrorCode::ALL.iter().map(|c| c.as_str()).collect();
        labels.sort_unstable();
        labels.dedup();
        assert_eq!(labels.len(), StsErrorCode::ALL.len());
        assert_eq!(StsErrorCode::from_label("NoSuchCode"), None);
    }

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
            // A 200 (or a 4xx) that is not an STS error document: unparseable, transient.
            (None, Some(200), "InvalidResponse"),
            (None, Some(403), "InvalidResponse"),
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
        assert!(StsErrorCode::InvalidResponse.is_transient());
        assert!(StsErrorCode::ExpiredOnArrival.is_transient());
        assert!(StsErrorCode::ConnectionRefused.is_transient());
    }

    /// An error that wraps another, like hyper's and the SDK's do.
    #[derive(Debug)]
    struct Wrap(&'static str, Box<dyn std::error::Error + Send + Sync>);

    impl std::fmt::Display for Wrap {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(self.0)
        }
    }

    impl std::error::Error for Wrap {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(self.1.as_ref())
        }
    }

    #[test]
    fn connection_failures_are_named_from_their_cause() {
        use std::io::{Error, ErrorKind};
        let wrapped = |inner: Box<dyn std::error::Error + Send + Sync>| {
            Wrap(
                "dispatch failure",
                Box::new(Wrap("client error (Connect)", inner)),
            )
        };
        let refused = wrapped(Box::new(Wrap(
            "tcp connect error",
            Box::new(Error::from(ErrorKind::ConnectionRefused)),
        )));
        assert_eq!(
            connection_failure(&refused),
            StsErrorCode::ConnectionRefused
        );
        let reset = wrapped(Box::new(Error::from(ErrorKind::ConnectionReset)));
        assert_eq!(connection_failure(&reset), StsErrorCode::ConnectionReset);
        let tls = wrapped(Box::new(Error::new(
            ErrorKind::InvalidData,
            rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer),
        )));
        assert_eq!(connection_failure(&tls), StsErrorCode::TlsError);
        // hyper-rustls nests the rustls error two io::Errors deep.
        let nested = wrapped(Box::new(Error::other(Error::new(
            ErrorKind::InvalidData,
            rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer),
        ))));
        assert_eq!(connection_failure(&nested), StsErrorCode::TlsError);
        let dns = wrapped(Box::new(Wrap(
            "dns error",
            Box::new(Error::other("failed to lookup address information")),
        )));
        assert_eq!(connection_failure(&dns), StsErrorCode::DnsError);
        let other = wrapped(Box::new(Error::other("no route")));
        assert_eq!(connection_failure(&other), StsErrorCode::Unreachable);
        // The log keeps the whole chain.
        assert_eq!(
            crate::telemetry::error_chain(&refused),
            "dispatch failure: client error (Connect): tcp connect error: connection refused"
        );
    }
}
