//! Validated tokens, kept so that a token a client sends again is not verified again.
//!
//! Verifying an RS256 signature costs tens of microseconds per request; a client sends the
//! same token with every request until it expires. An entry is kept only for a token that
//! validated, and it is used again only while all of these hold:
//!
//! - the token is byte for byte the one that validated, for the same rule;
//! - the rule's key set is the very one it was verified with (a JWK-set refresh or a policy
//!   reload that brings other keys makes every entry of the old keys a miss);
//! - its `exp` (with the skew) has not passed and its `nbf` (with the skew) has come.
//!
//! A miss verifies as without the cache, so a refusal is always decided afresh: failures are
//! never kept. The cache belongs to one [`super::Authenticator`], which each policy load
//! builds anew, so a reload empties it.
//!
//! It is bounded: [`SLOTS`] direct-mapped slots, and no token over [`MAX_CACHED_TOKEN_BYTES`]
//! is kept. A slot is chosen by a keyed hash (SipHash with a random key per cache) of the
//! token, so tokens chosen to collide only evict each other and cost what they would without
//! the cache.

use std::hash::BuildHasher;
use std::sync::{Arc, Mutex, PoisonError};

use picket_policy::RequestAuth;

use super::token::KeySet;

/// How many tokens the cache holds at most.
pub const SLOTS: usize = 256;
/// Longer tokens are verified every time (a bound on the cache's memory: at most
/// `SLOTS * MAX_CACHED_TOKEN_BYTES` of tokens, and claims no larger than them).
pub const MAX_CACHED_TOKEN_BYTES: usize = 4096;

/// What a validated token left behind.
#[derive(Debug, Clone)]
pub struct Validated {
    /// The claims policy sees.
    pub auth: RequestAuth,
    /// The token's payload segment (for `outputPayloadToHeader`).
    pub payload: String,
}

#[derive(Debug)]
struct Entry {
    token: Box<str>,
    rule: usize,
    keys: Arc<KeySet>,
    /// The last second (Unix time) the token is valid in, skew included.
    valid_until: u64,
    /// The first second it is valid in, skew included.
    valid_from: u64,
    validated: Validated,
}

/// The validated-token cache of one authenticator.
#[derive(Debug)]
pub struct TokenCache {
    slots: Mutex<Vec<Option<Entry>>>,
    hasher: std::collections::hash_map::RandomState,
}

impl Default for TokenCache {
    fn default() -> Self {
        Self {
            slots: Mutex::new((0..SLOTS).map(|_| None).collect()),
            hasher: std::collections::hash_map::RandomState::new(),
        }
    }
}

impl TokenCache {
    fn slot(&self, token: &str) -> usize {
        // The remainder is below SLOTS, so it fits a usize.
        usize::try_from(self.hasher.hash_one(token) % SLOTS as u64).unwrap_or(0)
    }

    /// The validation of `token` by `rule` with `keys`, if it is kept and still valid at
    /// `now` (Unix seconds).
    pub fn get(&self, token: &str, rule: usize, keys: &Arc<KeySet>, now: u64) -> Option<Validated> {
        let slot = self.slot(token);
        let slots = self.slots.lock().unwrap_or_else(PoisonError::into_inner);
        let entry = slots.get(slot)?.as_ref()?;
        // Compared in constant time: the cache must not tell by its timing how much of another
        // client's token a guess got right.
        let same_token = aws_lc_rs::constant_time::verify_slices_are_equal(
            entry.token.as_bytes(),
            token.as_bytes(),
        )
        .is_ok();
        let fresh = entry.rule == rule
            && Arc::ptr_eq(&entry.keys, keys)
            && (entry.valid_from..=entry.valid_until).contains(&now)
            && same_token;
        fresh.then(|| entry.validated.clone())
    }

    /// Keeps the validation of `token` by `rule` with `keys`, made at `now`, for as long as
    /// its `exp` and `nbf` claims (with `skew` seconds) allow. A token without a numeric `exp`,
    /// or over [`MAX_CACHED_TOKEN_BYTES`], is not kept.
    pub fn put(
        &self,
        token: &str,
        rule: usize,
        keys: &Arc<KeySet>,
        validated: &Validated,
        skew: u64,
    ) {
        if token.len() > MAX_CACHED_TOKEN_BYTES {
            return;
        }
        let claim = |name: &str| {
            validated
                .auth
                .claims
                .get(name)
                .map(serde_json::Value::as_u64)
        };
        // `exp` is required and was checked; one that is not a whole number of seconds is
        // not worth reasoning about: verify it every time.
        let Some(Some(exp)) = claim("exp") else {
            return;
        };
        let valid_from = match claim("nbf") {
            None => 0,
            Some(Some(nbf)) => nbf.saturating_sub(skew),
            Some(None) => return,
        };
        let entry = Entry {
            token: token.into(),
            rule,
            keys: Arc::clone(keys),
            valid_until: exp.saturating_add(skew),
            valid_from,
            validated: validated.clone(),
        };
        let slot = self.slot(token);
        let mut slots = self.slots.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(s) = slots.get_mut(slot) {
            *s = Some(entry);
        }
    }

    /// How many tokens are kept.
    pub fn len(&self) -> usize {
        let slots = self.slots.lock().unwrap_or_else(PoisonError::into_inner);
        slots.iter().filter(|s| s.is_some()).count()
    }

    /// Whether no token is kept.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The current Unix time in seconds (0 before 1970, which makes every entry stale).
pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
