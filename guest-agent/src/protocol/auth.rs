//! The handshake: HMAC-SHA256 challenge-response keyed by the per-VM secret.
//!
//! 1. guest → `Hello { version, nonce: N_g }` (fresh 32 random bytes)
//! 2. host  → `Auth { version, client_nonce: N_h, mac: HMAC(k, "voidbox-host" ‖ v ‖ N_g ‖ N_h) }`
//! 3. guest verifies in constant time → `AuthOk { mac: HMAC(k, "voidbox-guest" ‖ v ‖ N_g ‖ N_h) }`
//!
//! The host's proof covers the guest's fresh nonce, so it cannot be replayed;
//! the guest's proof lets the host know it talks to the VM it booted. Any
//! failure closes the connection.

use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::Sha256;

/// Length of nonces in bytes.
pub const NONCE_LEN: usize = 32;
/// Minimum secret length in bytes.
pub const MIN_SECRET_LEN: usize = 16;

type HmacSha256 = Hmac<Sha256>;

/// The per-VM shared secret. Its Debug output is redacted and it is wiped on drop.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Vec<u8>);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl Drop for Secret {
    fn drop(&mut self) {
        wipe(&mut self.0);
    }
}

/// Overwrites `bytes` with zeros in a way the compiler cannot elide.
pub fn wipe(bytes: &mut [u8]) {
    for b in bytes.iter_mut() {
        // SAFETY: `b` is a valid, aligned &mut u8; the volatile write keeps
        // the compiler from eliding the wipe of memory about to be freed.
        unsafe { std::ptr::write_volatile(b, 0) };
    }
}

/// Why a secret or proof was rejected.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthError {
    /// The secret is too short.
    #[error("secret must be at least {MIN_SECRET_LEN} bytes, got {0}")]
    SecretTooShort(usize),
    /// A hex field did not decode or had the wrong length.
    #[error("handshake field `{0}` is not {1} hex-encoded bytes")]
    BadField(&'static str, usize),
    /// The peer speaks another protocol version.
    #[error("protocol version mismatch: ours {ours}, theirs {theirs}")]
    Version {
        /// Our version.
        ours: u32,
        /// Theirs.
        theirs: u32,
    },
    /// The MAC did not verify.
    #[error("authentication failed: wrong secret")]
    BadMac,
}

impl Secret {
    /// Wraps raw secret bytes.
    pub fn new(bytes: Vec<u8>) -> Result<Self, AuthError> {
        if bytes.len() < MIN_SECRET_LEN {
            return Err(AuthError::SecretTooShort(bytes.len()));
        }
        Ok(Self(bytes))
    }

    /// A fresh random 32-byte secret.
    pub fn generate() -> Self {
        let mut b = vec![0u8; 32];
        rand::thread_rng().fill_bytes(&mut b);
        Self(b)
    }

    /// Parses a hex secret.
    pub fn from_hex(s: &str) -> Result<Self, AuthError> {
        let b = hex::decode(s).map_err(|_| AuthError::BadField("secret", MIN_SECRET_LEN))?;
        Self::new(b)
    }

    /// Hex form (for the boot data).
    pub fn to_hex(&self) -> String {
        hex::encode(&self.0)
    }

    fn mac(&self, label: &[u8], version: u32, guest_nonce: &[u8], host_nonce: &[u8]) -> HmacSha256 {
        let mut m = HmacSha256::new_from_slice(&self.0).expect("HMAC takes any key length");
        m.update(label);
        m.update(&version.to_le_bytes());
        m.update(guest_nonce);
        m.update(host_nonce);
        m
    }
}

/// A fresh random nonce, hex.
pub fn fresh_nonce() -> String {
    let mut b = [0u8; NONCE_LEN];
    rand::thread_rng().fill_bytes(&mut b);
    hex::encode(b)
}

fn nonce(field: &'static str, s: &str) -> Result<Vec<u8>, AuthError> {
    match hex::decode(s) {
        Ok(b) if b.len() == NONCE_LEN => Ok(b),
        _ => Err(AuthError::BadField(field, NONCE_LEN)),
    }
}

fn mac_bytes(field: &'static str, s: &str) -> Result<Vec<u8>, AuthError> {
    match hex::decode(s) {
        Ok(b) if b.len() == 32 => Ok(b),
        _ => Err(AuthError::BadField(field, 32)),
    }
}

const HOST_LABEL: &[u8] = b"voidbox-host";
const GUEST_LABEL: &[u8] = b"voidbox-guest";

/// The proof one side sends: HMAC over its label, the version and both nonces.
fn proof(
    label: &[u8],
    secret: &Secret,
    version: u32,
    guest_nonce: &str,
    host_nonce: &str,
) -> Result<String, AuthError> {
    let g = nonce("nonce", guest_nonce)?;
    let h = nonce("client_nonce", host_nonce)?;
    Ok(hex::encode(
        secret.mac(label, version, &g, &h).finalize().into_bytes(),
    ))
}

/// Checks the other side's proof in constant time.
fn verify(
    label: &[u8],
    secret: &Secret,
    version: u32,
    guest_nonce: &str,
    host_nonce: &str,
    mac: &str,
) -> Result<(), AuthError> {
    let g = nonce("nonce", guest_nonce)?;
    let h = nonce("client_nonce", host_nonce)?;
    let m = mac_bytes("mac", mac)?;
    secret
        .mac(label, version, &g, &h)
        .verify_slice(&m)
        .map_err(|_| AuthError::BadMac)
}

/// Host side: the proof to send in `Auth`.
pub fn host_proof(
    secret: &Secret,
    version: u32,
    guest_nonce: &str,
    host_nonce: &str,
) -> Result<String, AuthError> {
    proof(HOST_LABEL, secret, version, guest_nonce, host_nonce)
}

/// Guest side: checks the host's proof in constant time.
pub fn verify_host_proof(
    secret: &Secret,
    version: u32,
    guest_nonce: &str,
    host_nonce: &str,
    mac: &str,
) -> Result<(), AuthError> {
    verify(HOST_LABEL, secret, version, guest_nonce, host_nonce, mac)
}

/// Guest side: the proof to send in `AuthOk`.
pub fn guest_proof(
    secret: &Secret,
    version: u32,
    guest_nonce: &str,
    host_nonce: &str,
) -> Result<String, AuthError> {
    proof(GUEST_LABEL, secret, version, guest_nonce, host_nonce)
}

/// Host side: checks the guest's proof in constant time.
pub fn verify_guest_proof(
    secret: &Secret,
    version: u32,
    guest_nonce: &str,
    host_nonce: &str,
    mac: &str,
) -> Result<(), AuthError> {
    verify(GUEST_LABEL, secret, version, guest_nonce, host_nonce, mac)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proofs_verify_only_with_the_same_secret() {
        let k = Secret::generate();
        let other = Secret::generate();
        let (g, h) = (fresh_nonce(), fresh_nonce());
        let p = host_proof(&k, 1, &g, &h).unwrap();
        verify_host_proof(&k, 1, &g, &h, &p).unwrap();
        assert_eq!(
            verify_host_proof(&other, 1, &g, &h, &p),
            Err(AuthError::BadMac)
        );
        assert_eq!(verify_host_proof(&k, 2, &g, &h, &p), Err(AuthError::BadMac));
        assert_eq!(
            verify_host_proof(&k, 1, &fresh_nonce(), &h, &p),
            Err(AuthError::BadMac)
        );
        // The guest's proof is not the host's proof (no reflection).
        assert_eq!(
            verify_guest_proof(&k, 1, &g, &h, &p),
            Err(AuthError::BadMac)
        );
        let q = guest_proof(&k, 1, &g, &h).unwrap();
        verify_guest_proof(&k, 1, &g, &h, &q).unwrap();
    }

    #[test]
    fn rejects_bad_fields() {
        let k = Secret::generate();
        assert!(matches!(
            host_proof(&k, 1, "zz", &fresh_nonce()),
            Err(AuthError::BadField("nonce", _))
        ));
        assert_eq!(Secret::new(vec![1; 3]), Err(AuthError::SecretTooShort(3)));
        assert_eq!(format!("{k:?}"), "Secret(<redacted>)");
    }
}
