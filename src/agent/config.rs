//! The agent's validated configuration: [`AgentConfig`], built from the flags by
//! [`AgentConfig::from_args`], and the checks behind it.
//!
//! Validation happens before anything touches the network, so a mistyped role ARN or a listen
//! address that would expose credentials beyond the pod fails at start-up with a message that
//! says what to fix. The rules shared with `AWSRoleBinding` (role ARNs, regions, STS endpoints,
//! session durations) live in [`crate::aws`] and [`crate::duration`]; this file only names the
//! flag in the message.

use std::net::SocketAddr;
use std::path::PathBuf;

use super::args::AgentArgs;
use super::sts::ExchangeRequest;

/// Region used when neither the flag nor the environment names one: the global endpoint's.
const FALLBACK_REGION: &str = "us-east-1";

/// The agent's settings after validation.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    pub exchange: ExchangeRequest,
    pub region: String,
    pub sts_endpoint: Option<String>,
    pub listen: SocketAddr,
    pub metrics_listen: SocketAddr,
    pub auth_token_file: PathBuf,
    pub cache_file: PathBuf,
}

impl AgentConfig {
    /// Validates `args`, reading the pod's name, namespace and region from the environment
    /// values passed in (so this stays testable without touching the process environment).
    pub fn from_args(
        args: &AgentArgs,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        validate_role_arn(&args.role_arn)?;
        validate_listen(args.listen)?;
        let session_name = session_name(
            args.session_name.as_deref(),
            env("POD_NAMESPACE").as_deref(),
            env("POD_NAME").as_deref(),
        )?;
        let region = args
            .region
            .clone()
            .or_else(|| env("AWS_REGION"))
            .or_else(|| env("AWS_DEFAULT_REGION"))
            .filter(|r| !r.is_empty())
            .unwrap_or_else(|| FALLBACK_REGION.to_owned());
        validate_region(&region)?;
        if let Some(url) = &args.sts_endpoint {
            validate_sts_endpoint(url)?;
        }
        Ok(AgentConfig {
            exchange: ExchangeRequest {
                role_arn: args.role_arn.clone(),
                session_name,
                duration: args.duration,
                token_file: args.token_file.clone(),
            },
            region,
            sts_endpoint: args.sts_endpoint.clone(),
            listen: args.listen,
            metrics_listen: args.metrics_listen,
            auth_token_file: args.auth_token_file.clone(),
            cache_file: args.cache_file.clone(),
        })
    }
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
    use std::collections::HashMap;

    use clap::Parser;

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

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: AgentArgs,
    }

    fn parse(argv: &[&str]) -> AgentArgs {
        Cli::try_parse_from(std::iter::once("agent").chain(argv.iter().copied()))
            .unwrap()
            .args
    }

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        move |k| map.get(k).cloned()
    }

    #[test]
    fn defaults_follow_the_pod_environment() {
        let args = parse(&["--role-arn", "arn:aws:iam::111122223333:role/r"]);
        let cfg = AgentConfig::from_args(
            &args,
            env(&[
                ("POD_NAMESPACE", "team-a"),
                ("POD_NAME", "web-0"),
                ("AWS_REGION", "eu-west-1"),
            ]),
        )
        .unwrap();
        assert_eq!(cfg.exchange.session_name, "team-a.web-0");
        assert_eq!(cfg.region, "eu-west-1");
        assert_eq!(cfg.exchange.duration.as_secs(), 3600);
        assert_eq!(cfg.listen.to_string(), "127.0.0.1:9911");
        assert_eq!(cfg.metrics_listen.to_string(), "0.0.0.0:9912");
        assert_eq!(
            cfg.auth_token_file.to_str(),
            Some("/var/run/credvend/auth/token")
        );
        assert_eq!(
            cfg.exchange.token_file.to_str(),
            Some("/var/run/secrets/credvend.io/serviceaccount/token")
        );
    }

    #[test]
    fn refuses_a_non_loopback_listen_address() {
        let args = parse(&[
            "--role-arn",
            "arn:aws:iam::111122223333:role/r",
            "--session-name",
            "s",
            "--listen",
            "0.0.0.0:9911",
        ]);
        let err = AgentConfig::from_args(&args, env(&[])).unwrap_err();
        assert_eq!(
            err,
            ConfigError::ListenNotLoopback("0.0.0.0:9911".parse().unwrap())
        );
    }

    #[test]
    fn falls_back_to_the_global_region_and_checks_flags() {
        let args = parse(&[
            "--role-arn",
            "arn:aws:iam::111122223333:role/r",
            "--session-name",
            "s",
        ]);
        assert_eq!(
            AgentConfig::from_args(&args, env(&[])).unwrap().region,
            "us-east-1"
        );
        let bad = parse(&["--role-arn", "nope", "--session-name", "s"]);
        assert!(matches!(
            AgentConfig::from_args(&bad, env(&[])),
            Err(ConfigError::RoleArn { .. })
        ));
    }

    #[test]
    fn duration_flag_takes_the_binding_grammar_and_bounds() {
        let with = |d: &str| {
            Cli::try_parse_from([
                "agent",
                "--role-arn",
                "arn:aws:iam::111122223333:role/r",
                "--duration",
                d,
            ])
            .map(|c| c.args.duration.as_secs())
            .map_err(|e| e.to_string())
        };
        assert_eq!(with("1h30m"), Ok(5400));
        assert_eq!(with("15m"), Ok(900));
        let short = with("5m").unwrap_err();
        assert!(short.contains("outside 15m..12h"), "{short}");
        // humantime spellings a binding could never carry are refused too.
        for other in ["1 hour", "2days", "1.5h"] {
            let err = with(other).unwrap_err();
            assert!(err.contains("is not a duration"), "{other}: {err}");
        }
    }
}
