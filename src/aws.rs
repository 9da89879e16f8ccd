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
