//! A copy of the served credentials in a file, so that a restarted sidecar serves at once.
//!
//! The credentials cache lives in process memory; without a copy, a sidecar that restarts
//! (OOM kill, liveness failure, node pressure) serves nothing until STS answers again, even
//! when the credentials it had are valid for another 50 minutes, and during an STS outage its
//! apps fail. The copy lives in an in-memory `emptyDir` that only the agent container mounts
//! (`credvend-cache`, added by the webhook; never mounted into apps), so the secrets never
//! reach the node's disk nor another container.
//!
//! The file is written atomically (a temporary file in the same directory, mode 0600, then a
//! rename), so a crash mid-write leaves the previous copy or none, never half of one. On load it
//! is checked before anything is served: a file that does not parse, belongs to another role or
//! session, or holds expired credentials is ignored with a log line that says why and never
//! shows its contents. Its size is bounded when read, as for every file the agent reads.

use std::io::{ErrorKind, Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

use super::credentials::Credentials;

/// Format version of the file; a file of another version is ignored.
const VERSION: u32 = 1;
/// The largest file accepted on load. A session token has no fixed size (typically under
/// 4 KB); 256 KiB is far beyond any seen and still nothing for the sidecar's memory.
pub const MAX_FILE_BYTES: usize = 256 * 1024;

/// Where the copy goes, and whose credentials it may hold.
#[derive(Debug, Clone)]
pub struct CredentialStore {
    path: PathBuf,
    role_arn: String,
    session_name: String,
}

/// Credentials read back from the file, with when they were obtained from STS.
pub struct Restored {
    pub credentials: Credentials,
    pub obtained_at: SystemTime,
}

/// The file as written. Not `Debug`: it holds the secrets in the clear.
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Stored {
    version: u32,
    role_arn: String,
    session_name: String,
    access_key_id: String,
    secret_access_key: String,
    session_token: String,
    /// Unix seconds.
    expiration: u64,
    /// Unix seconds.
    obtained_at: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    assumed_role_arn: Option<String>,
}

/// Why a stored copy was not used. Messages name the file, never its contents.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error("credentials cache file {0} cannot be read: {1}")]
    Unreadable(PathBuf, ErrorKind),
    #[error("credentials cache file {0} is larger than {MAX_FILE_BYTES} bytes")]
    TooLarge(PathBuf),
    #[error(
        "credentials cache file {0} is not a credvend credentials file (garbled or another version)"
    )]
    Garbled(PathBuf),
    #[error(
        "credentials cache file {0} holds credentials for another role or session name; the agent's configuration changed"
    )]
    OtherRole(PathBuf),
    #[error("credentials cache file {0} holds credentials that have expired")]
    Expired(PathBuf),
}

impl RestoreError {
    /// Stable label for the `reason` of the cache file metric.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Unreadable(..) => "unreadable",
            Self::TooLarge(_) => "too_large",
            Self::Garbled(_) => "garbled",
            Self::OtherRole(_) => "other_role",
            Self::Expired(_) => "expired",
        }
    }
}

/// Why the copy could not be written.
#[derive(Debug, thiserror::Error)]
#[error("cannot write the credentials cache file {path}: {kind}")]
pub struct SaveError {
    path: PathBuf,
    kind: ErrorKind,
}

impl CredentialStore {
    /// A store for `path` holding credentials of `role_arn` and `session_name`, or `None` when
    /// the file's directory does not exist (the agent runs without the cache volume, e.g.
    /// outside Kubernetes): then credentials are kept in memory only.
    pub fn open(path: &Path, role_arn: &str, session_name: &str) -> Option<CredentialStore> {
        let dir = path.parent().filter(|d| !d.as_os_str().is_empty())?;
        dir.is_dir().then(|| CredentialStore {
            path: path.to_owned(),
            role_arn: role_arn.to_owned(),
            session_name: session_name.to_owned(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Replaces the stored copy with `creds`, atomically. Blocking I/O on a small file in an
    /// in-memory volume: microseconds.
    pub fn save(&self, creds: &Credentials, obtained_at: SystemTime) -> Result<(), SaveError> {
        let stored = Stored {
            version: VERSION,
            role_arn: self.role_arn.clone(),
            session_name: self.session_name.clone(),
            access_key_id: creds.access_key_id.clone(),
            secret_access_key: creds.secret_access_key.expose_secret().to_owned(),
            session_token: creds.session_token.expose_secret().to_owned(),
            expiration: unix(creds.expiration),
            obtained_at: unix(obtained_at),
            assumed_role_arn: creds.assumed_role_arn.clone(),
        };
        let error = |e: std::io::Error| SaveError {
            path: self.path.clone(),
            kind: e.kind(),
        };
        let body = serde_json::to_vec(&stored).map_err(|e| error(e.into()))?;
        let dir = self.path.parent().unwrap_or(Path::new("."));
        // tempfile creates the file with mode 0600, in the target's directory so that the
        // rename below is atomic.
        let mut tmp = tempfile::Builder::new()
            .prefix(".credentials-")
            .tempfile_in(dir)
            .map_err(error)?;
        tmp.write_all(&body).map_err(error)?;
        tmp.as_file().sync_all().map_err(error)?;
        tmp.persist(&self.path).map_err(|e| error(e.error))?;
        Ok(())
    }

    /// The stored credentials if they may be served at `now`; `Ok(None)` when there is no file.
    pub fn load(&self, now: SystemTime) -> Result<Option<Restored>, RestoreError> {
        let file = match std::fs::File::open(&self.path) {
            Ok(f) => f,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(RestoreError::Unreadable(self.path.clone(), e.kind())),
        };
        let mut bytes = Vec::new();
        file.take(MAX_FILE_BYTES as u64 + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| RestoreError::Unreadable(self.path.clone(), e.kind()))?;
        if bytes.len() > MAX_FILE_BYTES {
            return Err(RestoreError::TooLarge(self.path.clone()));
        }
        let stored: Stored = serde_json::from_slice(&bytes)
            .ok()
            .filter(|s: &Stored| {
                s.version == VERSION
                    && !s.access_key_id.is_empty()
                    && !s.secret_access_key.is_empty()
                    && !s.session_token.is_empty()
            })
            .ok_or_else(|| RestoreError::Garbled(self.path.clone()))?;
        if stored.role_arn != self.role_arn || stored.session_name != self.session_name {
            return Err(RestoreError::OtherRole(self.path.clone()));
        }
        let expiration = from_unix(stored.expiration);
        if expiration <= now {
            return Err(RestoreError::Expired(self.path.clone()));
        }
        Ok(Some(Restored {
            credentials: Credentials {
                access_key_id: stored.access_key_id,
                secret_access_key: SecretString::from(stored.secret_access_key),
                session_token: SecretString::from(stored.session_token),
                expiration,
                assumed_role_arn: stored.assumed_role_arn,
            },
            obtained_at: from_unix(stored.obtained_at),
        }))
    }
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
}

fn from_unix(secs: u64) -> SystemTime {
    UNIX_EPOCH
        .checked_add(Duration::from_secs(secs))
        .unwrap_or(UNIX_EPOCH)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;
    use crate::agent::credentials::tests::sample;

    const ROLE: &str = "arn:aws:iam::111122223333:role/r";

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    fn store(dir: &Path) -> CredentialStore {
        CredentialStore::open(&dir.join("credentials.json"), ROLE, "ns.pod").unwrap()
    }

    #[test]
    fn saved_credentials_come_back_identical() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path());
        assert!(s.load(at(1_000)).unwrap().is_none(), "no file yet");
        let creds = sample(at(5_000));
        s.save(&creds, at(1_400)).unwrap();
        let back = s.load(at(1_000)).unwrap().unwrap();
        assert_eq!(back.obtained_at, at(1_400));
        assert_eq!(back.credentials.render().bytes(), creds.render().bytes());
        let mode = std::fs::metadata(s.path()).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "{mode:o}");
        // Atomic replacement leaves no temporary files behind.
        s.save(&sample(at(6_000)), at(1_500)).unwrap();
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(names.len(), 1, "{names:?}");
    }

    #[test]
    fn unusable_copies_are_refused_with_a_reason_and_no_contents() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path());
        s.save(&sample(at(5_000)), at(1_400)).unwrap();
        let expired = s.load(at(5_000)).map(|_| ()).unwrap_err();
        assert_eq!(expired.reason(), "expired");

        let other =
            CredentialStore::open(s.path(), "arn:aws:iam::111122223333:role/x", "ns.pod").unwrap();
        assert_eq!(
            other.load(at(1_000)).map(|_| ()).unwrap_err().reason(),
            "other_role"
        );

        for garbage in [&b"{not json"[..], b"", b"{\"version\":2}", b"null"] {
            std::fs::write(s.path(), garbage).unwrap();
            let err = s.load(at(1_000)).map(|_| ()).unwrap_err();
            assert_eq!(err.reason(), "garbled", "{garbage:?}");
        }
        std::fs::write(s.path(), vec![b' '; MAX_FILE_BYTES + 1]).unwrap();
        assert_eq!(
            s.load(at(1_000)).map(|_| ()).unwrap_err().reason(),
            "too_large"
        );

        s.save(&sample(at(5_000)), at(1_400)).unwrap();
        let text = std::fs::read_to_string(s.path()).unwrap();
        let mut tampered: serde_json::Value = serde_json::from_str(&text).unwrap();
        tampered["sessionToken"] = "".into();
        std::fs::write(s.path(), tampered.to_string()).unwrap();
        let err = s.load(at(1_000)).map(|_| ()).unwrap_err();
        assert_eq!(err.reason(), "garbled");
        assert!(!err.to_string().contains("secret-key"), "{err}");
    }

    #[test]
    fn without_the_cache_directory_there_is_no_store() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("no-such-dir/credentials.json");
        assert!(CredentialStore::open(&missing, ROLE, "ns.pod").is_none());
    }
}
