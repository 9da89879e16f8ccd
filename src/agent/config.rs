//! The agent's validated configuration: [`AgentConfig`], built from the flags by
//! [`AgentConfig::from_args`], and the checks behind it.
//!
//! Validation happens before anything touches the network, so a mistyped role ARN or a listen
//! address that would expose credentials beyond the pod fails at start-up with a message that
//! says what to fix. Each binding comes as a [`BindingPlan`] (from `--binding`, or built from
//! the single-binding flags) and becomes a [`BindingConfig`]: session names rendered from the
//! pod's identity, the chaining rule applied to the durations. The rules shared with
//! `AWSRoleBinding` (role ARNs, regions, STS endpoints, durations, session fields) live in
//! [`crate::aws`], [`crate::duration`], [`crate::session_name`] and [`crate::sts_fields`]; this
//! file only names the flag or binding in the message.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::args::AgentArgs;
use super::exchange::{ExchangeRequest, HopRequest, StepRequest, Trust};
use crate::plan::{BindingPlan, HopPlan, step_durations};
use crate::session_name::{self, Identity, TemplateError};

/// Region used when neither the flag nor the environment names one: the global endpoint's.
const FALLBACK_REGION: &str = "us-east-1";

/// The agent's settings after validation.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// Every binding the agent serves; the first is the default (`/v1/credentials`).
    pub bindings: Vec<BindingConfig>,
    pub listen: SocketAddr,
    pub metrics_listen: SocketAddr,
    pub auth_token_file: PathBuf,
}

/// One binding, ready to run.
#[derive(Debug, Clone)]
pub struct BindingConfig {
    pub name: String,
    pub exchange: ExchangeRequest,
    /// The lifetime of the served session (the chaining rule applied).
    pub requested: Duration,
    pub region: String,
    pub sts_endpoint: Option<String>,
    /// Where the copy of this binding's credentials goes.
    pub cache_file: PathBuf,
}

impl AgentConfig {
    /// Validates `args`, reading the pod's name, namespace, service account and region from the
    /// environment values passed in (so this stays testable without touching the process
    /// environment).
    pub fn from_args(
        args: &AgentArgs,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        validate_listen(args.listen)?;
        let plans = plans(args)?;
        let pod = PodIdentity {
            namespace: nonempty_env(&env, "POD_NAMESPACE"),
            pod: nonempty_env(&env, "POD_NAME"),
            service_account: nonempty_env(&env, "POD_SERVICE_ACCOUNT"),
        };
        let env_region = env("AWS_REGION")
            .or_else(|| env("AWS_DEFAULT_REGION"))
            .filter(|r| !r.is_empty());
        let mut bindings: Vec<BindingConfig> = Vec::with_capacity(plans.len());
        for (index, plan) in plans.into_iter().enumerate() {
            if bindings.iter().any(|b| b.name == plan.name) {
                return Err(ConfigError::DuplicateBinding(plan.name));
            }
            let cache_file = cache_file_for(&args.cache_file, index, &plan.name);
            bindings.push(binding_config(
                plan,
                &pod,
                env_region.as_deref(),
                cache_file,
            )?);
        }
        Ok(AgentConfig {
            bindings,
            listen: args.listen,
            metrics_listen: args.metrics_listen,
            auth_token_file: args.auth_token_file.clone(),
        })
    }
}

/// The first binding's copy is `--cache-file`; the others' go beside it, one file each.
fn cache_file_for(first: &Path, index: usize, name: &str) -> PathBuf {
    if index == 0 {
        first.to_owned()
    } else {
        first.with_file_name(format!("credentials-{name}.json"))
    }
}

/// What the downward API told the agent about its pod.
struct PodIdentity {
    namespace: Option<String>,
    pod: Option<String>,
    service_account: Option<String>,
}

fn nonempty_env(env: &impl Fn(&str) -> Option<String>, key: &str) -> Option<String> {
    env(key)
        .map(|v| v.trim().to_owned())
        .filter(|v| !v.is_empty())
}

/// The plans of `--binding`, or the one the single-binding flags describe.
fn plans(args: &AgentArgs) -> Result<Vec<BindingPlan>, ConfigError> {
    if !args.bindings.is_empty() {
        return args
            .bindings
            .iter()
            .enumerate()
            .map(|(i, json)| {
                serde_json::from_str(json).map_err(|e| ConfigError::BindingJson {
                    index: i + 1,
                    error: e.to_string(),
                })
            })
            .collect();
    }
    let role_arn = args.role_arn.clone().ok_or(ConfigError::NoBinding)?;
    let session_name = args
        .session_name
        .as_deref()
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .unwrap_or(session_name::DEFAULT_TEMPLATE);
    Ok(vec![BindingPlan {
        name: args.binding_name.clone(),
        role_arn,
        duration: crate::duration::format(args.duration),
        session_name: session_name.to_owned(),
        token_file: args.token_file.clone(),
        audience: crate::crd::DEFAULT_AUDIENCE.to_owned(),
        region: args.region.clone(),
        sts_endpoint: args.sts_endpoint.clone(),
        policy: None,
        policy_arns: Vec::new(),
        chain: Vec::new(),
    }])
}

fn binding_config(
    plan: BindingPlan,
    pod: &PodIdentity,
    env_region: Option<&str>,
    cache_file: PathBuf,
) -> Result<BindingConfig, ConfigError> {
    let name = plan.name.clone();
    let invalid = |field: String, problem: String| ConfigError::Binding {
        binding: name.clone(),
        field,
        problem,
    };
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-.".contains(c))
    {
        return Err(invalid(
            "name".into(),
            "must be a binding name (letters, digits, '-' and '.')".into(),
        ));
    }
    validate_role_arn(&plan.role_arn)?;
    let duration = crate::duration::parse_session_duration(&plan.duration)
        .map_err(|e| invalid("duration".into(), e.to_string()))?;
    let region = plan
        .region
        .clone()
        .or_else(|| env_region.map(str::to_owned))
        .unwrap_or_else(|| FALLBACK_REGION.to_owned());
    validate_region(&region)?;
    if let Some(url) = &plan.sts_endpoint {
        validate_sts_endpoint(url)?;
    }
    let render = |field: String, template: &str| -> Result<String, ConfigError> {
        render_session_name(template, pod, &name).map_err(|problem| invalid(field, problem))
    };
    let policy = |field: String, policy: &Option<String>| -> Result<Option<String>, ConfigError> {
        policy
            .as_deref()
            .map(crate::sts_fields::compact_policy)
            .transpose()
            .map_err(|e| invalid(field, e.to_string()))
    };
    let arns = |field: String, arns: &[String]| {
        crate::sts_fields::check_policy_arns(arns).map_err(|e| invalid(field, e.to_string()))
    };
    let steps = step_durations(duration, plan.chain.len());
    let session_name = render("sessionName".into(), &plan.session_name)?;
    arns("policyArns".into(), &plan.policy_arns)?;
    // The binding's session policy narrows the served session: the last hop's, if any.
    let served_policy = policy("policy".into(), &plan.policy)?;
    let (first_policy, first_arns, last_policy, last_arns) = if plan.chain.is_empty() {
        (served_policy, plan.policy_arns.clone(), None, Vec::new())
    } else {
        (None, Vec::new(), served_policy, plan.policy_arns.clone())
    };
    let first = StepRequest {
        role_arn: plan.role_arn.clone(),
        session_name: session_name.clone(),
        duration: steps[0],
        policy: first_policy,
        policy_arns: first_arns,
    };
    let last = plan.chain.len();
    let mut hops = Vec::with_capacity(last);
    for (i, hop) in plan.chain.iter().enumerate() {
        let field = |f: &str| format!("chain[{i}].{f}");
        validate_role_arn(&hop.role_arn)?;
        let mut step = StepRequest {
            role_arn: hop.role_arn.clone(),
            session_name: render(field("sessionName"), &hop.session_name)?,
            duration: steps[i + 1],
            policy: policy(field("policy"), &hop.policy)?,
            policy_arns: hop.policy_arns.clone(),
        };
        arns(field("policyArns"), &hop.policy_arns)?;
        if i + 1 == last {
            if step.policy.is_none() {
                step.policy.clone_from(&last_policy);
            }
            if step.policy_arns.is_empty() {
                step.policy_arns.clone_from(&last_arns);
            }
        }
        hops.push(hop_request(hop, step).map_err(|(f, problem)| invalid(field(f), problem))?);
    }
    let namespace = pod.namespace.as_deref().unwrap_or("<namespace>");
    let service_account = pod
        .service_account
        .as_deref()
        .unwrap_or("<service account>");
    Ok(BindingConfig {
        requested: crate::plan::served_duration(duration, last),
        exchange: ExchangeRequest {
            first,
            token_file: plan.token_file.clone(),
            hops,
            trust: Trust {
                subject: format!("system:serviceaccount:{namespace}:{service_account}"),
                audience: plan.audience.clone(),
            },
        },
        region,
        sts_endpoint: plan.sts_endpoint,
        cache_file,
        name,
    })
}

fn hop_request(hop: &HopPlan, step: StepRequest) -> Result<HopRequest, (&'static str, String)> {
    use crate::sts_fields::{check_external_id, check_source_identity, check_tags};
    if let Some(id) = &hop.external_id {
        check_external_id(id).map_err(|e| ("externalId", e.to_string()))?;
    }
    let tags = hop.tags.iter().map(|t| (t.key.as_str(), t.value.as_str()));
    check_tags(tags, &hop.transitive_tag_keys).map_err(|e| ("tags", e.to_string()))?;
    if let Some(id) = &hop.source_identity {
        check_source_identity(id).map_err(|e| ("sourceIdentity", e.to_string()))?;
    }
    Ok(HopRequest {
        step,
        external_id: hop.external_id.clone(),
        tags: hop
            .tags
            .iter()
            .map(|t| (t.key.clone(), t.value.clone()))
            .collect(),
        transitive_tag_keys: hop.transitive_tag_keys.clone(),
        source_identity: hop.source_identity.clone(),
    })
}

/// Renders a session name template, refusing one whose placeholders the environment cannot
/// fill (rather than sending a name that would be the same for every pod).
fn render_session_name(template: &str, pod: &PodIdentity, binding: &str) -> Result<String, String> {
    let used = session_name::placeholders(template).map_err(|e: TemplateError| e.to_string())?;
    let missing = |key: &str, env: &str| {
        format!("uses {{{key}}} but {env} is not set (the webhook sets it from the downward API)")
    };
    let value = |v: &Option<String>, key: &str, env: &str| -> Result<String, String> {
        match v {
            Some(v) => Ok(v.clone()),
            None if used.contains(&key) => Err(missing(key, env)),
            None => Ok(String::new()),
        }
    };
    let namespace = value(&pod.namespace, "namespace", "POD_NAMESPACE")?;
    let pod_name = value(&pod.pod, "pod", "POD_NAME")?;
    let service_account = value(
        &pod.service_account,
        "serviceAccount",
        "POD_SERVICE_ACCOUNT",
    )?;
    session_name::render(
        template,
        &Identity {
            namespace: &namespace,
            pod: &pod_name,
            service_account: &service_account,
            binding,
        },
    )
    .map_err(|e| e.to_string())
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
    #[error("no binding: give --role-arn, or one --binding per binding")]
    NoBinding,
    #[error("--binding number {index} is not a binding plan: {error}")]
    BindingJson { index: usize, error: String },
    #[error("binding {0:?} is given twice")]
    DuplicateBinding(String),
    #[error("binding {binding:?}: {field} {problem}")]
    Binding {
        binding: String,
        field: String,
        problem: String,
    },
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
        let binding = &cfg.bindings[0];
        assert_eq!(binding.name, "default");
        assert_eq!(binding.exchange.first.session_name, "team-a.web-0");
        assert_eq!(binding.region, "eu-west-1");
        assert_eq!(binding.exchange.first.duration.as_secs(), 3600);
        assert_eq!(cfg.listen.to_string(), "127.0.0.1:9911");
        assert_eq!(cfg.metrics_listen.to_string(), "0.0.0.0:9912");
        assert_eq!(
            cfg.auth_token_file.to_str(),
            Some("/var/run/credvend/auth/token")
        );
        assert_eq!(
            binding.exchange.token_file.to_str(),
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
            AgentConfig::from_args(&args, env(&[])).unwrap().bindings[0].region,
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

    #[test]
    fn session_name_flag_is_a_template_filled_from_the_pod() {
        let with = |flag: Option<&str>, pairs: &[(&str, &str)]| {
            let mut argv = vec!["--role-arn", "arn:aws:iam::111122223333:role/r"];
            if let Some(flag) = flag {
                argv.extend(["--session-name", flag]);
            }
            AgentConfig::from_args(&parse(&argv), env(pairs))
                .map(|c| c.bindings[0].exchange.first.session_name.clone())
        };
        let pod = [
            ("POD_NAMESPACE", "ns"),
            ("POD_NAME", "p"),
            ("POD_SERVICE_ACCOUNT", "app"),
        ];
        assert_eq!(with(Some("mine"), &[]).as_deref(), Ok("mine"));
        assert_eq!(with(None, &pod).as_deref(), Ok("ns.p"));
        assert_eq!(with(Some("  "), &pod).as_deref(), Ok("ns.p"));
        assert_eq!(
            with(Some("{serviceAccount}@{binding}"), &pod).as_deref(),
            Ok("app@default")
        );
        let err = with(None, &[("POD_NAMESPACE", "ns")])
            .unwrap_err()
            .to_string();
        assert!(err.contains("{pod}") && err.contains("POD_NAME"), "{err}");
        let err = with(Some("{podname}"), &pod).unwrap_err().to_string();
        assert!(err.contains("not a placeholder"), "{err}");
    }

    fn plan_json(name: &str, chain: serde_json::Value) -> String {
        serde_json::json!({
            "name": name,
            "roleArn": "arn:aws:iam::111122223333:role/first",
            "duration": "2h",
            "sessionName": "{namespace}.{pod}",
            "tokenFile": "/t",
            "audience": "sts.amazonaws.com",
            "policy": "{ \"Statement\": {\"Effect\": \"Allow\", \"Action\": \"s3:*\", \"Resource\": \"*\"} }",
            "policyArns": ["arn:aws:iam::aws:policy/ReadOnlyAccess"],
            "chain": chain,
        })
        .to_string()
    }

    #[test]
    fn binding_plans_become_bindings_with_the_chaining_rule_applied() {
        let chain = serde_json::json!([
            {"roleArn": "arn:aws:iam::444455556666:role/second", "sessionName": "{binding}", "externalId": "ext-1"},
            {"roleArn": "arn:aws:iam::777788889999:role/third", "sessionName": "{pod}",
             "tags": [{"key": "team", "value": "a"}], "transitiveTagKeys": ["team"]}
        ]);
        let args = parse(&[
            "--binding",
            &plan_json("s3", chain),
            "--binding",
            &plan_json("queue", serde_json::json!([])),
        ]);
        let pod = env(&[
            ("POD_NAMESPACE", "ns"),
            ("POD_NAME", "p"),
            ("POD_SERVICE_ACCOUNT", "app"),
        ]);
        let cfg = AgentConfig::from_args(&args, pod).unwrap();
        let [chained, plain] = cfg.bindings.as_slice() else {
            panic!("two bindings")
        };
        let minutes = |d: Duration| d.as_secs() / 60;
        assert_eq!(
            chained.requested,
            Duration::from_secs(3600),
            "clamped to 1h"
        );
        let ex = &chained.exchange;
        assert_eq!(minutes(ex.first.duration), 15);
        assert_eq!(
            ex.first.policy, None,
            "the policy narrows the served session only"
        );
        assert_eq!(ex.hops[0].step.session_name, "s3");
        assert_eq!(ex.hops[0].external_id.as_deref(), Some("ext-1"));
        assert_eq!(minutes(ex.hops[0].step.duration), 15);
        assert_eq!(ex.hops[1].step.session_name, "p-");
        assert_eq!(minutes(ex.hops[1].step.duration), 60);
        let policy = ex.hops[1].step.policy.as_deref().unwrap();
        assert!(!policy.contains(' '), "compact: {policy}");
        let policy: serde_json::Value = serde_json::from_str(policy).unwrap();
        assert_eq!(policy["Statement"]["Action"], "s3:*");
        assert_eq!(ex.hops[1].step.policy_arns.len(), 1);
        assert_eq!(ex.trust.subject, "system:serviceaccount:ns:app");
        assert_eq!(plain.requested, Duration::from_secs(7200));
        assert!(plain.exchange.first.policy.is_some());
        assert_eq!(chained.cache_file.file_name().unwrap(), "credentials.json");
        assert_eq!(
            plain.cache_file.file_name().unwrap(),
            "credentials-queue.json"
        );
    }

    #[test]
    fn bad_binding_plans_are_refused_with_the_binding_named() {
        let pod = || env(&[("POD_NAMESPACE", "ns"), ("POD_NAME", "p")]);
        let cases = [
            (
                vec![
                    plan_json("s3", serde_json::json!([])),
                    plan_json("s3", serde_json::json!([])),
                ],
                "given twice",
            ),
            (vec!["{".to_owned()], "--binding number 1"),
            (
                vec![plan_json(
                    "s3",
                    serde_json::json!([{"roleArn": "arn:aws:iam::444455556666:role/x", "sessionName": "s", "tags": [{"key": "aws:x", "value": "v"}]}]),
                )],
                "chain[0].tags",
            ),
        ];
        for (bindings, words) in cases {
            let mut argv = Vec::new();
            for b in &bindings {
                argv.extend(["--binding", b.as_str()]);
            }
            let err = AgentConfig::from_args(&parse(&argv), pod())
                .unwrap_err()
                .to_string();
            assert!(err.contains(words), "{words:?} in {err}");
        }
        // --binding and --role-arn describe the same thing twice.
        let both = Cli::try_parse_from([
            "agent",
            "--role-arn",
            "arn:aws:iam::111122223333:role/r",
            "--binding",
            "{}",
        ]);
        assert!(both.is_err());
    }
}
