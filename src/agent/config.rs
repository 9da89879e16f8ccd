//! The agent's command line, and the checks that turn it into a configuration it can trust.
//!
//! Every flag can also come from an environment variable `CREDVEND_<FLAG>`, which is how the
//! webhook could configure the sidecar without long argument lists. Validation happens before
//! anything touches the network, so a mistyped role ARN or a listen address that would expose
//! credentials beyond the pod fails at start-up with a message that says what to fix.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use crate::telemetry::LogFormat;

/// Shortest session STS grants.
pub const MIN_DURATION: Duration = Duration::from_secs(15 * 60);
/// Longest session any role can be configured for.
pub const MAX_DURATION: Duration = Duration::from_secs(12 * 3600);

/// Flags of `credvend agent`.
#[derive(Args, Clone, Debug)]
pub struct AgentArgs {
    /// IAM role to assume, e.g. arn:aws:iam::111122223333:role/s3-reader.
    #[arg(long, env = "CREDVEND_ROLE_ARN")]
    pub role_arn: String,

    /// Projected service-account token; re-read on every exchange because the kubelet rotates it.
    #[arg(
        long,
        env = "CREDVEND_TOKEN_FILE",
        default_value = "/var/run/secrets/credvend.io/serviceaccount/token"
    )]
    pub token_file: PathBuf,

    /// RoleSessionName shown in CloudTrail. Default: derived from POD_NAMESPACE and POD_NAME.
    #[arg(long, env = "CREDVEND_SESSION_NAME")]
    pub session_name: Option<String>,

    /// Session length requested from STS (15m to 12h). Keep it at 40m or more so that served
    /// credentials always outlive the SDKs' 15-minute refresh window.
    #[arg(long, env = "CREDVEND_DURATION", default_value = "1h", value_parser = humantime::parse_duration)]
    pub duration: Duration,

    /// AWS region, for the regional STS endpoint. Default: AWS_REGION or AWS_DEFAULT_REGION,
    /// else us-east-1.
    #[arg(long, env = "CREDVEND_REGION")]
    pub region: Option<String>,

    /// STS endpoint override (FIPS, VPC endpoints, tests). Default: the regional endpoint.
    #[arg(long, env = "CREDVEND_STS_ENDPOINT")]
    pub sts_endpoint: Option<String>,

    /// Address of the credentials endpoint. Must be a loopback address: anything else would
    /// hand the pod's credentials to whoever can reach the pod.
    #[arg(long, env = "CREDVEND_LISTEN", default_value = "127.0.0.1:9911")]
    pub listen: SocketAddr,

    /// Address of /metrics, /healthz/live and /healthz/ready (never credentials).
    #[arg(long, env = "CREDVEND_METRICS_LISTEN", default_value = "0.0.0.0:9912")]
    pub metrics_listen: SocketAddr,

    /// File holding the token apps must send in the Authorization header. Written by the agent
    /// (reused if valid, so a restarted sidecar keeps serving apps that read it only once).
    #[arg(
        long,
        env = "CREDVEND_AUTH_TOKEN_FILE",
        default_value = "/var/run/credvend/auth/token"
    )]
    pub auth_token_file: PathBuf,

    /// Log format.
    #[arg(long, env = "CREDVEND_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

/// A configuration mistake, reported before the agent starts.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error(
        "--role-arn {arn:?} is not an IAM role ARN ({why}); expected arn:aws:iam::<12-digit account>:role/[path/]<name>"
    )]
    RoleArn { arn: String, why: &'static str },
    #[error(
        "--listen {0} is not a loopback address; the credentials endpoint must stay inside the pod (use 127.0.0.1:<port> or [::1]:<port>)"
    )]
    ListenNotLoopback(SocketAddr),
    #[error("--duration {0} is outside what STS allows (15m to 12h)")]
    Duration(String),
    #[error(
        "no session name: set --session-name, or POD_NAMESPACE and POD_NAME (the webhook sets both)"
    )]
    NoSessionName,
    #[error(
        "--sts-endpoint {url:?} {why}; use an https URL (plain http only to 127.0.0.1 or [::1])"
    )]
    StsEndpoint { url: String, why: &'static str },
    #[error("--region {0:?} is not an AWS region name such as eu-west-1")]
    Region(String),
}

/// Checks the shape of an IAM role ARN with the rules the AWSRoleBinding validation uses.
///
/// STS would reject a malformed ARN too, but only after the agent has read the token and gone
/// to the network; checking first gives a message that names the flag.
pub fn validate_role_arn(arn: &str) -> Result<(), ConfigError> {
    crate::aws::check_role_arn(arn).map_err(|why| ConfigError::RoleArn {
        arn: arn.to_owned(),
        why,
    })
}

/// Turns any string into a valid STS RoleSessionName: characters outside `[\w+=,.@-]` become
/// `-`, the result is cut to 64 characters and padded to the minimum of 2.
///
/// The name is derived from the pod, not from time, so it stays the same across refreshes and
/// CloudTrail shows one session per pod.
pub fn sanitize_session_name(raw: &str) -> String {
    let mut name: String = raw
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "_+=,.@-".contains(c) {
                c
            } else {
                '-'
            }
        })
        .take(64)
        .collect();
    while name.len() < 2 {
        name.push('-');
    }
    name
}

/// The session name to use: the flag if given, else `<namespace>.<pod>` from the downward API.
pub fn session_name(
    flag: Option<&str>,
    namespace: Option<&str>,
    pod: Option<&str>,
) -> Result<String, ConfigError> {
    match (nonempty(flag), nonempty(namespace), nonempty(pod)) {
        (Some(name), _, _) => Ok(sanitize_session_name(name)),
        (None, Some(ns), Some(pod)) => Ok(sanitize_session_name(&format!("{ns}.{pod}"))),
        _ => Err(ConfigError::NoSessionName),
    }
}

fn nonempty(s: Option<&str>) -> Option<&str> {
    s.map(str::trim).filter(|s| !s.is_empty())
}

/// Refuses listen addresses that are reachable from outside the pod.
pub fn validate_listen(addr: SocketAddr) -> Result<(), ConfigError> {
    if addr.ip().is_loopback() {
        Ok(())
    } else {
        Err(ConfigError::ListenNotLoopback(addr))
    }
}

/// Checks the requested session length against STS's bounds.
pub fn validate_duration(d: Duration) -> Result<(), ConfigError> {
    if (MIN_DURATION..=MAX_DURATION).contains(&d) {
        Ok(())
    } else {
        Err(ConfigError::Duration(
            humantime::format_duration(d).to_string(),
        ))
    }
}

/// Accepts https endpoints anywhere and plain http only to a loopback IP (tests, local
/// proxies): the web identity token must not cross a network in clear text.
pub fn validate_sts_endpoint(url: &str) -> Result<(), ConfigError> {
    crate::aws::check_sts_endpoint(url).map_err(|why| ConfigError::StsEndpoint {
        url: url.to_owned(),
        why,
    })
}

/// Checks a region name's shape (`eu-west-1`, `us-gov-west-1`, `cn-north-1`, …).
pub fn validate_region(region: &str) -> Result<(), ConfigError> {
    if crate::aws::is_region(region) {
        Ok(())
    } else {
        Err(ConfigError::Region(region.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_role_arns_of_every_partition_and_with_paths() {
        for arn in [
            "arn:aws:iam::111122223333:role/s3-reader",
            "arn:aws:iam::111122223333:role/team/a/reader",
            "arn:aws-us-gov:iam::111122223333:role/x",
            "arn:aws-cn:iam::111122223333:role/a+b=c,d.e@f_g-h",
            "arn:aws:iam::111122223333:role/p!th/x",
        ] {
            assert_eq!(validate_role_arn(arn), Ok(()), "{arn}");
        }
    }

    #[test]
    fn rejects_arns_that_are_not_iam_roles() {
        for arn in [
            "",
            "s3-reader",
            "arn:aws:iam::111122223333:user/bob",
            "arn:aws:iam::11112222333:role/short-account",
            "arn:aws:iam::11112222333a:role/letters",
            "arn:aws:sts::111122223333:assumed-role/r/s",
            "arn:aws:iam:eu-west-1:111122223333:role/regional",
            "arn:aws:iam::111122223333:role/",
            "arn:aws:iam::111122223333:role/with space",
            "arn:gcp:iam::111122223333:role/x",
        ] {
            assert!(validate_role_arn(arn).is_err(), "{arn:?} accepted");
        }
        let long = format!("arn:aws:iam::111122223333:role/{}", "a".repeat(65));
        assert!(validate_role_arn(&long).is_err());
    }

    #[test]
    fn session_names_are_sanitized_to_sts_charset_and_length() {
        let cases = [
            ("team-a.web-7d9f", "team-a.web-7d9f"),
            ("team a/web:1", "team-a-web-1"),
            ("x", "x-"),
            ("", "--"),
            ("ünïcode", "-n-code"),
            ("a+b=c,d.e@f_g", "a+b=c,d.e@f_g"),
        ];
        for (raw, want) in cases {
            assert_eq!(sanitize_session_name(raw), want, "{raw:?}");
        }
        assert_eq!(sanitize_session_name(&"p".repeat(100)).len(), 64);
    }

    #[test]
    fn session_name_comes_from_the_flag_or_the_pod() {
        assert_eq!(
            session_name(Some("mine"), Some("ns"), Some("p")).as_deref(),
            Ok("mine")
        );
        assert_eq!(
            session_name(None, Some("team-a"), Some("web-0")).as_deref(),
            Ok("team-a.web-0")
        );
        assert_eq!(
            session_name(Some("  "), Some("ns"), Some("p")).as_deref(),
            Ok("ns.p")
        );
        assert_eq!(
            session_name(None, Some("ns"), None),
            Err(ConfigError::NoSessionName)
        );
    }

    #[test]
    fn only_loopback_listen_addresses_are_allowed() {
        for ok in ["127.0.0.1:9911", "127.0.0.2:1", "[::1]:9911"] {
            assert_eq!(validate_listen(ok.parse().unwrap()), Ok(()), "{ok}");
        }
        for bad in ["0.0.0.0:9911", "10.0.0.5:9911", "[::]:9911"] {
            let err = validate_listen(bad.parse().unwrap()).unwrap_err();
            assert!(err.to_string().contains("not a loopback address"), "{err}");
        }
    }

    #[test]
    fn duration_must_be_within_sts_bounds() {
        assert!(validate_duration(Duration::from_secs(900)).is_ok());
        assert!(validate_duration(Duration::from_secs(43200)).is_ok());
        assert!(validate_duration(Duration::from_secs(899)).is_err());
        assert!(validate_duration(Duration::from_secs(43201)).is_err());
    }

    #[test]
    fn sts_endpoint_requires_https_except_on_loopback() {
        for ok in [
            "https://sts.eu-west-1.amazonaws.com",
            "https://vpce-1.sts.eu-west-1.vpce.amazonaws.com",
            "http://127.0.0.1:5000",
            "http://[::1]:5000",
        ] {
            assert_eq!(validate_sts_endpoint(ok), Ok(()), "{ok}");
        }
        // localhost is refused like any name: only a loopback IP literal proves the token
        // stays on the machine (the same rule as the binding's stsEndpoint).
        for bad in [
            "http://sts.amazonaws.com",
            "http://localhost:5000",
            "ftp://x",
            "sts.amazonaws.com",
            "",
        ] {
            assert!(validate_sts_endpoint(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn region_names_are_checked() {
        for ok in ["eu-west-1", "us-gov-west-1", "cn-north-1", "ap-southeast-5"] {
            assert_eq!(validate_region(ok), Ok(()), "{ok}");
        }
        for bad in ["", "eu", "EU-WEST-1", "eu-west", "eu_west_1"] {
            assert!(validate_region(bad).is_err(), "{bad:?}");
        }
    }
}
