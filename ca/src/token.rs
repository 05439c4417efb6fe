//! Join tokens: short-lived bootstrap credentials that name the identity a workload gets.
//!
//! A token is 32 random bytes, base64url without padding, shown once when created. The CA keeps
//! only its SHA-256 digest, with the identity it grants, its expiry and how many uses are left
//! (in [`crate::store`]), so reading the state directory does not reveal a usable token.
//! Redeeming a token takes one use; a token with no uses left stays on record as used until a
//! day after it expires, so the answer to a replay is "used", not "unknown".

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::identity::SpiffeId;
use picket_common::crypto::{self, RandomError};

/// Random bytes in a token.
const TOKEN_BYTES: usize = 32;

/// Why a join token was not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TokenError {
    /// No such token was ever issued by this CA (or it expired long ago and was forgotten).
    #[error("unknown join token")]
    Unknown,
    /// The token's lifetime is over.
    #[error(
        "join token has expired; create a new one for this workload with `picket ca token create`"
    )]
    Expired,
    /// The token has no uses left.
    #[error(
        "join token has already been used; a workload whose certificate expired (a renewal \
         needs a valid certificate) enrolls again with a new join token for its identity: \
         `picket ca token create --identity ns/<namespace>/sa/<service-account>`"
    )]
    Used,
}

/// A new random token.
pub(crate) fn generate() -> Result<String, RandomError> {
    let mut bytes = [0u8; TOKEN_BYTES];
    crypto::fill_random(&mut bytes)?;
    Ok(URL_SAFE_NO_PAD.encode(bytes))
}

/// The SHA-256 of `token`, base64url: what the store keeps.
pub(crate) fn digest(token: &str) -> String {
    URL_SAFE_NO_PAD.encode(crypto::sha256(token.as_bytes()))
}

/// The content of `tokens.json`, where earlier versions kept tokens; read once, when the store
/// takes it over.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct TokenFile {
    tokens: Vec<TokenRow>,
}

/// One token as `tokens.json` held it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct TokenRow {
    /// SHA-256 of the token, base64url.
    pub(crate) sha256: String,
    pub(crate) identity: SpiffeId,
    #[serde(with = "time::serde::rfc3339")]
    pub(crate) expires_at: OffsetDateTime,
    pub(crate) uses_left: u32,
}

impl TokenFile {
    /// The tokens it holds.
    pub(crate) fn into_rows(self) -> Vec<TokenRow> {
        self.tokens
    }
}

#[cfg(test)]
mod tests;
