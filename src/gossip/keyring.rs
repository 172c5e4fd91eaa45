//! Gossip encryption: the keyring (Consul's `-encrypt` key and the ones `keyring -install`
//! adds) and the sealing of every gossip message with AES-GCM, as memberlist does it: a fresh
//! random 12-byte nonce per message, the primary key to seal, every installed key tried to
//! open.
//!
//! The keyring lives in the data dir as `serf/local.keyring` (a JSON list of base64 keys,
//! the primary first, as Consul writes it), so a key rotated in survives a restart and wins
//! over a stale `-encrypt`.
//!
//! Keys are 16 or 32 bytes (AES-128 or AES-256). Consul also takes 24-byte keys (AES-192),
//! which `ring` does not implement; such a key is refused with a message saying so.

use std::path::{Path, PathBuf};

use base64::Engine;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_128_GCM, AES_256_GCM, NONCE_LEN};
use ring::rand::{SecureRandom, SystemRandom};

/// Where the LAN and WAN pools' keyrings are kept, under the data dir (Consul's names).
pub const KEYRING_FILE: &str = "serf/local.keyring";
pub const WAN_KEYRING_FILE: &str = "serf/remote.keyring";

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("the key is not valid base64: {0}")]
    Encoding(String),
    #[error(
        "the key is {0} bytes; gossip keys are 16 or 32 bytes (AES-192's 24 are not supported)"
    )]
    Length(usize),
    #[error("Requested key is not in the keyring")]
    NotInstalled,
    #[error("Removing the primary key is not allowed")]
    RemovingPrimary,
    #[error("cannot read or write the keyring file {path}: {error}")]
    File { path: PathBuf, error: String },
}

/// Why a message could not be opened.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum OpenError {
    #[error("no installed key decrypts the message")]
    NoKey,
    #[error("the message is too short to be encrypted")]
    Short,
}

#[derive(Clone)]
struct Key {
    text: String,
    sealing: std::sync::Arc<LessSafeKey>,
}

impl Key {
    fn parse(text: &str) -> Result<Key, KeyError> {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(text.trim())
            .map_err(|error| KeyError::Encoding(error.to_string()))?;
        let algorithm = match bytes.len() {
            16 => &AES_128_GCM,
            32 => &AES_256_GCM,
            other => return Err(KeyError::Length(other)),
        };
        let unbound =
            UnboundKey::new(algorithm, &bytes).map_err(|_| KeyError::Length(bytes.len()))?;
        Ok(Key {
            text: base64::engine::general_purpose::STANDARD.encode(&bytes),
            sealing: std::sync::Arc::new(LessSafeKey::new(unbound)),
        })
    }
}

/// Checks a base64 key without installing it.
pub fn validate(text: &str) -> Result<String, KeyError> {
    Key::parse(text).map(|key| key.text)
}

/// A new random 32-byte key, base64 (`concord keygen`).
pub fn generate() -> String {
    let mut bytes = [0u8; 32];
    // The system's random source failing is not something to go on from.
    SystemRandom::new()
        .fill(&mut bytes)
        .expect("the system random source");
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// The installed keys, the primary first. Empty means encryption is off.
#[derive(Clone, Default)]
pub struct Keyring {
    keys: Vec<Key>,
    /// Where it is persisted (none for tests and `-dev` without a data dir).
    file: Option<PathBuf>,
}

impl Keyring {
    /// A pool's keyring: `file` in `data_dir` when there is one, else `encrypt` (written to
    /// the file so later rotations persist).
    pub fn load(
        data_dir: Option<&Path>,
        file: &str,
        encrypt: Option<&str>,
    ) -> Result<Keyring, KeyError> {
        let file = data_dir.map(|dir| dir.join(file));
        if let Some(path) = &file {
            if path.exists() {
                let text = std::fs::read_to_string(path).map_err(|error| KeyError::File {
                    path: path.clone(),
                    error: error.to_string(),
                })?;
                let texts: Vec<String> =
                    serde_json::from_str(&text).map_err(|error| KeyError::File {
                        path: path.clone(),
                        error: error.to_string(),
                    })?;
                let keys = texts
                    .iter()
                    .map(|text| Key::parse(text))
                    .collect::<Result<Vec<_>, _>>()?;
                if encrypt.is_some() {
                    tracing::warn!(path = %path.display(), "a keyring file exists; -encrypt is ignored in favour of it");
                }
                return Ok(Keyring { keys, file });
            }
        }
        let mut keyring = Keyring {
            keys: Vec::new(),
            file,
        };
        if let Some(text) = encrypt {
            keyring.keys.push(Key::parse(text)?);
            keyring.save()?;
        }
        Ok(keyring)
    }

    /// A keyring of `keys` (primary first) kept nowhere, for tests.
    pub fn of(keys: &[&str]) -> Result<Keyring, KeyError> {
        Ok(Keyring {
            keys: keys
                .iter()
                .map(|text| Key::parse(text))
                .collect::<Result<_, _>>()?,
            file: None,
        })
    }

    pub fn enabled(&self) -> bool {
        !self.keys.is_empty()
    }

    /// The installed keys, primary first.
    pub fn keys(&self) -> Vec<String> {
        self.keys.iter().map(|key| key.text.clone()).collect()
    }

    pub fn primary(&self) -> Option<String> {
        self.keys.first().map(|key| key.text.clone())
    }

    fn save(&self) -> Result<(), KeyError> {
        let Some(path) = &self.file else {
            return Ok(());
        };
        let failed = |error: std::io::Error| KeyError::File {
            path: path.clone(),
            error: error.to_string(),
        };
        let text = serde_json::to_string(&self.keys()).unwrap_or_default();
        // The keys are secrets.
        crate::files::write_private(path, text.as_bytes()).map_err(failed)
    }

    /// Adds a key (not primary); installing one already there is fine, as in Consul.
    pub fn install(&mut self, text: &str) -> Result<(), KeyError> {
        let key = Key::parse(text)?;
        if !self.keys.iter().any(|known| known.text == key.text) {
            self.keys.push(key);
            self.save()?;
        }
        Ok(())
    }

    /// Where an installed key is (0: the primary).
    fn position(&self, text: &str) -> Result<usize, KeyError> {
        let wanted = validate(text)?;
        self.keys
            .iter()
            .position(|key| key.text == wanted)
            .ok_or(KeyError::NotInstalled)
    }

    /// Makes an installed key the primary.
    pub fn use_key(&mut self, text: &str) -> Result<(), KeyError> {
        let position = self.position(text)?;
        let key = self.keys.remove(position);
        self.keys.insert(0, key);
        self.save()
    }

    pub fn remove(&mut self, text: &str) -> Result<(), KeyError> {
        let position = self.position(text)?;
        if position == 0 {
            return Err(KeyError::RemovingPrimary);
        }
        self.keys.remove(position);
        self.save()
    }

    /// `message` sealed with the primary key: nonce, then ciphertext and tag.
    pub fn seal(&self, message: &[u8]) -> Option<Vec<u8>> {
        let key = self.keys.first()?;
        let mut nonce = [0u8; NONCE_LEN];
        SystemRandom::new().fill(&mut nonce).ok()?;
        let mut sealed = message.to_vec();
        key.sealing
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::empty(),
                &mut sealed,
            )
            .ok()?;
        let mut out = Vec::with_capacity(NONCE_LEN + sealed.len());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        Some(out)
    }

    /// Opens a sealed message with whichever installed key sealed it.
    pub fn open(&self, sealed: &[u8]) -> Result<Vec<u8>, OpenError> {
        if sealed.len() < NONCE_LEN + 16 {
            return Err(OpenError::Short);
        }
        let (nonce, body) = sealed.split_at(NONCE_LEN);
        for key in &self.keys {
            let mut buffer = body.to_vec();
            let Ok(nonce) = Nonce::try_assume_unique_for_key(nonce) else {
                return Err(OpenError::Short);
            };
            if let Ok(plain) = key.sealing.open_in_place(nonce, Aad::empty(), &mut buffer) {
                let length = plain.len();
                buffer.truncate(length);
                return Ok(buffer);
            }
        }
        Err(OpenError::NoKey)
    }
}

/// What a gossip message carries, inside its framing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// foca's packets (UDP) and push-pull states (TCP).
    Gossip = 0,
    /// A member's answer to a keyring query (TCP, to the member that asked).
    KeyResponse = 1,
    /// A round-trip probe for network coordinates, and its answer (UDP).
    Ping = 2,
    Pong = 3,
}

/// Why a message was not accepted.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("the message is not encrypted, but gossip encryption is on here")]
    NotEncrypted,
    #[error("the message is encrypted, but gossip encryption is off here (no -encrypt)")]
    EncryptionOff,
    #[error("no installed gossip key decrypts the message (is -encrypt the same on both agents?)")]
    NoKey,
    #[error("not a gossip message")]
    Garbled,
    #[error("refused by the peer: {0}")]
    ByPeer(String),
}

/// The first byte of every frame.
const PLAIN: u8 = 0;
const SEALED: u8 = 1;
/// A plain-text reason, the answer to an exchange that was refused.
const REFUSED: u8 = 2;

/// How this member frames what it sends and checks what it receives: sealed with the
/// keyring when it has keys, plain otherwise; `verify_outgoing: false` and
/// `verify_incoming: false` (Consul's `encrypt_verify_*`) let a pool move to encryption
/// member by member.
#[derive(Clone)]
pub struct Encryption {
    pub keyring: Keyring,
    pub verify_incoming: bool,
    pub verify_outgoing: bool,
}

impl Encryption {
    pub fn off() -> Encryption {
        Encryption {
            keyring: Keyring::default(),
            verify_incoming: true,
            verify_outgoing: true,
        }
    }

    pub fn frame(&self, kind: Kind, payload: &[u8]) -> Vec<u8> {
        let mut message = Vec::with_capacity(payload.len() + 1);
        message.push(kind as u8);
        message.extend_from_slice(payload);
        if self.keyring.enabled() && self.verify_outgoing {
            if let Some(sealed) = self.keyring.seal(&message) {
                let mut frame = Vec::with_capacity(sealed.len() + 1);
                frame.push(SEALED);
                frame.extend_from_slice(&sealed);
                return frame;
            }
        }
        message.insert(0, PLAIN);
        message
    }

    /// The answer to an exchange this member refuses, saying why.
    pub fn refusal(reason: &Refusal) -> Vec<u8> {
        let mut frame = vec![REFUSED];
        frame.extend_from_slice(reason.to_string().as_bytes());
        frame
    }

    pub fn unframe(&self, frame: &[u8]) -> Result<(Kind, Vec<u8>), Refusal> {
        let (&tag, body) = frame.split_first().ok_or(Refusal::Garbled)?;
        let message = match tag {
            PLAIN if self.keyring.enabled() && self.verify_incoming => {
                return Err(Refusal::NotEncrypted)
            }
            PLAIN => body.to_vec(),
            SEALED if !self.keyring.enabled() => return Err(Refusal::EncryptionOff),
            SEALED => self.keyring.open(body).map_err(|_| Refusal::NoKey)?,
            REFUSED => return Err(Refusal::ByPeer(String::from_utf8_lossy(body).into_owned())),
            _ => return Err(Refusal::Garbled),
        };
        let (&kind, payload) = message.split_first().ok_or(Refusal::Garbled)?;
        let kind = match kind {
            0 => Kind::Gossip,
            1 => Kind::KeyResponse,
            2 => Kind::Ping,
            3 => Kind::Pong,
            _ => return Err(Refusal::Garbled),
        };
        Ok((kind, payload.to_vec()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_opens_with_any_installed_key_and_not_without() {
        let (one, two) = (generate(), generate());
        let old = Keyring::of(&[&one]).unwrap();
        let sealed = old.seal(b"hello").unwrap();
        assert_ne!(&sealed[NONCE_LEN..NONCE_LEN + 5], b"hello");
        let rotated = Keyring::of(&[&two, &one]).unwrap();
        assert_eq!(rotated.open(&sealed).unwrap(), b"hello");
        let other = Keyring::of(&[&two]).unwrap();
        assert_eq!(other.open(&sealed), Err(OpenError::NoKey));
        assert_eq!(other.open(&sealed[..10]), Err(OpenError::Short));
        let mut tampered = sealed.clone();
        let last = tampered.len() - 1;
        tampered[last] ^= 1;
        assert_eq!(old.open(&tampered), Err(OpenError::NoKey));
    }

    #[test]
    fn frames_say_why_they_are_refused() {
        let key = generate();
        let on = Encryption {
            keyring: Keyring::of(&[&key]).unwrap(),
            ..Encryption::off()
        };
        let off = Encryption::off();
        let wrong = Encryption {
            keyring: Keyring::of(&[&generate()]).unwrap(),
            ..Encryption::off()
        };
        let sealed = on.frame(Kind::Gossip, b"state");
        assert_eq!(on.unframe(&sealed), Ok((Kind::Gossip, b"state".to_vec())));
        assert_eq!(off.unframe(&sealed), Err(Refusal::EncryptionOff));
        assert_eq!(wrong.unframe(&sealed), Err(Refusal::NoKey));
        let plain = off.frame(Kind::KeyResponse, b"r");
        assert_eq!(off.unframe(&plain), Ok((Kind::KeyResponse, b"r".to_vec())));
        assert_eq!(on.unframe(&plain), Err(Refusal::NotEncrypted));
        let lenient = Encryption {
            verify_incoming: false,
            ..on.clone()
        };
        assert_eq!(
            lenient.unframe(&plain),
            Ok((Kind::KeyResponse, b"r".to_vec()))
        );
        let refused = Encryption::refusal(&Refusal::NoKey);
        assert!(
            matches!(on.unframe(&refused), Err(Refusal::ByPeer(text)) if text.contains("no installed"))
        );
        assert_eq!(on.unframe(&[]), Err(Refusal::Garbled));
        assert_eq!(on.unframe(&[9, 1, 2]), Err(Refusal::Garbled));
    }

    #[test]
    fn keys_are_16_or_32_bytes_of_base64() {
        let engine = base64::engine::general_purpose::STANDARD;
        assert!(validate(&engine.encode([1u8; 16])).is_ok());
        assert!(validate(&engine.encode([1u8; 32])).is_ok());
        let error = validate(&engine.encode([1u8; 24])).unwrap_err().to_string();
        assert!(error.contains("24 bytes"), "{error}");
        assert!(matches!(
            validate("not base64!"),
            Err(KeyError::Encoding(_))
        ));
    }

    #[test]
    fn rotation_persists_and_refuses_what_consul_refuses() {
        let dir = tempfile::tempdir().unwrap();
        let (one, two) = (generate(), generate());
        let mut keyring = Keyring::load(Some(dir.path()), KEYRING_FILE, Some(&one)).unwrap();
        keyring.install(&two).unwrap();
        assert!(matches!(
            keyring.remove(&one),
            Err(KeyError::RemovingPrimary)
        ));
        assert!(matches!(
            keyring.use_key(&generate()),
            Err(KeyError::NotInstalled)
        ));
        keyring.use_key(&two).unwrap();
        keyring.remove(&one).unwrap();
        // The file wins over a stale -encrypt after a restart.
        let reloaded = Keyring::load(Some(dir.path()), KEYRING_FILE, Some(&one)).unwrap();
        assert_eq!(reloaded.keys(), vec![two]);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join(KEYRING_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
