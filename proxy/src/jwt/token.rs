//! Validating one compact JWS token against the keys of its issuer: the algorithm allow-list,
//! key selection by `kid`, the signature (jsonwebtoken on aws-lc-rs), `exp` / `nbf` with a
//! skew, `iss` and `aud`. Pure: no I/O, so the fuzz target drives it directly.

use std::collections::HashSet;
use std::fmt;

use jsonwebtoken::jwk::{AlgorithmParameters, Jwk, JwkSet, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};

/// The signature algorithms accepted: asymmetric only. `none` is not an algorithm
/// jsonwebtoken can read at all, and HMAC (`HS256`/`HS384`/`HS512`) is refused before any
/// key is looked at, so a token signed with a public key as an HMAC secret never verifies.
pub const ALGORITHMS: [Algorithm; 9] = [
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::EdDSA,
];

/// The largest token accepted, in bytes.
pub const MAX_TOKEN_BYTES: usize = 16 * 1024;

/// Why a token is invalid. Each maps to one bounded metric label and one 401 description.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TokenError {
    /// Not three base64url segments with a JSON header and payload, or too long.
    Malformed,
    /// `alg` is `none`, HMAC or not supported.
    AlgorithmRefused,
    /// No `RequestAuthentication` rule of this workload has the token's `iss` (for where the
    /// token was found).
    UnknownIssuer,
    /// The issuer's keys have not been fetched yet (or never could be).
    NoKeys,
    /// No key of the issuer has the token's `kid` (an early refetch is asked for).
    UnknownKey,
    /// The signature does not verify with any suitable key.
    BadSignature,
    /// `exp` is in the past (beyond the skew), or missing.
    Expired,
    /// `nbf` is in the future (beyond the skew).
    NotYetValid,
    /// `aud` names none of the rule's audiences.
    WrongAudience,
    /// `iss` does not match (checked again after the signature).
    WrongIssuer,
    /// More than one token in the request.
    MultipleTokens,
}

impl TokenError {
    /// Every error, for tests and metric documentation.
    pub const ALL: [TokenError; 11] = [
        Self::Malformed,
        Self::AlgorithmRefused,
        Self::UnknownIssuer,
        Self::NoKeys,
        Self::UnknownKey,
        Self::BadSignature,
        Self::Expired,
        Self::NotYetValid,
        Self::WrongAudience,
        Self::WrongIssuer,
        Self::MultipleTokens,
    ];

    /// The metric label and log field.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Malformed => "malformed",
            Self::AlgorithmRefused => "algorithm_refused",
            Self::UnknownIssuer => "unknown_issuer",
            Self::NoKeys => "no_keys",
            Self::UnknownKey => "unknown_kid",
            Self::BadSignature => "bad_signature",
            Self::Expired => "expired",
            Self::NotYetValid => "not_yet_valid",
            Self::WrongAudience => "wrong_audience",
            Self::WrongIssuer => "wrong_issuer",
            Self::MultipleTokens => "multiple_tokens",
        }
    }

    /// What the 401's `WWW-Authenticate` `error_description` says.
    pub fn description(self) -> &'static str {
        match self {
            Self::Malformed => "the token is malformed",
            Self::AlgorithmRefused => "the token's signature algorithm is not accepted",
            Self::UnknownIssuer => "the token's issuer is not accepted here",
            Self::NoKeys => "the issuer's keys are not available",
            Self::UnknownKey => "the token's key id is not known",
            Self::BadSignature => "the token's signature does not verify",
            Self::Expired => "the token has expired",
            Self::NotYetValid => "the token is not valid yet",
            Self::WrongAudience => "the token's audience is not accepted",
            Self::WrongIssuer => "the token's issuer does not match",
            Self::MultipleTokens => "the request carries more than one token",
        }
    }
}

impl fmt::Display for TokenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.description())
    }
}

/// One verification key of an issuer.
#[derive(Clone)]
pub struct Key {
    /// `kid`, when the JWK has one.
    pub kid: Option<String>,
    /// The JWK's `alg`, when it names one: the only algorithm this key verifies.
    pub alg: Option<Algorithm>,
    key: DecodingKey,
    kind: KeyKind,
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Key")
            .field("kid", &self.kid)
            .field("alg", &self.alg)
            .field("kind", &self.kind)
            .finish_non_exhaustive()
    }
}

/// The kind of public key, which fixes the algorithms it may verify.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum KeyKind {
    Rsa,
    EcP256,
    EcP384,
    Ed25519,
}

impl KeyKind {
    fn verifies(self, alg: Algorithm) -> bool {
        match self {
            KeyKind::Rsa => matches!(
                alg,
                Algorithm::RS256
                    | Algorithm::RS384
                    | Algorithm::RS512
                    | Algorithm::PS256
                    | Algorithm::PS384
                    | Algorithm::PS512
            ),
            KeyKind::EcP256 => alg == Algorithm::ES256,
            KeyKind::EcP384 => alg == Algorithm::ES384,
            KeyKind::Ed25519 => alg == Algorithm::EdDSA,
        }
    }
}

/// An issuer's usable keys.
#[derive(Debug, Clone, Default)]
pub struct KeySet {
    /// The keys, in JWKS order.
    pub keys: Vec<Key>,
}

/// Why a JWK set cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwksError {
    /// Not a JSON JWK set.
    #[error("not a JWK set: {0}")]
    Parse(String),
    /// No key in it can verify an accepted algorithm.
    #[error("no usable signature key in the JWK set ({0})")]
    NoUsableKey(String),
}

impl KeySet {
    /// The usable keys of a JWK set: RSA, EC P-256 / P-384 and Ed25519 public keys whose
    /// `use` (when given) is `sig`. Symmetric (`oct`) keys are never used. An error when no
    /// key is usable; `skipped` says why the others were left out.
    pub fn parse(json: &[u8]) -> Result<(KeySet, Vec<String>), JwksError> {
        let set: JwkSet =
            serde_json::from_slice(json).map_err(|e| JwksError::Parse(e.to_string()))?;
        let mut keys = Vec::new();
        let mut skipped = Vec::new();
        for (i, jwk) in set.keys.iter().enumerate() {
            match Self::key(jwk) {
                Ok(key) => keys.push(key),
                Err(why) => {
                    let kid = jwk.common.key_id.as_deref().unwrap_or("(no kid)");
                    skipped.push(format!("key {i} {kid}: {why}"));
                }
            }
        }
        if keys.is_empty() {
            return Err(JwksError::NoUsableKey(skipped.join("; ")));
        }
        Ok((KeySet { keys }, skipped))
    }

    fn key(jwk: &Jwk) -> Result<Key, String> {
        if matches!(&jwk.common.public_key_use, Some(u) if *u != PublicKeyUse::Signature) {
            return Err("not a signature key (`use`)".into());
        }
        let kind = match &jwk.algorithm {
            AlgorithmParameters::RSA(_) => KeyKind::Rsa,
            AlgorithmParameters::EllipticCurve(ec) => match ec.curve {
                jsonwebtoken::jwk::EllipticCurve::P256 => KeyKind::EcP256,
                jsonwebtoken::jwk::EllipticCurve::P384 => KeyKind::EcP384,
                _ => return Err("unsupported elliptic curve".into()),
            },
            AlgorithmParameters::OctetKeyPair(okp) => {
                if okp.curve != jsonwebtoken::jwk::EllipticCurve::Ed25519 {
                    return Err("unsupported OKP curve".into());
                }
                KeyKind::Ed25519
            }
            AlgorithmParameters::OctetKey(_) => {
                return Err("symmetric keys are never used".into());
            }
            _ => return Err("unsupported key type".into()),
        };
        let alg = match jwk.common.key_algorithm {
            None => None,
            Some(ka) => {
                let alg = key_algorithm(ka).ok_or("unsupported `alg`")?;
                if !kind.verifies(alg) {
                    return Err("`alg` does not fit the key type".into());
                }
                Some(alg)
            }
        };
        let key = DecodingKey::from_jwk(jwk).map_err(|e| e.to_string())?;
        Ok(Key {
            kid: jwk.common.key_id.clone(),
            alg,
            key,
            kind,
        })
    }

    /// Whether a key with this `kid` is in the set.
    pub fn has_kid(&self, kid: &str) -> bool {
        self.keys.iter().any(|k| k.kid.as_deref() == Some(kid))
    }
}

fn key_algorithm(ka: KeyAlgorithm) -> Option<Algorithm> {
    Some(match ka {
        KeyAlgorithm::RS256 => Algorithm::RS256,
        KeyAlgorithm::RS384 => Algorithm::RS384,
        KeyAlgorithm::RS512 => Algorithm::RS512,
        KeyAlgorithm::PS256 => Algorithm::PS256,
        KeyAlgorithm::PS384 => Algorithm::PS384,
        KeyAlgorithm::PS512 => Algorithm::PS512,
        KeyAlgorithm::ES256 => Algorithm::ES256,
        KeyAlgorithm::ES384 => Algorithm::ES384,
        KeyAlgorithm::EdDSA => Algorithm::EdDSA,
        _ => return None,
    })
}

/// What the token says about itself before anything is verified: enough to pick the rule
/// and the key.
#[derive(Debug, Clone)]
pub struct Unverified {
    /// The header's `alg`, already checked against [`ALGORITHMS`].
    pub alg: Algorithm,
    /// The header's `kid`.
    pub kid: Option<String>,
    /// The payload's `iss`, when it is a string.
    pub issuer: Option<String>,
}

/// Reads the header and the `iss` of `token` without verifying anything. Refuses tokens
/// over [`MAX_TOKEN_BYTES`], `alg: none` and HMAC.
pub fn peek(token: &str) -> Result<Unverified, TokenError> {
    if token.len() > MAX_TOKEN_BYTES || token.bytes().filter(|b| *b == b'.').count() != 2 {
        return Err(TokenError::Malformed);
    }
    // `alg` is read as text first, so `none` and HMAC are named as refused rather than as
    // malformed or as a failed signature.
    let header_segment = token.split('.').next().unwrap_or("");
    let header_json = base64_url(header_segment).ok_or(TokenError::Malformed)?;
    let header_value: serde_json::Value =
        serde_json::from_slice(&header_json).map_err(|_| TokenError::Malformed)?;
    let alg_text = header_value
        .get("alg")
        .and_then(serde_json::Value::as_str)
        .ok_or(TokenError::Malformed)?;
    if alg_text.eq_ignore_ascii_case("none") || alg_text.starts_with("HS") {
        return Err(TokenError::AlgorithmRefused);
    }
    let header = jsonwebtoken::decode_header(token).map_err(|_| TokenError::Malformed)?;
    if !ALGORITHMS.contains(&header.alg) {
        return Err(TokenError::AlgorithmRefused);
    }
    let claims: serde_json::Map<String, serde_json::Value> =
        jsonwebtoken::dangerous::insecure_decode_claims(token)
            .map_err(|_| TokenError::Malformed)?;
    Ok(Unverified {
        alg: header.alg,
        kid: header.kid,
        issuer: claims
            .get("iss")
            .and_then(serde_json::Value::as_str)
            .map(str::to_owned),
    })
}

/// One base64url segment (no padding), decoded.
fn base64_url(segment: &str) -> Option<Vec<u8>> {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(segment)
        .ok()
}

/// What a rule requires of a token besides its signature.
#[derive(Debug, Clone)]
pub struct Requirements<'a> {
    /// The rule's issuer.
    pub issuer: &'a str,
    /// The rule's audiences; empty accepts any.
    pub audiences: &'a [String],
    /// The clock skew allowed on `exp` and `nbf`, in seconds.
    pub skew_seconds: u64,
}

/// Verifies `token` (already [`peek`]ed as `head`) with `keys` and `req`; the validated
/// payload's claims. Keys are those whose `kid` is the token's (every suitable key when the
/// token names none).
pub fn verify(
    token: &str,
    head: &Unverified,
    keys: &KeySet,
    req: &Requirements<'_>,
) -> Result<serde_json::Map<String, serde_json::Value>, TokenError> {
    let candidates: Vec<&Key> = keys
        .keys
        .iter()
        .filter(|k| match &head.kid {
            Some(kid) => k.kid.as_deref() == Some(kid.as_str()),
            None => true,
        })
        .collect();
    if candidates.is_empty() {
        return Err(TokenError::UnknownKey);
    }
    let mut validation = Validation::new(head.alg);
    validation.leeway = req.skew_seconds;
    validation.validate_exp = true;
    validation.validate_nbf = true;
    validation.set_issuer(&[req.issuer]);
    let mut required: HashSet<String> = ["exp", "iss"].iter().map(|s| (*s).to_owned()).collect();
    if req.audiences.is_empty() {
        validation.validate_aud = false;
    } else {
        validation.set_audience(req.audiences);
        required.insert("aud".to_owned());
    }
    validation.required_spec_claims = required;
    let mut error = TokenError::BadSignature;
    for key in candidates {
        if !key.kind.verifies(head.alg) || key.alg.is_some_and(|a| a != head.alg) {
            continue;
        }
        match jsonwebtoken::decode::<serde_json::Map<String, serde_json::Value>>(
            token,
            &key.key,
            &validation,
        ) {
            Ok(data) => return Ok(data.claims),
            Err(e) => {
                use jsonwebtoken::errors::ErrorKind as K;
                error = match e.kind() {
                    K::InvalidSignature => TokenError::BadSignature,
                    K::ExpiredSignature => TokenError::Expired,
                    K::ImmatureSignature => TokenError::NotYetValid,
                    K::InvalidAudience => TokenError::WrongAudience,
                    K::InvalidIssuer => TokenError::WrongIssuer,
                    K::MissingRequiredClaim(c) if c == "exp" => TokenError::Expired,
                    K::MissingRequiredClaim(c) if c == "aud" => TokenError::WrongAudience,
                    K::MissingRequiredClaim(_) => TokenError::WrongIssuer,
                    K::InvalidAlgorithm | K::MissingAlgorithm => TokenError::AlgorithmRefused,
                    _ => TokenError::Malformed,
                };
                // A failed signature may still verify with another key of the same kid-less
                // set; any other failure is about the claims and is final.
                if error != TokenError::BadSignature {
                    return Err(error);
                }
            }
        }
    }
    Err(error)
}
