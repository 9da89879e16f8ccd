//! What the agent hands its exchange process and what it reads back: one JSON document on the
//! child's stdin (the [`Job`]) and one on its stdout (the [`Answer`]).
//!
//! Both ends are the same binary, so the format needs no version. The job carries the web
//! identity token one way and the answer carries credentials the other, so neither type's
//! `Debug` shows them. Everything here is pure: the pipes are in
//! [`exchange_process`](super::exchange_process) and [`exchange_child`](super::exchange_child).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

use super::credentials::Credentials;
use super::exchange::{Call, ExchangeError, ExchangeRequest, Exchanged};
use super::sts::StsErrorCode;
use super::token::{self, TokenError, WebIdentityToken};

/// The job as the agent writes it, borrowing what it already holds.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct JobRef<'a> {
    pub region: &'a str,
    pub sts_endpoint: Option<&'a str>,
    pub token: &'a str,
    pub request: &'a ExchangeRequest,
}

/// The job as the exchange process reads it.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Job {
    pub region: String,
    pub sts_endpoint: Option<String>,
    token: String,
    pub request: ExchangeRequest,
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Job")
            .field("region", &self.region)
            .field("sts_endpoint", &self.sts_endpoint)
            .field("token", &"[redacted]")
            .field("request", &self.request)
            .finish()
    }
}

impl Job {
    /// Takes the token out of the job, checked as the agent checked it when it read the file
    /// (so this fails only for a job the agent did not write).
    pub fn take_token(&mut self) -> Result<WebIdentityToken, TokenError> {
        token::parse(std::mem::take(&mut self.token), &self.request.token_file)
    }
}

/// The outcome of the job: the served credentials, or the call that failed and why.
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Answer {
    Issued(Issued),
    Failed(Failure),
}

/// Credentials and what STS said about their size.
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Issued {
    access_key_id: String,
    secret_access_key: String,
    session_token: String,
    /// Seconds since the Unix epoch.
    expiration: u64,
    assumed_role_arn: Option<String>,
    /// `(step, percent)`, as in [`Exchanged::packed_policy_sizes`].
    packed_policy_sizes: Vec<(usize, i32)>,
}

/// An [`ExchangeError::Sts`] in transit; `code` is the label of an [`StsErrorCode`].
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Failure {
    step: usize,
    role_arn: String,
    code: String,
    message: String,
    hint: String,
}

impl std::fmt::Debug for Answer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Answer::Issued(i) => f
                .debug_struct("Issued")
                .field("credentials", &"[redacted]")
                .field("expiration", &i.expiration)
                .field("assumed_role_arn", &i.assumed_role_arn)
                .finish(),
            Answer::Failed(failure) => failure.fmt(f),
        }
    }
}

impl Answer {
    /// What the exchange process prints for the result of [`exchange_token`](super::exchange::exchange_token).
    pub fn from_result(result: Result<Exchanged, ExchangeError>, first: &Call) -> Answer {
        match result {
            Ok(ex) => {
                let c = ex.credentials;
                Answer::Issued(Issued {
                    access_key_id: c.access_key_id,
                    secret_access_key: c.secret_access_key.expose_secret().to_owned(),
                    session_token: c.session_token.expose_secret().to_owned(),
                    expiration: c
                        .expiration
                        .duration_since(UNIX_EPOCH)
                        .map_or(0, |d| d.as_secs()),
                    assumed_role_arn: c.assumed_role_arn,
                    packed_policy_sizes: ex.packed_policy_sizes,
                })
            }
            Err(ExchangeError::Sts {
                call,
                code,
                message,
                hint,
            }) => Answer::Failed(Failure {
                step: call.step,
                role_arn: call.role_arn,
                code: code.as_str().to_owned(),
                message,
                hint,
            }),
            // The process was handed a token it could not use: it reports that as the first
            // call's failure (the agent checks tokens before it starts a process).
            Err(ExchangeError::Token(err)) => Answer::Failed(Failure {
                step: first.step,
                role_arn: first.role_arn.clone(),
                code: StsErrorCode::Other.as_str().to_owned(),
                message: err.to_string(),
                hint: StsErrorCode::Other.hint().to_owned(),
            }),
        }
    }

    /// The result the agent's refresher sees; `token_expires_at` is that of the token the
    /// agent read for this job.
    pub fn into_result(
        self,
        token_expires_at: Option<SystemTime>,
    ) -> Result<Exchanged, ExchangeError> {
        match self {
            Answer::Issued(i) => Ok(Exchanged {
                credentials: Credentials {
                    access_key_id: i.access_key_id,
                    secret_access_key: SecretString::from(i.secret_access_key),
                    session_token: SecretString::from(i.session_token),
                    expiration: UNIX_EPOCH + Duration::from_secs(i.expiration),
                    assumed_role_arn: i.assumed_role_arn,
                },
                packed_policy_sizes: i.packed_policy_sizes,
                token_expires_at,
            }),
            Answer::Failed(f) => Err(ExchangeError::Sts {
                call: Call {
                    step: f.step,
                    role_arn: f.role_arn,
                },
                code: StsErrorCode::from_label(&f.code).unwrap_or(StsErrorCode::Other),
                message: f.message,
                hint: f.hint,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;
    use crate::agent::exchange::{StepRequest, Trust};

    fn request() -> ExchangeRequest {
        ExchangeRequest {
            first: StepRequest {
                role_arn: "arn:aws:iam::111122223333:role/first".into(),
                session_name: "team-a.app-0".into(),
                duration: Duration::from_secs(3600),
                policy: Some(r#"{"Version":"2012-10-17"}"#.into()),
                policy_arns: vec!["arn:aws:iam::aws:policy/ReadOnlyAccess".into()],
            },
            token_file: PathBuf::from("/var/run/secrets/token"),
            hops: vec![],
            trust: Trust {
                subject: "system:serviceaccount:team-a:app".into(),
                audience: "sts.amazonaws.com".into(),
            },
        }
    }

    fn first() -> Call {
        Call {
            step: 0,
            role_arn: "arn:aws:iam::111122223333:role/first".into(),
        }
    }

    #[test]
    fn a_job_reads_back_as_written_and_its_debug_hides_the_token() {
        let req = request();
        let text = serde_json::to_string(&JobRef {
            region: "eu-west-1",
            sts_endpoint: Some("https://sts.example"),
            token: "header.payload.signature",
            request: &req,
        })
        .unwrap();
        let mut job: Job = serde_json::from_str(&text).unwrap();
        assert!(!format!("{job:?}").contains("payload"));
        assert_eq!(job.region, "eu-west-1");
        assert_eq!(job.sts_endpoint.as_deref(), Some("https://sts.example"));
        assert_eq!(job.request, req);
        assert_eq!(
            job.take_token().unwrap().expose(),
            "header.payload.signature"
        );
    }

    #[test]
    fn issued_credentials_read_back_whole_and_their_debug_hides_them() {
        let expiration = UNIX_EPOCH + Duration::from_secs(1_900_000_000);
        let exchanged = Exchanged {
            credentials: Credentials {
                access_key_id: "ASIAEXAMPLE".into(),
                secret_access_key: SecretString::from("secret-key".to_owned()),
                session_token: SecretString::from("session-token".to_owned()),
                expiration,
                assumed_role_arn: Some("arn:aws:sts::111122223333:assumed-role/first/s".into()),
            },
            packed_policy_sizes: vec![(0, 42)],
            token_expires_at: None,
        };
        let answer = Answer::from_result(Ok(exchanged), &first());
        let debug = format!("{answer:?}");
        assert!(!debug.contains("secret-key") && !debug.contains("session-token"));
        assert!(!debug.contains("ASIAEXAMPLE"));
        let text = serde_json::to_vec(&answer).unwrap();
        let back: Answer = serde_json::from_slice(&text).unwrap();
        let token_expiry = Some(UNIX_EPOCH + Duration::from_secs(1_800_000_000));
        let got = back.into_result(token_expiry).unwrap();
        assert_eq!(got.credentials.access_key_id, "ASIAEXAMPLE");
        assert_eq!(
            got.credentials.secret_access_key.expose_secret(),
            "secret-key"
        );
        assert_eq!(
            got.credentials.session_token.expose_secret(),
            "session-token"
        );
        assert_eq!(got.credentials.expiration, expiration);
        assert_eq!(
            got.credentials.assumed_role_arn.as_deref(),
            Some("arn:aws:sts::111122223333:assumed-role/first/s")
        );
        assert_eq!(got.packed_policy_sizes, vec![(0, 42)]);
        assert_eq!(got.token_expires_at, token_expiry);
    }

    #[test]
    fn a_failure_keeps_its_call_code_message_and_hint() {
        let hop = Call {
            step: 1,
            role_arn: "arn:aws:iam::444455556666:role/cross".into(),
        };
        let err = ExchangeError::Sts {
            call: hop.clone(),
            code: StsErrorCode::AccessDenied,
            message: "not authorized".into(),
            hint: "the trust policy of cross must allow first".into(),
        };
        let text = serde_json::to_vec(&Answer::from_result(Err(err), &first())).unwrap();
        let back: Answer = serde_json::from_slice(&text).unwrap();
        match back.into_result(None) {
            Err(ExchangeError::Sts {
                call,
                code,
                message,
                hint,
            }) => {
                assert_eq!(call, hop);
                assert_eq!(code, StsErrorCode::AccessDenied);
                assert_eq!(message, "not authorized");
                assert_eq!(hint, "the trust policy of cross must allow first");
            }
            other => panic!("expected the hop's failure, got {other:?}"),
        }
    }

    #[test]
    fn an_unknown_code_reads_back_as_other_and_a_token_error_as_the_first_calls_failure() {
        let unknown: Answer = serde_json::from_str(
            r#"{"failed":{"step":0,"roleArn":"r","code":"Novel","message":"m","hint":"h"}}"#,
        )
        .unwrap();
        assert_eq!(
            unknown.into_result(None).unwrap_err().sts_code(),
            Some(StsErrorCode::Other)
        );
        let token = ExchangeError::Token(TokenError::Empty(PathBuf::from("/t")));
        match Answer::from_result(Err(token), &first()).into_result(None) {
            Err(ExchangeError::Sts { call, message, .. }) => {
                assert_eq!(call, first());
                assert!(message.contains("/t"), "{message}");
            }
            other => panic!("expected a failure of the first call, got {other:?}"),
        }
    }
}
