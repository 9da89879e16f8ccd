//! The rules STS applies to the optional fields of a role session: session policies, managed
//! policy ARNs, session tags, external ids and source identities.
//!
//! Checked here so that a binding STS would refuse fails at `kubectl apply` (as far as CEL can
//! say it) or in the binding's `Ready` condition, with the field named, instead of in every
//! pod's agent log on every refresh. The limits are STS's (see the AssumeRole API reference).

use std::collections::BTreeSet;

/// The most characters of an inline session policy, as STS counts them (plain text).
pub const MAX_POLICY_CHARS: usize = 2048;
/// The most managed session policies a session may have.
pub const MAX_POLICY_ARNS: usize = 10;
/// The most session tags of one AssumeRole call.
pub const MAX_TAGS: usize = 50;
/// Tag key and value lengths.
pub const MAX_TAG_KEY_CHARS: usize = 128;
/// Tag key and value lengths.
pub const MAX_TAG_VALUE_CHARS: usize = 256;
/// External id lengths.
pub const EXTERNAL_ID_CHARS: (usize, usize) = (2, 1224);
/// Source identity lengths.
pub const SOURCE_IDENTITY_CHARS: (usize, usize) = (2, 64);

// CEL rules, without backslashes so they read the same in Rust, CEL and YAML.
/// A session policy must at least look like a JSON object; the controller parses it.
pub const CEL_POLICY: &str = "self.matches('^[[:space:]]*[{](.|[[:space:]])*[}][[:space:]]*$')";
/// A managed policy ARN: a customer's (12-digit account) or AWS's (`aws`).
pub const CEL_POLICY_ARN: &str = "self.matches('^arn:aws(-[a-z]+)*:iam::([0-9]{12}|aws):policy/([!-.0-~]+/)*[A-Za-z0-9_+=,.@-]{1,128}$')";
/// ExternalId's character set.
pub const CEL_EXTERNAL_ID: &str = "self.matches('^[A-Za-z0-9_+=,.@:/-]+$')";
/// SourceIdentity's character set.
pub const CEL_SOURCE_IDENTITY: &str = "self.matches('^[A-Za-z0-9_+=,.@-]+$')";
/// STS reserves the `aws:` prefix for its own keys.
pub const CEL_TAG_KEY: &str = "!self.lowerAscii().startsWith('aws:')";

/// What is wrong with one field; the caller names the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FieldError {
    #[error("is longer than {MAX_POLICY_CHARS} characters, the limit of STS")]
    PolicyTooLong,
    #[error("is not JSON ({0})")]
    PolicyNotJson(String),
    #[error(
        "is not an IAM policy document: it needs a \"Statement\" (an object or a list of them){0}"
    )]
    PolicyShape(&'static str),
    #[error(
        "{0:?} is not a managed policy ARN such as arn:aws:iam::aws:policy/ReadOnlyAccess or arn:aws:iam::111122223333:policy/s3-read"
    )]
    PolicyArn(String),
    #[error("has {0} entries; STS takes at most {MAX_POLICY_ARNS}")]
    TooManyPolicyArns(usize),
    #[error("has {0} tags; STS takes at most {MAX_TAGS} per call")]
    TooManyTags(usize),
    #[error(
        "key {0:?} must be 1 to {MAX_TAG_KEY_CHARS} letters, digits, spaces and _.:/=+-@, and not start with aws:"
    )]
    TagKey(String),
    #[error(
        "value of {0:?} must be at most {MAX_TAG_VALUE_CHARS} letters, digits, spaces and _.:/=+-@"
    )]
    TagValue(String),
    #[error("key {0:?} appears twice (tag keys are case-insensitive)")]
    DuplicateTag(String),
    #[error("names {0:?}, which is not one of the hop's sessionTags")]
    TransitiveKeyNotTagged(String),
    #[error("must be 2 to 1224 characters of letters, digits and _+=,.@:/-")]
    ExternalId,
    #[error("must be 2 to 64 characters of letters, digits and _+=,.@- (and not start with aws:)")]
    SourceIdentity,
}

/// Checks an inline session policy and returns it compact (no insignificant whitespace), which
/// is what the agent sends: STS counts the plain text, and a policy indented in YAML would
/// otherwise spend part of its 2048 characters on spaces.
pub fn compact_policy(policy: &str) -> Result<String, FieldError> {
    if policy.chars().count() > MAX_POLICY_CHARS {
        return Err(FieldError::PolicyTooLong);
    }
    let value: serde_json::Value =
        serde_json::from_str(policy).map_err(|e| FieldError::PolicyNotJson(e.to_string()))?;
    let object = value
        .as_object()
        .ok_or(FieldError::PolicyShape("; this is not a JSON object"))?;
    let statement_ok = match object.get("Statement") {
        Some(serde_json::Value::Object(_)) => true,
        Some(serde_json::Value::Array(items)) => {
            !items.is_empty() && items.iter().all(serde_json::Value::is_object)
        }
        _ => false,
    };
    if !statement_ok {
        return Err(FieldError::PolicyShape(""));
    }
    if let Some(version) = object.get("Version")
        && !matches!(version.as_str(), Some("2012-10-17" | "2008-10-17"))
    {
        return Err(FieldError::PolicyShape(
            ", and its \"Version\" must be \"2012-10-17\"",
        ));
    }
    serde_json::to_string(&value).map_err(|e| FieldError::PolicyNotJson(e.to_string()))
}

/// Checks managed session policy ARNs.
pub fn check_policy_arns(arns: &[String]) -> Result<(), FieldError> {
    if arns.len() > MAX_POLICY_ARNS {
        return Err(FieldError::TooManyPolicyArns(arns.len()));
    }
    match arns
        .iter()
        .find(|arn| arn.len() > 2048 || !is_policy_arn(arn))
    {
        Some(bad) => Err(FieldError::PolicyArn(bad.clone())),
        None => Ok(()),
    }
}

fn is_policy_arn(arn: &str) -> bool {
    let Some(rest) = arn.strip_prefix("arn:") else {
        return false;
    };
    let Some((partition, rest)) = rest.split_once(":iam::") else {
        return false;
    };
    let partition_ok = partition == "aws"
        || partition.strip_prefix("aws-").is_some_and(|p| {
            p.split('-')
                .all(|w| !w.is_empty() && w.bytes().all(|b| b.is_ascii_lowercase()))
        });
    let Some((account, path)) = rest.split_once(":policy/") else {
        return false;
    };
    let account_ok =
        account == "aws" || (account.len() == 12 && account.bytes().all(|b| b.is_ascii_digit()));
    let mut segments: Vec<&str> = path.split('/').collect();
    let name = segments.pop().unwrap_or_default();
    let name_ok =
        (1..=128).contains(&name.len()) && name.chars().all(crate::session_name::is_session_char);
    let path_ok = segments
        .iter()
        .all(|s| !s.is_empty() && s.bytes().all(|b| (b'!'..=b'~').contains(&b) && b != b'/'));
    partition_ok && account_ok && name_ok && path_ok
}

/// The characters STS allows in tag keys and values: Unicode letters, digits and spaces, and
/// `_.:/=+-@`.
fn is_tag_char(c: char) -> bool {
    c.is_alphanumeric() || c == ' ' || "_.:/=+-@".contains(c)
}

/// Checks a hop's session tags and transitive keys.
pub fn check_tags<'a>(
    tags: impl ExactSizeIterator<Item = (&'a str, &'a str)>,
    transitive: &[String],
) -> Result<(), FieldError> {
    if tags.len() > MAX_TAGS {
        return Err(FieldError::TooManyTags(tags.len()));
    }
    let mut seen = BTreeSet::new();
    let mut keys = BTreeSet::new();
    for (key, value) in tags {
        keys.insert(key);
        let key_ok = (1..=MAX_TAG_KEY_CHARS).contains(&key.chars().count())
            && key.chars().all(is_tag_char)
            && !key.to_ascii_lowercase().starts_with("aws:");
        if !key_ok {
            return Err(FieldError::TagKey(key.to_owned()));
        }
        if value.chars().count() > MAX_TAG_VALUE_CHARS || !value.chars().all(is_tag_char) {
            return Err(FieldError::TagValue(key.to_owned()));
        }
        if !seen.insert(key.to_lowercase()) {
            return Err(FieldError::DuplicateTag(key.to_owned()));
        }
    }
    if transitive.len() > MAX_TAGS {
        return Err(FieldError::TooManyTags(transitive.len()));
    }
    // Exactly as written: the key STS matches is the tag's.
    match transitive.iter().find(|k| !keys.contains(k.as_str())) {
        Some(key) => Err(FieldError::TransitiveKeyNotTagged(key.clone())),
        None => Ok(()),
    }
}

/// Checks an external id.
pub fn check_external_id(id: &str) -> Result<(), FieldError> {
    let (min, max) = EXTERNAL_ID_CHARS;
    let ok = (min..=max).contains(&id.len())
        && id
            .chars()
            .all(|c| crate::session_name::is_session_char(c) || c == ':' || c == '/');
    if ok {
        Ok(())
    } else {
        Err(FieldError::ExternalId)
    }
}

/// Checks a source identity.
pub fn check_source_identity(id: &str) -> Result<(), FieldError> {
    let (min, max) = SOURCE_IDENTITY_CHARS;
    let ok = (min..=max).contains(&id.len())
        && id.chars().all(crate::session_name::is_session_char)
        && !id.to_ascii_lowercase().starts_with("aws:");
    if ok {
        Ok(())
    } else {
        Err(FieldError::SourceIdentity)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policies_must_be_policy_documents_and_are_sent_compact() {
        let written = r#"{
            "Version": "2012-10-17",
            "Statement": [{"Effect": "Allow", "Action": "s3:GetObject", "Resource": "*"}]
        }"#;
        let compact = compact_policy(written).unwrap();
        assert!(
            !compact.contains(' ') && !compact.contains('\n'),
            "{compact}"
        );
        let back: serde_json::Value = serde_json::from_str(&compact).unwrap();
        assert_eq!(back["Statement"][0]["Action"], "s3:GetObject");
        let cases = [
            ("{", "is not JSON"),
            ("[]", "not a JSON object"),
            (r#"{"Version":"2012-10-17"}"#, "needs a \"Statement\""),
            (r#"{"Statement":[]}"#, "needs a \"Statement\""),
            (
                r#"{"Statement":{"Effect":"Allow"},"Version":"2020"}"#,
                "2012-10-17",
            ),
        ];
        for (policy, words) in cases {
            let err = compact_policy(policy).unwrap_err().to_string();
            assert!(err.contains(words), "{policy}: {err}");
        }
        let long = format!(r#"{{"Statement":{{"Sid":"{}"}}}}"#, "a".repeat(2048));
        assert_eq!(compact_policy(&long), Err(FieldError::PolicyTooLong));
    }

    #[test]
    fn policy_arns() {
        let ok = [
            "arn:aws:iam::aws:policy/ReadOnlyAccess",
            "arn:aws:iam::111122223333:policy/s3-read",
            "arn:aws-us-gov:iam::aws:policy/team/x/Read_Only",
        ];
        assert_eq!(check_policy_arns(&ok.map(String::from)), Ok(()));
        for bad in [
            "arn:aws:iam::aws:role/x",
            "arn:aws:iam::1234:policy/x",
            "arn:aws:iam::aws:policy/",
            "arn:aws:iam::aws:policy/a b",
            "ReadOnlyAccess",
        ] {
            assert!(check_policy_arns(&[bad.to_owned()]).is_err(), "{bad}");
        }
        let eleven = vec!["arn:aws:iam::aws:policy/ReadOnlyAccess".to_owned(); 11];
        assert_eq!(
            check_policy_arns(&eleven),
            Err(FieldError::TooManyPolicyArns(11))
        );
    }

    #[test]
    fn tags_follow_sts_limits() {
        let check = |tags: &[(&str, &str)], transitive: &[&str]| {
            let transitive: Vec<String> = transitive.iter().map(|s| (*s).to_owned()).collect();
            check_tags(tags.iter().copied(), &transitive)
        };
        assert_eq!(
            check(&[("team", "a"), ("Projekt Ä", "x:y/z")], &["team"]),
            Ok(())
        );
        assert_eq!(
            check(&[("aws:x", "a")], &[]),
            Err(FieldError::TagKey("aws:x".into()))
        );
        assert_eq!(
            check(&[("", "a")], &[]),
            Err(FieldError::TagKey(String::new()))
        );
        assert_eq!(
            check(&[("k", "a*")], &[]),
            Err(FieldError::TagValue("k".into()))
        );
        assert_eq!(
            check(&[("Team", "a"), ("team", "b")], &[]),
            Err(FieldError::DuplicateTag("team".into()))
        );
        assert_eq!(
            check(&[("team", "a")], &["cost"]),
            Err(FieldError::TransitiveKeyNotTagged("cost".into()))
        );
        let many: Vec<(String, String)> = (0..51).map(|i| (format!("k{i}"), "v".into())).collect();
        let refs: Vec<(&str, &str)> = many.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        assert_eq!(check(&refs, &[]), Err(FieldError::TooManyTags(51)));
    }

    #[test]
    fn external_ids_and_source_identities() {
        assert_eq!(check_external_id("partner:42/prod"), Ok(()));
        assert!(check_external_id("x").is_err());
        assert!(check_external_id("has space").is_err());
        assert!(check_external_id(&"e".repeat(1225)).is_err());
        assert_eq!(check_source_identity("alice@example.com"), Ok(()));
        assert!(check_source_identity("aws:me").is_err());
        assert!(check_source_identity("a/b").is_err());
        assert!(check_source_identity(&"s".repeat(65)).is_err());
    }
}
