//! STS `RoleSessionName`s from a binding's `sessionName` template.
//!
//! The session name shows in CloudTrail and in the assumed-role ARN, and services such as MSK's
//! IAM auth key on it, so it must be the same for a pod across every refresh and every restart
//! of its agent, and different for different pods. It is therefore rendered from the pod's
//! identity only (never from time or randomness), in the agent, because the pod's name is not
//! known at admission when the pod uses `generateName`.
//!
//! STS allows 2–64 characters of `[\w+=,.@-]`. Rendering replaces any other character by `-`
//! and, when the result is longer than 64 characters, keeps the first 55 and appends `-` and 8
//! hex digits of the SHA-256 of the whole rendered name: two pods whose long names share a
//! 64-character prefix still get different session names, and one pod always gets the same.

use sha2::{Digest, Sha256};

/// What a binding uses when it sets no `sessionName`.
pub const DEFAULT_TEMPLATE: &str = "{namespace}.{pod}";
/// STS's limits on `RoleSessionName`.
pub const MIN_LEN: usize = 2;
/// STS's limits on `RoleSessionName`.
pub const MAX_LEN: usize = 64;
/// The longest template a binding may write (placeholders count by their names).
pub const MAX_TEMPLATE_LEN: usize = 128;
/// Hex digits of the hash suffix of a shortened name.
const HASH_HEX_DIGITS: usize = 8;
/// The placeholders a template may use.
pub const PLACEHOLDERS: [&str; 4] = ["namespace", "pod", "serviceAccount", "binding"];
/// The CRD's CEL rule for a template: literal characters of STS's set and known placeholders.
pub const CEL_TEMPLATE: &str =
    "self.matches('^([A-Za-z0-9_+=,.@-]|[{](namespace|pod|serviceAccount|binding)[}])+$')";

/// The values a template's placeholders stand for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Identity<'a> {
    pub namespace: &'a str,
    pub pod: &'a str,
    pub service_account: &'a str,
    pub binding: &'a str,
}

/// Why a template cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    #[error("is empty")]
    Empty,
    #[error("is longer than {MAX_TEMPLATE_LEN} characters")]
    TooLong,
    #[error(
        "uses {{{0}}}, which is not a placeholder; use {{namespace}}, {{pod}}, {{serviceAccount}} or {{binding}}"
    )]
    UnknownPlaceholder(String),
    #[error("has a '{{' without its '}}'")]
    Unclosed,
    #[error(
        "contains {0:?}, which STS does not allow in a session name; use letters, digits and _+=,.@-"
    )]
    Character(char),
}

/// One piece of a parsed template.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Piece<'a> {
    Literal(&'a str),
    Placeholder(&'a str),
}

fn parse(template: &str) -> Result<Vec<Piece<'_>>, TemplateError> {
    if template.is_empty() {
        return Err(TemplateError::Empty);
    }
    if template.chars().count() > MAX_TEMPLATE_LEN {
        return Err(TemplateError::TooLong);
    }
    let mut pieces = Vec::new();
    let mut rest = template;
    while !rest.is_empty() {
        match rest.find('{') {
            Some(0) => {
                let end = rest.find('}').ok_or(TemplateError::Unclosed)?;
                let name = &rest[1..end];
                if !PLACEHOLDERS.contains(&name) {
                    return Err(TemplateError::UnknownPlaceholder(name.to_owned()));
                }
                pieces.push(Piece::Placeholder(name));
                rest = &rest[end + 1..];
            }
            found => {
                let end = found.unwrap_or(rest.len());
                let literal = &rest[..end];
                if let Some(bad) = literal.chars().find(|c| !is_session_char(*c)) {
                    return Err(TemplateError::Character(bad));
                }
                pieces.push(Piece::Literal(literal));
                rest = &rest[end..];
            }
        }
    }
    Ok(pieces)
}

/// Checks a template without rendering it.
pub fn check_template(template: &str) -> Result<(), TemplateError> {
    parse(template).map(|_| ())
}

/// The placeholders `template` uses, in order of appearance.
pub fn placeholders(template: &str) -> Result<Vec<&str>, TemplateError> {
    Ok(parse(template)?
        .into_iter()
        .filter_map(|piece| match piece {
            Piece::Placeholder(name) => Some(name),
            Piece::Literal(_) => None,
        })
        .collect())
}

/// Renders `template` for `identity` into a valid, stable `RoleSessionName`.
pub fn render(template: &str, identity: &Identity<'_>) -> Result<String, TemplateError> {
    let mut raw = String::new();
    for piece in parse(template)? {
        match piece {
            Piece::Literal(text) => raw.push_str(text),
            Piece::Placeholder("namespace") => raw.push_str(identity.namespace),
            Piece::Placeholder("pod") => raw.push_str(identity.pod),
            Piece::Placeholder("serviceAccount") => raw.push_str(identity.service_account),
            Piece::Placeholder(_) => raw.push_str(identity.binding),
        }
    }
    Ok(fit(&raw))
}

/// Any string as a valid session name: other characters become `-`, a name over 64
/// characters is shortened with a hash suffix, a name under 2 is padded with `-`.
pub fn fit(raw: &str) -> String {
    let mut name: String = raw
        .chars()
        .map(|c| if is_session_char(c) { c } else { '-' })
        .collect();
    if name.len() > MAX_LEN {
        let digest = Sha256::digest(raw.as_bytes());
        let hex: String = digest
            .iter()
            .take(HASH_HEX_DIGITS / 2)
            .map(|b| format!("{b:02x}"))
            .collect();
        // Every character is ASCII now, so byte offsets are character offsets.
        name.truncate(MAX_LEN - HASH_HEX_DIGITS - 1);
        name.push('-');
        name.push_str(&hex);
    }
    while name.len() < MIN_LEN {
        name.push('-');
    }
    name
}

/// `[\w+=,.@-]` as STS means it (ASCII word characters).
pub fn is_session_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || "_+=,.@-".contains(c)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod<'a>(namespace: &'a str, pod: &'a str) -> Identity<'a> {
        Identity {
            namespace,
            pod,
            service_account: "app",
            binding: "s3",
        }
    }

    #[test]
    fn renders_every_placeholder() {
        let name = render(
            "{namespace}.{pod}@{serviceAccount}+{binding}",
            &pod("ns", "p"),
        )
        .unwrap();
        assert_eq!(name, "ns.p@app+s3");
        assert_eq!(
            render(DEFAULT_TEMPLATE, &pod("team-a", "web-0")).unwrap(),
            "team-a.web-0"
        );
        assert_eq!(render("batch", &pod("ns", "p")).unwrap(), "batch");
    }

    #[test]
    fn refuses_templates_sts_could_not_take_with_the_fix() {
        let cases = [
            ("", TemplateError::Empty),
            (
                "{namespace}.{podname}",
                TemplateError::UnknownPlaceholder("podname".into()),
            ),
            ("{pod", TemplateError::Unclosed),
            ("a b", TemplateError::Character(' ')),
            ("x/y", TemplateError::Character('/')),
        ];
        for (template, want) in cases {
            assert_eq!(check_template(template), Err(want), "{template:?}");
        }
        assert_eq!(
            check_template(&"a".repeat(129)),
            Err(TemplateError::TooLong)
        );
        let message = TemplateError::UnknownPlaceholder("podname".into()).to_string();
        assert!(
            message.contains("{podname}") && message.contains("{pod}"),
            "{message}"
        );
    }

    #[test]
    fn long_names_keep_distinct_pods_distinct_and_stay_stable() {
        let prefix = "p".repeat(70);
        let a = render("{pod}", &pod("ns", &format!("{prefix}-a"))).unwrap();
        let b = render("{pod}", &pod("ns", &format!("{prefix}-b"))).unwrap();
        assert_eq!(a.len(), MAX_LEN);
        assert_eq!(b.len(), MAX_LEN);
        assert_ne!(a, b);
        assert_eq!(&a[..55], &prefix[..55]);
        assert_eq!(a.as_bytes()[55], b'-');
        // The same pod, rendered again (a refresh, a restarted agent): the same name.
        assert_eq!(
            a,
            render("{pod}", &pod("ns", &format!("{prefix}-a"))).unwrap()
        );
        // Exactly 64 characters are kept as they are.
        let exact = "q".repeat(64);
        assert_eq!(fit(&exact), exact);
    }

    #[test]
    fn sanitizes_and_pads() {
        assert_eq!(fit("team a/web:1"), "team-a-web-1");
        assert_eq!(fit("x"), "x-");
        assert_eq!(fit(""), "--");
        assert_eq!(fit("ünï"), "-n-");
    }
}
