//! The browser's proof of possession (SPEC §16): a compact JWS (JWT) signed with the
//! session's device key, `ES256` (ECDSA P-256, raw `r || s`) or `RS256` (RSASSA-PKCS1-v1_5
//! with SHA-256), and the public key it registers, a JWK.
//!
//! Chrome puts the registration key in the JWT header as `jwk`; the explainer's earlier
//! text puts it in the header as `key` and the first origin trial in the payload as `key`.
//! All three are read, in that order. Signatures are verified with `ring`.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::signature::{self, RsaPublicKeyComponents, UnparsedPublicKey};
use serde_json::{Map, Value};

pub use crate::session::PublicKey;

/// Largest proof accepted, in bytes (an RS256 proof carrying a 4096-bit JWK is ~1.8 KB).
pub const MAX_PROOF_BYTES: usize = 8192;
/// RSA moduli accepted: 2048 to 8192 bits, as `ring`'s RSA_PKCS1_2048_8192_SHA256.
const RSA_MIN_BYTES: usize = 256;
const RSA_MAX_BYTES: usize = 1024;

/// Why a proof is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProofError {
    /// Not three base64url parts of JSON objects, or too long.
    #[error("malformed proof: {0}")]
    Malformed(&'static str),
    /// An `alg` other than ES256 and RS256, or one that does not fit the key.
    #[error("algorithm {0:?} is not ES256 or RS256, or does not match the key")]
    Algorithm(String),
    /// The JWK is missing or is no P-256 or 2048–8192-bit RSA public key.
    #[error("bad public key: {0}")]
    Key(&'static str),
    /// The signature does not verify under the key.
    #[error("signature does not verify under the session's key")]
    Signature,
}

impl PublicKey {
    /// The key of a JWK object (`kty` EC with `crv` P-256, or RSA).
    ///
    /// # Errors
    /// When it is neither, or its members are not base64url of the right sizes.
    pub fn from_jwk(jwk: &Map<String, Value>) -> Result<Self, ProofError> {
        let member = |name: &'static str| -> Result<Vec<u8>, ProofError> {
            let text = jwk
                .get(name)
                .and_then(Value::as_str)
                .ok_or(ProofError::Key("a JWK member is missing"))?;
            URL_SAFE_NO_PAD
                .decode(text)
                .map_err(|_| ProofError::Key("a JWK member is not base64url"))
        };
        match jwk.get("kty").and_then(Value::as_str) {
            Some("EC") => {
                if jwk.get("crv").and_then(Value::as_str) != Some("P-256") {
                    return Err(ProofError::Key("the EC curve is not P-256"));
                }
                let (x, y) = (member("x")?, member("y")?);
                if x.len() != 32 || y.len() != 32 {
                    return Err(ProofError::Key("P-256 coordinates are 32 bytes each"));
                }
                let mut point = [0u8; 65];
                point[0] = 4;
                point[1..33].copy_from_slice(&x);
                point[33..].copy_from_slice(&y);
                Ok(PublicKey::Es256(point))
            }
            Some("RSA") => {
                let (n, e) = (member("n")?, member("e")?);
                let (n, e) = (strip_zeros(&n), strip_zeros(&e));
                if !(RSA_MIN_BYTES..=RSA_MAX_BYTES).contains(&n.len()) {
                    return Err(ProofError::Key("the RSA modulus is not 2048 to 8192 bits"));
                }
                if e.is_empty() || e.len() > 8 {
                    return Err(ProofError::Key("the RSA exponent is out of range"));
                }
                Ok(PublicKey::Rs256 {
                    n: n.into(),
                    e: e.into(),
                })
            }
            _ => Err(ProofError::Key("kty is not EC or RSA")),
        }
    }

    /// Checks `sig` over `message` (ES256 signatures are the 64-byte `r || s` of JWS).
    fn verify(&self, message: &[u8], sig: &[u8]) -> Result<(), ProofError> {
        let ok = match self {
            PublicKey::Es256(point) => {
                UnparsedPublicKey::new(&signature::ECDSA_P256_SHA256_FIXED, &point[..])
                    .verify(message, sig)
            }
            PublicKey::Rs256 { n, e } => RsaPublicKeyComponents { n, e }.verify(
                &signature::RSA_PKCS1_2048_8192_SHA256,
                message,
                sig,
            ),
        };
        ok.map_err(|_| ProofError::Signature)
    }
}

fn strip_zeros(bytes: &[u8]) -> &[u8] {
    let start = bytes.iter().position(|b| *b != 0).unwrap_or(bytes.len());
    &bytes[start..]
}

/// A parsed, not yet verified, proof.
#[derive(Debug)]
pub struct Proof {
    alg: String,
    /// The key the proof carries (registration), if any.
    key: Option<PublicKey>,
    /// The `jti` claim: the challenge it answers.
    jti: Option<String>,
    /// `header.payload`, the signed bytes.
    signed: Vec<u8>,
    sig: Vec<u8>,
}

impl Proof {
    /// Parses a compact JWS.
    ///
    /// # Errors
    /// When it is not three base64url parts whose first two are JSON objects, or the key it
    /// carries is malformed.
    pub fn parse(token: &[u8]) -> Result<Self, ProofError> {
        if token.len() > MAX_PROOF_BYTES {
            return Err(ProofError::Malformed("longer than 8192 bytes"));
        }
        let token = token.trim_ascii();
        let mut parts = token.split(|b| *b == b'.');
        let (Some(h), Some(p), Some(s), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(ProofError::Malformed("not three dot-separated parts"));
        };
        let object = |part: &[u8]| -> Result<Map<String, Value>, ProofError> {
            let bytes = URL_SAFE_NO_PAD
                .decode(part)
                .map_err(|_| ProofError::Malformed("a part is not base64url"))?;
            match serde_json::from_slice(&bytes) {
                Ok(Value::Object(map)) => Ok(map),
                _ => Err(ProofError::Malformed("a part is not a JSON object")),
            }
        };
        let (header, payload) = (object(h)?, object(p)?);
        let sig = URL_SAFE_NO_PAD
            .decode(s)
            .map_err(|_| ProofError::Malformed("the signature is not base64url"))?;
        let alg = header
            .get("alg")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        let jwk = [header.get("jwk"), header.get("key"), payload.get("key")]
            .into_iter()
            .flatten()
            .find_map(Value::as_object);
        let key = jwk.map(PublicKey::from_jwk).transpose()?;
        let jti = payload
            .get("jti")
            .and_then(Value::as_str)
            .map(str::to_owned);
        Ok(Self {
            alg,
            key,
            jti,
            signed: token[..h.len() + 1 + p.len()].to_vec(),
            sig,
        })
    }

    /// The key the proof carries, if any (a registration's).
    pub fn key(&self) -> Option<&PublicKey> {
        self.key.as_ref()
    }

    /// The `jti` claim.
    pub fn jti(&self) -> Option<&str> {
        self.jti.as_deref()
    }

    /// Verifies the signature under `key`, whose algorithm must be the proof's `alg`.
    ///
    /// # Errors
    /// When `alg` does not name `key`'s algorithm, or the signature does not verify.
    pub fn verify(&self, key: &PublicKey) -> Result<(), ProofError> {
        if self.alg != key.alg() {
            return Err(ProofError::Algorithm(self.alg.chars().take(16).collect()));
        }
        key.verify(&self.signed, &self.sig)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ring::rand::SystemRandom;
    use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
    use serde_json::json;

    fn b64(bytes: &[u8]) -> String {
        URL_SAFE_NO_PAD.encode(bytes)
    }

    fn es256_pair() -> EcdsaKeyPair {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
        EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng).unwrap()
    }

    fn jwk_of(pair: &EcdsaKeyPair) -> Value {
        let point = pair.public_key().as_ref();
        json!({"kty":"EC","crv":"P-256","x":b64(&point[1..33]),"y":b64(&point[33..])})
    }

    fn sign(pair: &EcdsaKeyPair, header: &Value, payload: &Value) -> String {
        let signed = format!(
            "{}.{}",
            b64(header.to_string().as_bytes()),
            b64(payload.to_string().as_bytes())
        );
        let sig = pair.sign(&SystemRandom::new(), signed.as_bytes()).unwrap();
        format!("{signed}.{}", b64(sig.as_ref()))
    }

    #[test]
    fn an_es256_proof_verifies_under_its_key_only() {
        let (pair, other) = (es256_pair(), es256_pair());
        let header = json!({"alg":"ES256","typ":"dbsc+jwt","jwk":jwk_of(&pair)});
        let token = sign(&pair, &header, &json!({"jti":"c"}));
        let proof = Proof::parse(token.as_bytes()).unwrap();
        let key = proof.key().unwrap().clone();
        assert_eq!(proof.jti(), Some("c"));
        proof.verify(&key).unwrap();
        let other_key = PublicKey::from_jwk(jwk_of(&other).as_object().unwrap()).unwrap();
        assert_eq!(proof.verify(&other_key), Err(ProofError::Signature));
        assert_eq!(PublicKey::from_bytes(&key.to_bytes()), Some(key));
    }

    #[test]
    fn the_key_is_read_from_the_header_or_the_payload() {
        let pair = es256_pair();
        for (header, payload) in [
            (
                json!({"alg":"ES256","key":jwk_of(&pair)}),
                json!({"jti":"c"}),
            ),
            (
                json!({"alg":"ES256"}),
                json!({"jti":"c","key":jwk_of(&pair)}),
            ),
        ] {
            let proof = Proof::parse(sign(&pair, &header, &payload).as_bytes()).unwrap();
            proof.verify(&proof.key().unwrap().clone()).unwrap();
        }
    }

    #[test]
    fn alg_must_match_the_key() {
        let pair = es256_pair();
        for alg in ["RS256", "none", "HS256", ""] {
            let token = sign(&pair, &json!({"alg":alg,"jwk":jwk_of(&pair)}), &json!({}));
            let proof = Proof::parse(token.as_bytes()).unwrap();
            assert!(matches!(
                proof.verify(&proof.key().unwrap().clone()),
                Err(ProofError::Algorithm(_))
            ));
        }
    }

    #[test]
    fn malformed_proofs_and_keys_are_refused() {
        for token in [
            &b""[..],
            b"a.b",
            b"a.b.c.d",
            b"!!.e30.AA",
            b"WzFd.e30.AA",
            &[b'a'; MAX_PROOF_BYTES + 1],
        ] {
            assert!(
                matches!(Proof::parse(token), Err(ProofError::Malformed(_))),
                "{}",
                String::from_utf8_lossy(&token[..token.len().min(20)])
            );
        }
        for jwk in [
            json!({"kty":"EC","crv":"P-384","x":"AA","y":"AA"}),
            json!({"kty":"EC","crv":"P-256","x":b64(&[1; 31]),"y":b64(&[1; 32])}),
            json!({"kty":"RSA","n":b64(&[1; 128]),"e":"AQAB"}),
            json!({"kty":"RSA","n":b64(&[1; 256])}),
            json!({"kty":"oct","k":"AA"}),
        ] {
            assert!(
                PublicKey::from_jwk(jwk.as_object().unwrap()).is_err(),
                "{jwk}"
            );
        }
        assert_eq!(PublicKey::from_bytes(&[3, 1, 2]), None);
        assert_eq!(PublicKey::from_bytes(&[1, 4]), None);
    }
}
