//! The endpoint's authorization token: made once, kept in the pod's in-memory volume.
//!
//! Apps prove they are in the pod by sending the contents of this file in the `Authorization`
//! header. The file holds 256 random bits, base64url-encoded with no trailing newline (several
//! SDKs reject a token containing `\r` or `\n`), written atomically with a temporary file and a
//! rename so that an app never reads half a token. A valid existing file is reused: the AWS CLI
//! reads the file only once, so a restarted sidecar must keep accepting the same token.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use secrecy::{ExposeSecret, SecretString};
use subtle::ConstantTimeEq;

/// Length of a token we write: 32 random bytes in unpadded base64url.
const TOKEN_LEN: usize = 43;

/// The token apps must present. `Debug` never shows it.
#[derive(Clone)]
pub struct AuthToken(SecretString);

impl std::fmt::Debug for AuthToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AuthToken([redacted])")
    }
}

/// Why the token file could not be prepared.
#[derive(Debug, thiserror::Error)]
pub enum AuthTokenError {
    #[error("cannot write authorization token file {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot get random bytes for the authorization token: {0}")]
    Random(getrandom::Error),
}

impl AuthToken {
    /// Wraps a known token (tests, and tokens read back from the file).
    pub fn new(token: String) -> Self {
        AuthToken(SecretString::from(token))
    }

    /// Whether a presented `Authorization` header value is this token, in constant time
    /// (the comparison takes as long for a near miss as for garbage).
    pub fn matches(&self, presented: &[u8]) -> bool {
        let expected = self.0.expose_secret().as_bytes();
        expected.len() == presented.len() && bool::from(expected.ct_eq(presented))
    }

    /// The token text, for writing the file.
    fn expose(&self) -> &str {
        self.0.expose_secret()
    }
}

/// Whether a file's contents are a token this agent would have written.
fn is_valid(contents: &str) -> bool {
    contents.len() == TOKEN_LEN
        && contents
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Reuses the token in `path` if it is valid, else writes a new one there.
///
/// Returns the token and whether it was reused.
pub fn load_or_create(path: &Path) -> Result<(AuthToken, bool), AuthTokenError> {
    if let Ok(existing) = std::fs::read_to_string(path)
        && is_valid(&existing)
    {
        return Ok((AuthToken::new(existing), true));
    }
    let token = generate()?;
    write_atomically(path, &token).map_err(|source| AuthTokenError::Write {
        path: path.to_owned(),
        source,
    })?;
    Ok((token, false))
}

fn generate() -> Result<AuthToken, AuthTokenError> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(AuthTokenError::Random)?;
    Ok(AuthToken::new(URL_SAFE_NO_PAD.encode(bytes)))
}

/// Writes the token next to its final name and renames it into place, world-readable
/// (apps may run as any user) but not writable.
fn write_atomically(path: &Path, token: &AuthToken) -> std::io::Result<()> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let mut tmp = tempfile::Builder::new()
        .prefix(".credvend-token-")
        .tempfile_in(dir)?;
    tmp.write_all(token.expose().as_bytes())?;
    tmp.as_file().sync_all()?;
    tmp.as_file()
        .set_permissions(std::fs::Permissions::from_mode(0o444))?;
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn creates_a_256_bit_token_without_newline_and_read_only() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("auth/token");
        let (token, reused) = load_or_create(&path).unwrap();
        assert!(!reused);
        let on_disk = std::fs::read(&path).unwrap();
        assert_eq!(on_disk.len(), TOKEN_LEN);
        assert!(!on_disk.contains(&b'\n') && !on_disk.contains(&b'\r'));
        assert!(token.matches(&on_disk));
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o444);
        // Only the final file remains: the temporary one was renamed.
        assert_eq!(
            std::fs::read_dir(path.parent().unwrap()).unwrap().count(),
            1
        );
    }

    #[test]
    fn reuses_a_valid_token_so_restarts_keep_clients_working() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        let (first, _) = load_or_create(&path).unwrap();
        let (second, reused) = load_or_create(&path).unwrap();
        assert!(reused);
        assert!(second.matches(first.expose().as_bytes()));
    }

    #[test]
    fn replaces_an_invalid_token_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "short\n").unwrap();
        let (token, reused) = load_or_create(&path).unwrap();
        assert!(!reused);
        assert!(token.matches(&std::fs::read(&path).unwrap()));
    }

    #[test]
    fn two_tokens_differ() {
        assert_ne!(generate().unwrap().expose(), generate().unwrap().expose());
    }

    #[test]
    fn matching_is_exact() {
        let t = AuthToken::new("z".repeat(TOKEN_LEN));
        assert!(t.matches("z".repeat(TOKEN_LEN).as_bytes()));
        assert!(!t.matches("z".repeat(TOKEN_LEN - 1).as_bytes()));
        assert!(!t.matches(format!("{}\n", "z".repeat(TOKEN_LEN)).as_bytes()));
        assert!(!t.matches(b""));
        assert!(!format!("{t:?}").contains('z'));
    }
}
