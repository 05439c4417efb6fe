#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{self, EcdsaKeyPair, Ed25519KeyPair, KeyPair as _};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use serde_json::{Value, json};

use super::token::{self, KeySet, TokenError};
use super::{Authenticator, JwtSettings, remove_query_param};

struct Ed {
    kp: Ed25519KeyPair,
    kid: &'static str,
}

impl Ed {
    fn new(kid: &'static str) -> Self {
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).unwrap();
        Self {
            kp: Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap(),
            kid,
        }
    }

    fn jwk(&self) -> Value {
        json!({"kty": "OKP", "crv": "Ed25519", "kid": self.kid, "x": B64.encode(self.kp.public_key().as_ref())})
    }

    fn sign(&self, header: &Value, claims: &Value) -> String {
        let input = format!(
            "{}.{}",
            B64.encode(header.to_string()),
            B64.encode(claims.to_string())
        );
        format!(
            "{input}.{}",
            B64.encode(self.kp.sign(input.as_bytes()).as_ref())
        )
    }

    fn token(&self, claims: &Value) -> String {
        self.sign(&json!({"alg": "EdDSA", "kid": self.kid}), claims)
    }
}

fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

fn claims(iss: &str) -> Value {
    json!({"iss": iss, "sub": "alice", "aud": ["orders"], "exp": now() + 300, "groups": ["g1"]})
}

fn jwks(keys: &[Value]) -> String {
    json!({ "keys": keys }).to_string()
}

/// An authenticator from RequestAuthentication YAML (inline keys only).
fn authenticator(rules: &str) -> Authenticator {
    let text = format!(
        "apiVersion: security.istio.io/v1\nkind: RequestAuthentication\nmetadata: {{name: a, namespace: shop}}\nspec:\n  jwtRules:\n{rules}"
    );
    let set = picket_policy::load(
        &[picket_policy::Source {
            name: "t.yaml",
            text: &text,
        }],
        &picket_policy::LoadOptions::default(),
    )
    .unwrap_or_else(|e| panic!("{e}\n{text}"));
    let w = picket_policy::Workload {
        namespace: "shop".into(),
        labels: Default::default(),
    };
    let policies = set.for_workload(&w);
    Authenticator::build(
        policies.authentications(),
        Err("no fetching in unit tests"),
        Arc::new(JwtSettings::default()),
    )
    .unwrap()
}

fn inline_rule(issuer: &str, keys: &[Value], extra: &str) -> String {
    format!(
        "  - issuer: {issuer}\n    audiences: [orders]\n    jwks: {}\n{extra}",
        serde_json::to_string(&jwks(keys)).unwrap()
    )
}

fn request(headers: &[(&str, &str)], uri: &str) -> http::request::Parts {
    let mut b = http::Request::builder().uri(uri);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(()).unwrap().into_parts().0
}

#[test]
fn none_and_hmac_are_refused_before_any_key() {
    let body = B64.encode(claims("i").to_string());
    for alg in ["none", "None", "HS256", "HS384", "HS512"] {
        let t = format!(
            "{}.{body}.{}",
            B64.encode(json!({"alg": alg}).to_string()),
            B64.encode(b"sig")
        );
        assert_eq!(
            token::peek(&t).unwrap_err(),
            TokenError::AlgorithmRefused,
            "{alg}"
        );
    }
    for bad in [
        "",
        "a.b",
        "a.b.c.d",
        "!!!.x.y",
        &"a".repeat(token::MAX_TOKEN_BYTES + 1),
    ] {
        assert_eq!(
            token::peek(bad).unwrap_err(),
            TokenError::Malformed,
            "{bad:.20}"
        );
    }
}

#[test]
fn validates_signature_and_claims() {
    let key = Ed::new("k1");
    let other = Ed::new("k1");
    let (keys, skipped) = KeySet::parse(jwks(&[key.jwk()]).as_bytes()).unwrap();
    assert!(skipped.is_empty());
    let req = token::Requirements {
        issuer: "https://idp",
        audiences: &["orders".to_owned()],
        skew_seconds: 5,
    };
    let check = |t: &str| {
        let head = token::peek(t)?;
        token::verify(t, &head, &keys, &req)
    };
    let ok = check(&key.token(&claims("https://idp"))).unwrap();
    assert_eq!(ok["sub"], "alice");
    // Another key with the same kid: the signature does not verify.
    assert_eq!(
        check(&other.token(&claims("https://idp"))).unwrap_err(),
        TokenError::BadSignature
    );
    let mut c = claims("https://idp");
    c["exp"] = json!(now() - 60);
    assert_eq!(check(&key.token(&c)).unwrap_err(), TokenError::Expired);
    // Within the skew.
    c["exp"] = json!(now() - 2);
    assert!(check(&key.token(&c)).is_ok());
    let mut c = claims("https://idp");
    c.as_object_mut().unwrap().remove("exp");
    assert_eq!(check(&key.token(&c)).unwrap_err(), TokenError::Expired);
    let mut c = claims("https://idp");
    c["nbf"] = json!(now() + 60);
    assert_eq!(check(&key.token(&c)).unwrap_err(), TokenError::NotYetValid);
    let mut c = claims("https://idp");
    c["aud"] = json!("billing");
    assert_eq!(
        check(&key.token(&c)).unwrap_err(),
        TokenError::WrongAudience
    );
    assert_eq!(
        check(&key.token(&claims("https://evil"))).unwrap_err(),
        TokenError::WrongIssuer
    );
    // An unknown kid.
    let t = key.sign(
        &json!({"alg": "EdDSA", "kid": "k9"}),
        &claims("https://idp"),
    );
    assert_eq!(check(&t).unwrap_err(), TokenError::UnknownKey);
    // No kid: every suitable key is tried.
    let t = key.sign(&json!({"alg": "EdDSA"}), &claims("https://idp"));
    assert!(check(&t).is_ok());
    // An algorithm the key cannot verify.
    let t = key.sign(
        &json!({"alg": "ES256", "kid": "k1"}),
        &claims("https://idp"),
    );
    assert_eq!(check(&t).unwrap_err(), TokenError::BadSignature);
}

#[test]
fn unusable_keys_are_left_out() {
    let key = Ed::new("k1");
    let oct = json!({"kty": "oct", "k": "c2VjcmV0", "kid": "h"});
    let enc = json!({"kty": "OKP", "crv": "Ed25519", "use": "enc", "x": key.jwk()["x"]});
    let (set, skipped) = KeySet::parse(jwks(&[oct.clone(), enc, key.jwk()]).as_bytes()).unwrap();
    assert_eq!(set.keys.len(), 1);
    assert_eq!(skipped.len(), 2, "{skipped:?}");
    assert!(KeySet::parse(jwks(&[oct]).as_bytes()).is_err());
    assert!(KeySet::parse(b"{}").is_err());
    // ES256 keys parse too.
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(
        &signature::ECDSA_P256_SHA256_FIXED_SIGNING,
        &SystemRandom::new(),
    )
    .unwrap();
    let ec = EcdsaKeyPair::from_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref())
        .unwrap();
    let point = ec.public_key().as_ref();
    let jwk = json!({"kty": "EC", "crv": "P-256", "alg": "ES256",
                     "x": B64.encode(&point[1..33]), "y": B64.encode(&point[33..])});
    assert_eq!(
        KeySet::parse(jwks(&[jwk]).as_bytes()).unwrap().0.keys.len(),
        1
    );
}

#[test]
fn istio_semantics_for_locations_and_outputs() {
    let key = Ed::new("k1");
    let authn = authenticator(&inline_rule(
        "https://idp",
        &[key.jwk()],
        "    outputClaimToHeaders: [{header: x-user, claim: sub}, {header: x-group, claim: groups}]\n    outputPayloadToHeader: x-jwt-payload\n",
    ));
    let token = key.token(&claims("https://idp"));
    // No token: unauthenticated, not refused; forged output headers are removed.
    let mut parts = request(
        &[("x-user", "admin"), ("authorization", "Basic eA==")],
        "/x",
    );
    assert!(authn.authenticate(&parts).unwrap().is_none());
    authn.prepare_forward(&mut parts, None);
    assert!(parts.headers.get("x-user").is_none());
    assert_eq!(parts.headers["authorization"], "Basic eA==");
    // A valid token: claims out, token removed (forwardOriginalToken is false).
    let bearer = format!("bearer {token}");
    let mut parts = request(&[("authorization", &bearer), ("x-user", "admin")], "/x");
    let auth = authn.authenticate(&parts).unwrap().unwrap();
    assert_eq!(auth.auth.principal.as_deref(), Some("https://idp/alice"));
    authn.prepare_forward(&mut parts, Some(&auth));
    assert!(parts.headers.get("authorization").is_none());
    assert_eq!(parts.headers["x-user"], "alice");
    assert!(
        parts.headers.get("x-group").is_none(),
        "a list is not output"
    );
    assert_eq!(
        parts.headers["x-jwt-payload"].to_str().unwrap(),
        token.split('.').nth(1).unwrap()
    );
    // From the default query parameter, removed from the URI.
    let mut parts = request(&[], &format!("/x?a=1&access_token={token}&b=2"));
    let auth = authn.authenticate(&parts).unwrap().unwrap();
    authn.prepare_forward(&mut parts, Some(&auth));
    assert_eq!(parts.uri.to_string(), "/x?a=1&b=2");
    // Two different tokens: refused.
    let other =
        key.token(&json!({"iss": "https://idp", "sub": "bob", "aud": "orders", "exp": now() + 60}));
    let parts = request(
        &[("authorization", &bearer)],
        &format!("/x?access_token={other}"),
    );
    assert_eq!(
        authn.authenticate(&parts).unwrap_err().error,
        TokenError::MultipleTokens
    );
    // An issuer no rule has.
    let parts = request(
        &[(
            "authorization",
            &format!("Bearer {}", key.token(&claims("https://evil"))),
        )],
        "/",
    );
    assert_eq!(
        authn.authenticate(&parts).unwrap_err().error,
        TokenError::UnknownIssuer
    );
    // The token is named by a hash prefix only.
    let refused = authn.authenticate(&parts).unwrap_err();
    let label = refused.token.unwrap();
    assert_eq!(label.len(), 16);
    assert!(
        !parts.headers["authorization"]
            .to_str()
            .unwrap()
            .contains(&label)
    );
}

#[test]
fn from_headers_replace_the_defaults() {
    let key = Ed::new("k1");
    let authn = authenticator(&inline_rule(
        "https://idp",
        &[key.jwk()],
        "    fromHeaders: [{name: x-jwt-assertion}]\n    forwardOriginalToken: true\n",
    ));
    let token = key.token(&claims("https://idp"));
    // The default header is not read any more.
    let parts = request(&[("authorization", &format!("Bearer {token}"))], "/");
    assert!(authn.authenticate(&parts).unwrap().is_none());
    let mut parts = request(&[("x-jwt-assertion", &token)], "/");
    let auth = authn.authenticate(&parts).unwrap().unwrap();
    authn.prepare_forward(&mut parts, Some(&auth));
    assert_eq!(parts.headers["x-jwt-assertion"], token.as_str());
}

#[test]
fn one_issuer_one_rule_across_documents() {
    let key = Ed::new("k1");
    let rule = inline_rule("https://idp", &[key.jwk()], "");
    let text = format!(
        "apiVersion: picket.dev/v1\nkind: RequestAuthentication\nmetadata: {{name: a, namespace: shop}}\nspec:\n  jwtRules:\n{rule}---\napiVersion: picket.dev/v1\nkind: RequestAuthentication\nmetadata: {{name: b, namespace: shop}}\nspec:\n  jwtRules:\n{rule}"
    );
    let set = picket_policy::load(
        &[picket_policy::Source {
            name: "t.yaml",
            text: &text,
        }],
        &picket_policy::LoadOptions::default(),
    )
    .unwrap();
    let policies = set.for_workload(&picket_policy::Workload {
        namespace: "shop".into(),
        labels: Default::default(),
    });
    let err = Authenticator::build(
        policies.authentications(),
        Err("x"),
        Arc::new(JwtSettings::default()),
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("also has a rule in RequestAuthentication shop/a"),
        "{err}"
    );
}

#[test]
fn query_parameters_are_removed_exactly() {
    let mut uri: http::Uri = "/p?token=a&tokens=b&token=c".parse().unwrap();
    remove_query_param(&mut uri, "token");
    assert_eq!(uri.to_string(), "/p?tokens=b");
    let mut uri: http::Uri = "/p?token=a".parse().unwrap();
    remove_query_param(&mut uri, "token");
    assert_eq!(uri.to_string(), "/p");
}

fn validated(claims: Value) -> super::cache::Validated {
    let Value::Object(map) = claims else {
        panic!("claims are an object")
    };
    super::cache::Validated {
        auth: picket_policy::RequestAuth::from_claims(map),
        payload: "p".into(),
    }
}

fn key_set(ed: &Ed) -> Arc<KeySet> {
    Arc::new(KeySet::parse(jwks(&[ed.jwk()]).as_bytes()).unwrap().0)
}

#[test]
fn a_kept_token_is_used_again_only_within_its_validity_for_its_rule_and_keys() {
    let ed = Ed::new("k1");
    let keys = key_set(&ed);
    let cache = super::cache::TokenCache::default();
    let kept = validated(json!({"iss": "i", "sub": "alice", "exp": 1000, "nbf": 500}));
    cache.put("tok", 0, &keys, &kept, 30);
    // Valid from nbf - skew to exp + skew, both included.
    for (now, hit) in [
        (469, false),
        (470, true),
        (800, true),
        (1030, true),
        (1031, false),
    ] {
        assert_eq!(cache.get("tok", 0, &keys, now).is_some(), hit, "at {now}");
    }
    let hit = cache.get("tok", 0, &keys, 800).unwrap();
    assert_eq!(hit.auth, kept.auth);
    assert!(cache.get("tok", 1, &keys, 800).is_none(), "another rule");
    assert!(cache.get("tok2", 0, &keys, 800).is_none(), "another token");
    // The same keys fetched again (a refresh or a reload) are another key set: a miss, so
    // a rotation never lets a token through on the strength of the keys it replaced.
    assert!(
        cache.get("tok", 0, &key_set(&ed), 800).is_none(),
        "other keys"
    );
}

#[test]
fn the_cache_is_bounded_and_keeps_only_what_it_can_bound() {
    let keys = key_set(&Ed::new("k1"));
    let cache = super::cache::TokenCache::default();
    let kept = validated(json!({"iss": "i", "exp": 1000}));
    for i in 0..3 * super::cache::SLOTS {
        cache.put(&format!("token-{i}"), 0, &keys, &kept, 0);
    }
    assert!(cache.len() <= super::cache::SLOTS, "{} kept", cache.len());
    let fresh = super::cache::TokenCache::default();
    let long = "t".repeat(super::cache::MAX_CACHED_TOKEN_BYTES + 1);
    fresh.put(&long, 0, &keys, &kept, 0);
    // An `exp` that is not a whole number of seconds, or an unreadable `nbf`: verified
    // every time rather than reasoned about.
    fresh.put("float-exp", 0, &keys, &validated(json!({"exp": 1000.5})), 0);
    fresh.put(
        "text-nbf",
        0,
        &keys,
        &validated(json!({"exp": 1000, "nbf": "soon"})),
        0,
    );
    assert!(fresh.is_empty(), "{} kept", fresh.len());
}

#[test]
fn the_authenticator_keeps_validated_tokens_and_never_a_refusal() {
    let ed = Ed::new("k1");
    let other = Ed::new("k1");
    let a = authenticator(&inline_rule("https://issuer", &[ed.jwk()], ""));
    let good = ed.token(&claims("https://issuer"));
    let bearer = |t: &str| request(&[("authorization", &format!("Bearer {t}"))], "/");
    let first = a.authenticate(&bearer(&good)).unwrap().unwrap();
    assert_eq!(a.cached_tokens(), 1);
    let again = a.authenticate(&bearer(&good)).unwrap().unwrap();
    assert_eq!(again.auth, first.auth);
    assert_eq!(again.payload, first.payload);
    assert_eq!(a.cached_tokens(), 1);
    // Refusals are decided afresh each time and never kept: a forged signature, an expired
    // token, and a token not yet valid.
    let forged = other.token(&claims("https://issuer"));
    let mut expired = claims("https://issuer");
    expired["exp"] = json!(now() - 3600);
    let mut early = claims("https://issuer");
    early["nbf"] = json!(now() + 3600);
    for (token, error) in [
        (forged, TokenError::BadSignature),
        (ed.token(&expired), TokenError::Expired),
        (ed.token(&early), TokenError::NotYetValid),
    ] {
        for _ in 0..2 {
            let refused = a.authenticate(&bearer(&token)).unwrap_err();
            assert_eq!(refused.error, error);
        }
    }
    assert_eq!(a.cached_tokens(), 1);
}
