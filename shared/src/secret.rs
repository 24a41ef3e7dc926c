//! Secrets the cluster's own services share (the cluster secret that signs
//! internal requests and keys the hash of API keys). A secret comes from a
//! file (`*_file` settings, `WALLET_*_FILE` variables) or the environment,
//! never from the command line, and never appears in a log, an error body
//! or a `Debug` print.

use std::fmt;
use std::path::Path;
use std::sync::Arc;

use anyhow::{bail, Context};
use serde::{Deserialize, Deserializer};

/// Shortest accepted secret, in bytes: 128 bits of a random hex string.
pub const MIN_SECRET_BYTES: usize = 32;

/// Bytes that must stay secret: `Debug` and `Display` print `<redacted>`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Arc<[u8]>);

impl Secret {
    /// Its bytes, for the one place that keys a MAC with them.
    pub fn expose(&self) -> &[u8] {
        &self.0
    }

    /// A secret read from `path` (surrounding whitespace trimmed), refused
    /// if shorter than [`MIN_SECRET_BYTES`].
    pub fn from_file(path: &Path) -> anyhow::Result<Secret> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading the secret file {}", path.display()))?;
        Secret::from_text(text.trim()).with_context(|| format!("the secret in {}", path.display()))
    }

    /// A password someone else chose (etcd's, a database's): any length
    /// but empty, surrounding whitespace trimmed.
    pub fn from_password_file(path: &Path) -> anyhow::Result<Secret> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading the password file {}", path.display()))?;
        let text = text.trim();
        if text.is_empty() {
            bail!("the password file {} is empty", path.display());
        }
        Ok(Secret(Arc::from(text.as_bytes())))
    }

    /// A secret given as text, refused if shorter than [`MIN_SECRET_BYTES`].
    pub fn from_text(text: &str) -> anyhow::Result<Secret> {
        if text.len() < MIN_SECRET_BYTES {
            bail!(
                "a secret must be at least {MIN_SECRET_BYTES} characters (e.g. `openssl rand -hex 32`)"
            );
        }
        Ok(Secret(Arc::from(text.as_bytes())))
    }

    /// A new random secret: 64 hex characters (256 bits) from the OS.
    pub fn generate() -> Secret {
        let mut bytes = [0u8; 32];
        getrandom::fill(&mut bytes).expect("the OS random source");
        let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        Secret(Arc::from(hex.as_bytes()))
    }

    /// Writes it to `path`, readable by its owner only.
    pub fn write_file(&self, path: &Path) -> anyhow::Result<()> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(path)
            .with_context(|| format!("writing the secret file {}", path.display()))?;
        file.write_all(&self.0)?;
        Ok(())
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Secret, D::Error> {
        let text = String::deserialize(d)?;
        Secret::from_text(&text).map_err(serde::de::Error::custom)
    }
}

/// The one way a service resolves a secret setting: given inline (the
/// environment, e.g. `WALLET_CLUSTER_SECRET`) or as a file
/// (`WALLET_CLUSTER_SECRET_FILE`), not both; `None` if neither.
pub fn resolve(
    name: &str,
    inline: Option<&Secret>,
    file: Option<&Path>,
) -> anyhow::Result<Option<Secret>> {
    match (inline, file) {
        (Some(_), Some(_)) => bail!("{name} and {name}_file are both set: set one"),
        (Some(s), None) => Ok(Some(s.clone())),
        (None, Some(path)) => Ok(Some(Secret::from_file(path)?)),
        (None, None) => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secret_never_prints() {
        let s = Secret::from_text("0123456789abcdef0123456789abcdef-very-secret").unwrap();
        assert!(!format!("{s:?} {s}").contains("very-secret"));
        assert_eq!(s.expose(), b"0123456789abcdef0123456789abcdef-very-secret");
    }

    #[test]
    fn a_short_secret_is_refused() {
        let e = Secret::from_text("short").unwrap_err().to_string();
        assert!(e.contains("at least 32"), "{e}");
    }

    #[test]
    fn generated_secrets_differ_and_round_trip_through_a_file() {
        let (a, b) = (Secret::generate(), Secret::generate());
        assert_ne!(a, b);
        let dir = std::env::temp_dir().join(format!("secret-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("s");
        a.write_file(&path).unwrap();
        assert_eq!(Secret::from_file(&path).unwrap(), a);
        assert_eq!(resolve("x", None, Some(&path)).unwrap(), Some(a.clone()));
        assert!(resolve("x", Some(&b), Some(&path)).is_err());
        assert_eq!(resolve("x", None, None).unwrap(), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
