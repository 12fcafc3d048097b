//! What a device-bound session (SPEC §16) keeps in its record: the device's public key and
//! the last challenge it answered, with their byte form for the sealed Redis value. The
//! protocol that checks proofs against them is the `dbsc` module.

/// A device public key, as registered.
#[derive(Clone, PartialEq, Eq)]
pub enum PublicKey {
    /// P-256, the uncompressed point `0x04 || x || y`.
    Es256([u8; 65]),
    /// RSA modulus and exponent, big-endian without leading zeros.
    Rs256 {
        /// Modulus.
        n: Box<[u8]>,
        /// Public exponent.
        e: Box<[u8]>,
    },
}

impl std::fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PublicKey::Es256(_) => f.write_str("PublicKey(ES256)"),
            PublicKey::Rs256 { n, .. } => write!(f, "PublicKey(RS256, {} bits)", n.len() * 8),
        }
    }
}

impl PublicKey {
    /// The JWS algorithm this key verifies.
    pub fn alg(&self) -> &'static str {
        match self {
            PublicKey::Es256(_) => "ES256",
            PublicKey::Rs256 { .. } => "RS256",
        }
    }

    /// A compact byte form, for the session record: `1 || point`, or
    /// `2 || len(n) (2 bytes, big-endian) || n || e`.
    pub fn to_bytes(&self) -> Vec<u8> {
        match self {
            PublicKey::Es256(point) => {
                let mut out = Vec::with_capacity(66);
                out.push(1);
                out.extend_from_slice(point);
                out
            }
            PublicKey::Rs256 { n, e } => {
                let mut out = Vec::with_capacity(3 + n.len() + e.len());
                out.push(2);
                out.extend_from_slice(
                    &u16::try_from(n.len())
                        .expect("moduli are at most 1024 bytes")
                        .to_be_bytes(),
                );
                out.extend_from_slice(n);
                out.extend_from_slice(e);
                out
            }
        }
    }

    /// The key [`to_bytes`](Self::to_bytes) wrote; `None` for anything else.
    pub fn from_bytes(bytes: &[u8]) -> Option<Self> {
        match bytes.split_first()? {
            (1, point) => Some(PublicKey::Es256(point.try_into().ok()?)),
            (2, rest) if rest.len() > 2 => {
                let n_len = usize::from(u16::from_be_bytes([rest[0], rest[1]]));
                let rest = &rest[2..];
                if rest.len() <= n_len {
                    return None;
                }
                let (n, e) = rest.split_at(n_len);
                Some(PublicKey::Rs256 {
                    n: n.into(),
                    e: e.into(),
                })
            }
            _ => None,
        }
    }
}

/// What a registered session keeps (in its [`Record`](super::Record)).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Binding {
    /// The device's public key.
    pub key: PublicKey,
    /// Issue time (Unix ms) of the last challenge a proof answered: later proofs must
    /// answer a later one.
    pub last_challenge_ms: u64,
}

impl Binding {
    /// The byte form kept in a sealed Redis value: `last_challenge_ms` (8 bytes,
    /// big-endian), then the key's [`to_bytes`](PublicKey::to_bytes).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = self.last_challenge_ms.to_be_bytes().to_vec();
        out.extend_from_slice(&self.key.to_bytes());
        out
    }

    /// The binding [`to_bytes`](Self::to_bytes) wrote; `None` for anything else.
    pub fn from_bytes(bytes: &[u8]) -> Option<Self> {
        let (ms, key) = bytes.split_at_checked(8)?;
        Some(Self {
            last_challenge_ms: u64::from_be_bytes(ms.try_into().ok()?),
            key: PublicKey::from_bytes(key)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binding_round_trips_through_bytes() {
        let b = Binding {
            key: PublicKey::Rs256 {
                n: vec![0xc1; 256].into(),
                e: vec![1, 0, 1].into(),
            },
            last_challenge_ms: 42,
        };
        assert_eq!(Binding::from_bytes(&b.to_bytes()), Some(b));
        assert_eq!(Binding::from_bytes(&[0; 7]), None);
    }
}
