//! Arbitrary tokens and JWK sets through the sidecar's token validation: nothing may panic;
//! `alg: none` and HMAC tokens are refused before any key is used; a token that verifies was
//! read by `peek` with an accepted algorithm, and verifying it again gives the same claims.
//!
//! Input: a JWK set (JSON) and a token, separated by the first `\n`.

#![no_main]

use libfuzzer_sys::fuzz_target;
use picket_proxy::jwt::token::{self, ALGORITHMS, KeySet, Requirements, TokenError};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (jwks, token) = text.split_once('\n').unwrap_or(("", text));
    let keys = KeySet::parse(jwks.as_bytes()).map(|(k, _)| k).unwrap_or_default();
    let head = match token::peek(token) {
        Ok(head) => head,
        Err(e) => {
            assert!(matches!(e, TokenError::Malformed | TokenError::AlgorithmRefused));
            return;
        }
    };
    assert!(ALGORITHMS.contains(&head.alg));
    let audiences = ["orders".to_owned()];
    let req = Requirements {
        issuer: head.issuer.as_deref().unwrap_or("x"),
        audiences: &audiences,
        skew_seconds: 30,
    };
    if let Ok(claims) = token::verify(token, &head, &keys, &req) {
        assert_eq!(token::verify(token, &head, &keys, &req), Ok(claims));
    }
});
