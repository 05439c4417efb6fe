//! Join tokens: short-lived bootstrap credentials that name the identity a workload gets.
//!
//! A token is 32 random bytes, base64url without padding, shown once when created. The CA keeps
//! only its SHA-256 digest, with the identity it grants, its expiry and how many uses are left,
//! so reading the state directory does not reveal a usable token. Redeeming a token takes one
//! use; a token with no uses left stays on file as used until well after it expires, so the
//! answer to a replay is "used", not "unknown".

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::identity::SpiffeId;
use picket_common::crypto::{self, RandomError};

/// Random bytes in a token.
const TOKEN_BYTES: usize = 32;

/// How long an expired or used-up token is kept on file before it is forgotten.
const KEEP_AFTER_EXPIRY: time::Duration = time::Duration::days(1);

/// Why a join token was not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TokenError {
    /// No such token was ever issued by this CA (or it expired long ago and was forgotten).
    #[error("unknown join token")]
    Unknown,
    /// The token's lifetime is over.
    #[error("join token has expired")]
    Expired,
    /// The token has no uses left.
    #[error("join token has already been used")]
    Used,
}

/// A new random token.
pub(crate) fn generate() -> Result<String, RandomError> {
    let mut bytes = [0u8; TOKEN_BYTES];
    crypto::fill_random(&mut bytes)?;
    Ok(URL_SAFE_NO_PAD.encode(bytes))
}

fn digest(token: &str) -> String {
    URL_SAFE_NO_PAD.encode(crypto::sha256(token.as_bytes()))
}

/// The content of `tokens.json`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct TokenFile {
    tokens: Vec<TokenRecord>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenRecord {
    /// SHA-256 of the token, base64url.
    sha256: String,
    identity: SpiffeId,
    #[serde(with = "time::serde::rfc3339")]
    expires_at: OffsetDateTime,
    uses_left: u32,
}

impl TokenFile {
    /// Records `token` as granting `identity` `uses` times until `expires_at`.
    pub(crate) fn add(
        &mut self,
        token: &str,
        identity: SpiffeId,
        expires_at: OffsetDateTime,
        uses: u32,
    ) {
        self.tokens.push(TokenRecord {
            sha256: digest(token),
            identity,
            expires_at,
            uses_left: uses,
        });
    }

    /// Takes one use of `token` at time `now` and returns the identity it grants. The change is
    /// in memory only: the caller persists the file before acting on the answer.
    pub(crate) fn redeem(
        &mut self,
        token: &str,
        now: OffsetDateTime,
    ) -> Result<SpiffeId, TokenError> {
        let wanted = digest(token);
        let record = self
            .tokens
            .iter_mut()
            .find(|r| r.sha256 == wanted)
            .ok_or(TokenError::Unknown)?;
        if now >= record.expires_at {
            return Err(TokenError::Expired);
        }
        if record.uses_left == 0 {
            return Err(TokenError::Used);
        }
        record.uses_left -= 1;
        Ok(record.identity.clone())
    }

    /// Forgets tokens that expired more than a day before `now`.
    pub(crate) fn prune(&mut self, now: OffsetDateTime) {
        self.tokens
            .retain(|r| r.expires_at.saturating_add(KEEP_AFTER_EXPIRY) > now);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn id() -> SpiffeId {
        "spiffe://example.org/ns/shop/sa/orders".parse().unwrap()
    }

    fn at(unix: i64) -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp(unix).unwrap()
    }

    #[test]
    fn token_is_32_random_bytes_in_base64url() {
        let a = generate().unwrap();
        let b = generate().unwrap();
        assert_ne!(a, b);
        let raw = URL_SAFE_NO_PAD.decode(&a).unwrap();
        assert_eq!(raw.len(), 32);
    }

    #[test]
    fn only_the_digest_is_stored() {
        let token = generate().unwrap();
        let mut file = TokenFile::default();
        file.add(&token, id(), at(100), 1);
        let json = serde_json::to_string(&file).unwrap();
        assert!(!json.contains(&token));
        assert!(json.contains(&digest(&token)));
    }

    #[test]
    fn single_use_token_is_used_after_one_redemption() {
        let token = generate().unwrap();
        let mut file = TokenFile::default();
        file.add(&token, id(), at(100), 1);
        assert_eq!(file.redeem(&token, at(50)).unwrap(), id());
        assert_eq!(file.redeem(&token, at(51)), Err(TokenError::Used));
    }

    #[test]
    fn token_with_three_uses_grants_exactly_three() {
        let token = generate().unwrap();
        let mut file = TokenFile::default();
        file.add(&token, id(), at(100), 3);
        for _ in 0..3 {
            assert_eq!(file.redeem(&token, at(50)).unwrap(), id());
        }
        assert_eq!(file.redeem(&token, at(50)), Err(TokenError::Used));
    }

    #[test]
    fn expired_token_is_refused() {
        let token = generate().unwrap();
        let mut file = TokenFile::default();
        file.add(&token, id(), at(100), 1);
        assert_eq!(file.redeem(&token, at(100)), Err(TokenError::Expired));
    }

    #[test]
    fn unknown_token_is_refused() {
        let mut file = TokenFile::default();
        file.add(&generate().unwrap(), id(), at(100), 1);
        assert_eq!(
            file.redeem(&generate().unwrap(), at(50)),
            Err(TokenError::Unknown)
        );
    }

    #[test]
    fn used_tokens_are_kept_until_a_day_after_expiry() {
        let token = generate().unwrap();
        let mut file = TokenFile::default();
        file.add(&token, id(), at(100), 1);
        file.redeem(&token, at(50)).unwrap();
        file.prune(at(100 + 3600));
        assert_eq!(file.redeem(&token, at(50)), Err(TokenError::Used));
        file.prune(at(100 + 86_400));
        assert_eq!(file.redeem(&token, at(50)), Err(TokenError::Unknown));
    }
}
