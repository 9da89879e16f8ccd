//! AWS naming rules that both the AWSRoleBinding validation and the agent's flags enforce.
//!
//! One implementation, so a binding the controller calls Ready is never refused by the agent it
//! configures (or the other way round). Each check returns a short reason in words; the
//! callers wrap it in their own error, which names the field or the flag.

/// IAM's limit on a role path, slashes included.
const MAX_ROLE_PATH_LEN: usize = 512;
/// IAM's limit on a role name.
const MAX_ROLE_NAME_LEN: usize = 64;
/// STS's limit on the `RoleArn` parameter.
const MAX_ROLE_ARN_LEN: usize = 2048;
/// The CRD's `maxLength` for `region` (real codes are far shorter).
const MAX_REGION_LEN: usize = 32;
/// The CRD's `maxLength` for `stsEndpoint`.
const MAX_STS_ENDPOINT_LEN: usize = 2048;

/// Checks an IAM role ARN: `arn:<partition>:iam::<account>:role/<path/><name>`.
pub fn check_role_arn(arn: &str) -> Result<(), &'static str> {
    if arn.len() > MAX_ROLE_ARN_LEN {
        return Err("longer than 2048 characters");
    }
    let fields: Vec<&str> = arn.splitn(6, ':').collect();
    let [prefix, partition, service, region, account, resource] = fields.as_slice() else {
        return Err("it needs six ':'-separated fields");
    };
    if *prefix != "arn" {
        return Err("it must start with 'arn:'");
    }
    if !is_partition(partition) {
        return Err("the partition must be aws, aws-cn, aws-us-gov or another aws-* partition");
    }
    if *service != "iam" {
        return Err("the service must be iam");
    }
    if !region.is_empty() {
        return Err("IAM ARNs have no region");
    }
    if account.len() != 12 || !account.bytes().all(|b| b.is_ascii_digit()) {
        return Err("the account id must be 12 digits");
    }
    let Some(path_and_name) = resource.strip_prefix("role/") else {
        return Err("the resource must be role/<name>");
    };
    check_role_path_and_name(path_and_name)
}

fn is_partition(p: &str) -> bool {
    let Some(rest) = p.strip_prefix("aws") else {
        return false;
    };
    rest.is_empty()
        || rest.strip_prefix('-').is_some_and(|r| {
            r.split('-')
                .all(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_lowercase()))
        })
}

fn check_role_path_and_name(path_and_name: &str) -> Result<(), &'static str> {
    let (path, name) = match path_and_name.rsplit_once('/') {
        Some((path, name)) => (Some(path), name),
        None => (None, path_and_name),
    };
    if name.is_empty() || name.len() > MAX_ROLE_NAME_LEN {
        return Err("the role name must have 1 to 64 characters");
    }
    let name_char = |b: u8| b.is_ascii_alphanumeric() || b"_+=,.@-".contains(&b);
    if !name.bytes().all(name_char) {
        return Err("the role name may only contain letters, digits and _+=,.@-");
    }
    let Some(path) = path else {
        return Ok(());
    };
    // The path as IAM stores it, "/a/b/", is at most 512 characters.
    if path.len() + 2 > MAX_ROLE_PATH_LEN {
        return Err("the role path is longer than 512 characters");
    }
    let segment_ok = |s: &str| !s.is_empty() && s.bytes().all(|b| (0x21..=0x7e).contains(&b));
    if !path.split('/').all(segment_ok) {
        return Err("the role path must be printable ASCII segments separated by single '/'");
    }
    Ok(())
}

/// An AWS region code such as `eu-west-1`, `us-gov-west-1`, `us-isob-east-1` or
/// `eusc-de-east-1`: `^[a-z]{2,4}(-[a-z]+){1,3}-[0-9]{1,2}$`, at most 32 characters.
pub fn is_region(s: &str) -> bool {
    if s.len() > MAX_REGION_LEN {
        return false;
    }
    let parts: Vec<&str> = s.split('-').collect();
    let lower = |p: &&str| !p.is_empty() && p.bytes().all(|b| b.is_ascii_lowercase());
    match parts.as_slice() {
        [first, middle @ .., last] if (1..=3).contains(&middle.len()) => {
            (2..=4).contains(&first.len())
                && lower(first)
                && middle.iter().all(lower)
                && (1..=2).contains(&last.len())
                && last.bytes().all(|b| b.is_ascii_digit())
        }
        _ => false,
    }
}

/// https anywhere; http only to a loopback IP literal, so the web identity token never crosses
/// a network unencrypted.
pub fn check_sts_endpoint(url: &str) -> Result<(), &'static str> {
    if url.len() > MAX_STS_ENDPOINT_LEN {
        return Err("is longer than 2048 characters");
    }
    let uri: http::Uri = url.parse().map_err(|_| "is not a URL")?;
    let (Some(scheme), Some(authority)) = (uri.scheme_str(), uri.authority()) else {
        return Err("is not an absolute URL");
    };
    if authority.as_str().contains('@') {
        return Err("must not contain user information");
    }
    if uri.query().is_some() {
        return Err("must not have a query");
    }
    match scheme {
        "https" => Ok(()),
        // As the CRD's rule has it: a lowercase `http://` and the literal 127.x.y.z or [::1]
        // (its regular expression is case-sensitive and its hostname test exact).
        "http" if url.starts_with("http://") && is_loopback_literal(authority.host()) => Ok(()),
        "http" => Err("uses plain http to a host that is not a loopback IP"),
        _ => Err("must use https"),
    }
}

fn is_loopback_literal(host: &str) -> bool {
    host == "[::1]"
        || host
            .parse::<std::net::Ipv4Addr>()
            .is_ok_and(|ip| ip.is_loopback())
}

pub fn is_loopback_host(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.parse::<std::net::IpAddr>()
        .is_ok_and(|ip| ip.is_loopback())
}

/// DNS suffixes of the AWS partitions (aws, aws-us-gov; aws-cn; aws-eusc; aws-iso; aws-iso-b;
/// aws-iso-e; aws-iso-f), as the STS SDK's partition table lists them.
const PARTITION_DNS_SUFFIXES: [&str; 7] = [
    "amazonaws.com",
    "amazonaws.com.cn",
    "amazonaws.eu",
    "c2s.ic.gov",
    "sc2s.sgov.gov",
    "cloud.adc-e.uk",
    "csp.hci.ic.gov",
];
/// The partitions' dual-stack (IPv6) DNS suffixes, in the same order.
const PARTITION_DUAL_STACK_SUFFIXES: [&str; 7] = [
    "api.aws",
    "api.amazonwebservices.com.cn",
    "api.amazonwebservices.eu",
    "api.aws.ic.gov",
    "api.aws.scloud",
    "api.cloud-aws.adc-e.uk",
    "api.aws.hci.ic.gov",
];

/// One allowed STS endpoint: `scheme://host[:port]`, where a host label may hold `*`, which
/// matches one or more letters, digits or '-' inside that label (never a '.'), so
/// `sts.*.amazonaws.com` allows every regional endpoint and nothing outside `amazonaws.com`.
/// Without a port, the scheme's default port is meant (443 for https, 80 for http).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StsEndpointPattern {
    scheme: String,
    labels: Vec<String>,
    port: u16,
}

/// Which STS endpoints bindings may send their pods' web identity tokens to: whoever can edit
/// an AWSRoleBinding must not be able to point it at a server of their own and collect tokens
/// that STS would accept for the pod's service account.
///
/// [`StsEndpointAllowlist::aws`] holds AWS's own STS hostnames in every partition (global,
/// regional, FIPS, dual-stack and VPC endpoints); the operator adds what its administrator
/// allows on top. A binding without `stsEndpoint` uses the regional endpoint derived from its
/// region, which is AWS's, so the list only judges explicit endpoints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StsEndpointAllowlist {
    patterns: Vec<StsEndpointPattern>,
}

impl StsEndpointAllowlist {
    /// AWS's own STS endpoints, in every partition.
    pub fn aws() -> Self {
        let mut hosts = vec!["sts.amazonaws.com".to_owned()];
        for suffix in PARTITION_DNS_SUFFIXES {
            hosts.push(format!("sts.*.{suffix}"));
            hosts.push(format!("sts-fips.*.{suffix}"));
            // Interface VPC endpoints: vpce-<id>[-<az>].sts.<region>.vpce.<suffix>.
            hosts.push(format!("vpce-*.sts.*.vpce.{suffix}"));
        }
        for suffix in PARTITION_DUAL_STACK_SUFFIXES {
            hosts.push(format!("sts.*.{suffix}"));
            hosts.push(format!("sts-fips.*.{suffix}"));
        }
        let patterns = hosts
            .into_iter()
            .map(|host| StsEndpointPattern {
                scheme: "https".to_owned(),
                labels: host.split('.').map(str::to_owned).collect(),
                port: 443,
            })
            .collect();
        StsEndpointAllowlist { patterns }
    }

    /// AWS's endpoints plus `extra` (patterns as [`parse_sts_endpoint_pattern`] reads them).
    pub fn aws_and(extra: &[String]) -> Result<Self, String> {
        let mut list = Self::aws();
        for entry in extra.iter().map(|e| e.trim()).filter(|e| !e.is_empty()) {
            let pattern = parse_sts_endpoint_pattern(entry)
                .map_err(|why| format!("allowed STS endpoint {entry:?} {why}"))?;
            list.patterns.push(pattern);
        }
        Ok(list)
    }

    /// Whether `url` (a binding's `stsEndpoint`) is on the list. Path and query do not matter:
    /// the token goes to whoever answers at the scheme, host and port.
    pub fn allows(&self, url: &str) -> bool {
        let Ok(uri) = url.parse::<http::Uri>() else {
            return false;
        };
        let (Some(scheme), Some(authority)) = (uri.scheme_str(), uri.authority()) else {
            return false;
        };
        let Some(port) = authority.port_u16().or_else(|| default_port(scheme)) else {
            return false;
        };
        let host = authority.host().to_ascii_lowercase();
        let host = host.trim_end_matches('.');
        let labels: Vec<&str> = host.split('.').collect();
        self.patterns.iter().any(|p| {
            p.scheme.eq_ignore_ascii_case(scheme)
                && p.port == port
                && p.labels.len() == labels.len()
                && p.labels
                    .iter()
                    .zip(&labels)
                    .all(|(p, l)| label_matches(p, l))
        })
    }
}

fn default_port(scheme: &str) -> Option<u16> {
    match scheme {
        "https" => Some(443),
        "http" => Some(80),
        _ => None,
    }
}

/// Reads an allowed-endpoint pattern: `https://host[:port]` or `http://<loopback IP>[:port]`
/// (the same schemes a binding may use), a host whose labels may contain one `*` each; a path
/// other than `/` is refused so nobody believes it narrows anything.
pub fn parse_sts_endpoint_pattern(entry: &str) -> Result<StsEndpointPattern, &'static str> {
    let (scheme, rest) = entry
        .split_once("://")
        .ok_or("needs a scheme, such as https://sts.example.com")?;
    let scheme = scheme.to_ascii_lowercase();
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    if rest.contains(['/', '?', '#', '@']) {
        return Err("must be scheme://host[:port] only (no path, query or user information)");
    }
    // An IPv6 literal keeps its brackets, as `http::uri::Authority::host` does.
    let (host, port) = match rest.find(']') {
        Some(end) if rest.starts_with('[') => (&rest[..=end], rest[end + 1..].strip_prefix(':')),
        _ => match rest.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (rest, None),
        },
    };
    let port = port
        .map(|p| p.parse::<u16>().map_err(|_| "has an invalid port"))
        .transpose()?;
    if host.is_empty() {
        return Err("has no host");
    }
    match scheme.as_str() {
        "https" => {}
        "http" if is_loopback_host(host) => {}
        "http" => return Err("uses plain http to a host that is not a loopback IP"),
        _ => return Err("must use https"),
    }
    let host = host.to_ascii_lowercase();
    let labels: Vec<String> = host.split('.').map(str::to_owned).collect();
    let label_ok = |l: &String| {
        !l.is_empty()
            && l.matches('*').count() <= 1
            && l.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-*[]:".contains(&b))
    };
    if !labels.iter().all(label_ok) {
        return Err("has a host that is not a DNS name or IP literal (at most one '*' per label)");
    }
    if labels.iter().filter(|l| l.contains('*')).count() == labels.len() {
        return Err("would allow every host");
    }
    let port = port
        .or_else(|| default_port(&scheme))
        .ok_or("has no port")?;
    Ok(StsEndpointPattern {
        scheme,
        labels,
        port,
    })
}

/// `*` in a pattern label stands for one or more letters, digits or '-'.
fn label_matches(pattern: &str, label: &str) -> bool {
    let Some((prefix, suffix)) = pattern.split_once('*') else {
        return pattern == label;
    };
    label.len() > prefix.len() + suffix.len()
        && label.starts_with(prefix)
        && label.ends_with(suffix)
        && label[prefix.len()..label.len() - suffix.len()]
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    #[test]
    fn aws_own_sts_endpoints_are_allowed_in_every_partition() {
        let aws = StsEndpointAllowlist::aws();
        for url in [
            "https://sts.amazonaws.com",
            "https://sts.amazonaws.com/",
            "https://sts.eu-west-1.amazonaws.com",
            "https://STS.EU-WEST-1.AMAZONAWS.COM",
            "https://sts.eu-west-1.amazonaws.com:443/",
            "https://sts-fips.us-east-1.amazonaws.com",
            "https://sts.us-gov-west-1.amazonaws.com",
            "https://sts.cn-north-1.amazonaws.com.cn",
            "https://sts.eusc-de-east-1.amazonaws.eu",
            "https://sts.us-iso-east-1.c2s.ic.gov",
            "https://sts.us-isob-east-1.sc2s.sgov.gov",
            "https://sts-fips.us-isob-east-1.sc2s.sgov.gov",
            "https://sts.eu-isoe-west-1.cloud.adc-e.uk",
            "https://sts.us-isof-south-1.csp.hci.ic.gov",
            "https://sts.us-east-1.api.aws",
            "https://sts-fips.us-east-1.api.aws",
            "https://sts.cn-northwest-1.api.amazonwebservices.com.cn",
            "https://vpce-0123456789abcdef0-abcdefgh.sts.us-east-1.vpce.amazonaws.com",
            "https://vpce-0123456789abcdef0-abcdefgh-us-east-1a.sts.us-east-1.vpce.amazonaws.com",
            "https://vpce-0abc-defg.sts.cn-north-1.vpce.amazonaws.com.cn",
        ] {
            assert!(aws.allows(url), "{url}");
        }
    }

    #[test]
    fn anything_else_is_refused_by_default() {
        let aws = StsEndpointAllowlist::aws();
        for url in [
            "https://sts.example.com",
            "https://evil.example.com/sts.amazonaws.com",
            "https://sts.amazonaws.com.evil.example.com",
            "https://sts.eu-west-1.amazonaws.com.evil.example",
            "https://sts.eu-west-1.amazonaws.com:8443",
            "http://sts.eu-west-1.amazonaws.com",
            "https://s3.eu-west-1.amazonaws.com",
            "https://sts.a.b.amazonaws.com",
            "https://sts..amazonaws.com",
            "https://x.sts.us-east-1.vpce.amazonaws.com",
            "https://vpce-1.sts.us-east-1.vpce.example.com",
            "http://127.0.0.1:5000",
            "not a url",
        ] {
            assert!(!aws.allows(url), "{url}");
        }
    }

    #[test]
    fn the_administrator_adds_endpoints_of_their_own() {
        let list = StsEndpointAllowlist::aws_and(&[
            "http://127.0.0.1:5000".to_owned(),
            "https://sts.*.internal.example".to_owned(),
            " ".to_owned(),
        ])
        .unwrap();
        assert!(list.allows("http://127.0.0.1:5000"));
        assert!(list.allows("http://127.0.0.1:5000/"));
        assert!(!list.allows("http://127.0.0.1:5001"));
        assert!(!list.allows("http://127.0.0.2:5000"));
        assert!(list.allows("https://sts.eu-1.internal.example"));
        assert!(!list.allows("https://sts.eu.1.internal.example"));
        assert!(list.allows("https://sts.eu-west-1.amazonaws.com"));
    }

    #[test]
    fn allowed_endpoint_patterns_are_checked() {
        for (entry, why) in [
            ("sts.example.com", "needs a scheme"),
            ("ftp://sts.example.com", "must use https"),
            ("http://sts.example.com", "not a loopback IP"),
            ("https://sts.example.com/path", "no path"),
            ("https://user@sts.example.com", "no path"),
            ("https://*.*", "every host"),
            ("https://s**s.example.com", "at most one"),
            ("https://sts.example.com:http", "invalid port"),
        ] {
            let err = parse_sts_endpoint_pattern(entry).unwrap_err();
            assert!(err.contains(why), "{entry}: {err}");
        }
        let err = StsEndpointAllowlist::aws_and(&["sts.example.com".to_owned()]).unwrap_err();
        assert!(err.contains("\"sts.example.com\""), "{err}");
        assert!(parse_sts_endpoint_pattern("https://[::1]:8443").is_ok());
        assert!(parse_sts_endpoint_pattern("http://[::1]:8443").is_ok());
    }
}
