//! Encryption at rest, in age's format (X25519 recipients).
//!
//! A sealed archive is two age files. The body (`NAME.age`) is the upstream archive encrypted to a
//! fresh per-archive key; the key (`NAME.key.age`) is that key, written as an age identity file,
//! encrypted to the operator's recipients. Rotating recipients re-encrypts only the small key file,
//! never the body, and the age CLI alone decrypts both (the break-glass procedure in the operator
//! guide).

use std::io::{self, BufRead, Read, Write};

use age::secrecy::ExposeSecret;
use age::x25519;

/// Why a sealed archive could not be made or opened.
#[derive(Debug, thiserror::Error)]
pub enum SealError {
    #[error("{0:?} is not an age X25519 public key (age1…)")]
    BadRecipient(String),
    #[error("no recipients: encryption needs at least one age public key")]
    NoRecipients,
    #[error("{path} holds no age X25519 private key (AGE-SECRET-KEY-1…)")]
    NoIdentity { path: String },
    #[error("{path}: {source}")]
    IdentityFile { path: String, source: io::Error },
    #[error(
        "none of the configured private keys ({keys}) is a recipient of this archive's key{known}"
    )]
    NotARecipient { keys: String, known: String },
    #[error("the archive's key file is damaged or not an age file: {0}")]
    BadKeyFile(String),
    #[error("the encrypted archive failed authentication (tampered or damaged ciphertext): {0}")]
    Tampered(String),
    #[error("{0}")]
    Io(#[from] io::Error),
}

/// The operator's public keys, as configured.
#[derive(Clone)]
pub struct Recipients(Vec<x25519::Recipient>);

impl Recipients {
    pub fn parse<S: AsRef<str>>(keys: &[S]) -> Result<Recipients, SealError> {
        if keys.is_empty() {
            return Err(SealError::NoRecipients);
        }
        let parsed = keys
            .iter()
            .map(|k| {
                k.as_ref()
                    .trim()
                    .parse::<x25519::Recipient>()
                    .map_err(|_| SealError::BadRecipient(k.as_ref().to_string()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Recipients(parsed))
    }

    /// The public keys as strings: the key ids the catalog records.
    pub fn ids(&self) -> Vec<String> {
        self.0.iter().map(ToString::to_string).collect()
    }
}

/// Private keys read from an age identity file (`age-keygen` output; comments allowed).
pub struct Identities(Vec<x25519::Identity>);

impl Identities {
    pub fn read(path: &std::path::Path) -> Result<Identities, SealError> {
        let text = std::fs::read_to_string(path).map_err(|source| SealError::IdentityFile {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&text).ok_or_else(|| SealError::NoIdentity {
            path: path.display().to_string(),
        })
    }

    fn parse(text: &str) -> Option<Identities> {
        let keys: Vec<_> = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .filter_map(|l| l.parse::<x25519::Identity>().ok())
            .collect();
        (!keys.is_empty()).then_some(Identities(keys))
    }

    /// The public keys these private keys answer to.
    pub fn public(&self) -> Vec<String> {
        self.0.iter().map(|i| i.to_public().to_string()).collect()
    }

    fn as_dyn(&self) -> impl Iterator<Item = &dyn age::Identity> {
        self.0.iter().map(|i| i as &dyn age::Identity)
    }
}

/// One archive's own key. It exists in memory only: on the agent while it encrypts, on the controller
/// while it decrypts or re-wraps.
pub struct DataKey {
    key: x25519::Identity,
    /// What the key file says about itself (comments): the archive and the recipients.
    pub archive: String,
    pub recipients: Vec<String>,
}

impl DataKey {
    pub fn generate(archive: &str) -> DataKey {
        DataKey {
            key: x25519::Identity::generate(),
            archive: archive.to_string(),
            recipients: Vec::new(),
        }
    }

    /// Encrypts what is written to the returned writer into `out`; call `finish` on it at the end.
    pub fn seal<W: Write>(&self, out: W) -> io::Result<age::stream::StreamWriter<W>> {
        let public = self.key.to_public();
        let encryptor =
            age::Encryptor::with_recipients(std::iter::once(&public as &dyn age::Recipient))
                .map_err(io::Error::other)?;
        encryptor.wrap_output(out)
    }

    /// A reader of the plaintext of a body sealed with this key. Every 64 KiB chunk is authenticated
    /// before it is returned; a damaged one is an error, never bytes.
    pub fn open<R: Read>(&self, body: R) -> Result<age::stream::StreamReader<R>, SealError> {
        let decryptor =
            age::Decryptor::new(body).map_err(|e| SealError::Tampered(e.to_string()))?;
        decryptor
            .decrypt(std::iter::once(&self.key as &dyn age::Identity))
            .map_err(|e| SealError::Tampered(e.to_string()))
    }

    /// The key file: this key as an age identity file, encrypted to `recipients`.
    pub fn wrap(&mut self, recipients: &Recipients) -> Result<Vec<u8>, SealError> {
        self.recipients = recipients.ids();
        let text = format!(
            "# ferry archive key\n# archive: {}\n# recipients: {}\n{}\n",
            self.archive,
            self.recipients.join(" "),
            self.key.to_string().expose_secret()
        );
        let encryptor =
            age::Encryptor::with_recipients(recipients.0.iter().map(|r| r as &dyn age::Recipient))
                .map_err(|e| SealError::BadRecipient(e.to_string()))?;
        let mut out = Vec::with_capacity(512);
        let mut w = encryptor.wrap_output(&mut out)?;
        w.write_all(text.as_bytes())?;
        w.finish()?;
        Ok(out)
    }

    /// Opens a key file with the operator's private keys.
    pub fn unwrap(wrapped: &[u8], identities: &Identities) -> Result<DataKey, SealError> {
        let decryptor =
            age::Decryptor::new(wrapped).map_err(|e| SealError::BadKeyFile(e.to_string()))?;
        let mut reader = decryptor
            .decrypt(identities.as_dyn())
            .map_err(|e| match e {
                age::DecryptError::NoMatchingKeys => SealError::NotARecipient {
                    keys: identities.public().join(", "),
                    known: String::new(),
                },
                other => SealError::BadKeyFile(other.to_string()),
            })?;
        let mut text = String::new();
        reader
            .read_to_string(&mut text)
            .map_err(|e| SealError::BadKeyFile(e.to_string()))?;
        let mut key = DataKey {
            key: Identities::parse(&text)
                .and_then(|ids| ids.0.into_iter().next())
                .ok_or_else(|| SealError::BadKeyFile("it holds no age private key".into()))?,
            archive: String::new(),
            recipients: Vec::new(),
        };
        for line in text.as_bytes().lines().map_while(Result::ok) {
            if let Some(archive) = line.strip_prefix("# archive: ") {
                key.archive = archive.to_string();
            } else if let Some(list) = line.strip_prefix("# recipients: ") {
                key.recipients = list.split_whitespace().map(str::to_string).collect();
            }
        }
        Ok(key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keypair() -> (String, String) {
        let id = x25519::Identity::generate();
        (
            id.to_string().expose_secret().to_string(),
            id.to_public().to_string(),
        )
    }

    #[test]
    fn sealed_body_round_trips_and_rewraps_without_touching_the_body() {
        let (old_secret, old_public) = keypair();
        let (new_secret, new_public) = keypair();
        let old = Identities::parse(&format!("# created\n{old_secret}\n")).unwrap();
        let new = Identities::parse(&new_secret).unwrap();
        let mut key = DataKey::generate("cp01/flightctl-backup-x.tar.gz");
        let mut body = Vec::new();
        let mut w = key.seal(&mut body).unwrap();
        w.write_all(&vec![7u8; 200_000]).unwrap();
        w.finish().unwrap();
        assert!(!body.windows(64).any(|w| w == [7u8; 64]));
        let wrapped = key
            .wrap(&Recipients::parse(std::slice::from_ref(&old_public)).unwrap())
            .unwrap();

        let opened = DataKey::unwrap(&wrapped, &old).unwrap();
        assert_eq!(opened.archive, "cp01/flightctl-backup-x.tar.gz");
        assert_eq!(opened.recipients, vec![old_public.clone()]);
        let mut plain = Vec::new();
        opened
            .open(&body[..])
            .unwrap()
            .read_to_end(&mut plain)
            .unwrap();
        assert_eq!(plain, vec![7u8; 200_000]);

        // Rotation: the same key, wrapped for the new recipient only.
        let mut reopened = DataKey::unwrap(&wrapped, &old).unwrap();
        let rewrapped = reopened
            .wrap(&Recipients::parse(&[new_public]).unwrap())
            .unwrap();
        assert!(matches!(
            DataKey::unwrap(&rewrapped, &old),
            Err(SealError::NotARecipient { .. })
        ));
        let mut plain = Vec::new();
        DataKey::unwrap(&rewrapped, &new)
            .unwrap()
            .open(&body[..])
            .unwrap()
            .read_to_end(&mut plain)
            .unwrap();
        assert_eq!(plain.len(), 200_000);

        // A flipped byte in the body fails authentication instead of yielding bytes.
        let mut tampered = body.clone();
        let at = tampered.len() - 100;
        tampered[at] ^= 1;
        let mut out = Vec::new();
        let read = opened.open(&tampered[..]).unwrap().read_to_end(&mut out);
        assert!(read.is_err(), "a tampered chunk must not decrypt");
        assert!(out.len() < 200_000);
        assert!(matches!(
            Recipients::parse(&["age1nope"]),
            Err(SealError::BadRecipient(_))
        ));
    }
}
