//! The cost of end-user authentication per request: `Authenticator::authenticate` for a
//! request without a token, and for one with a valid token of each key type (keys cached, as
//! after the first JWKS fetch: no network). Run: `cargo bench -p picket-proxy --bench jwt`.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::hint::black_box;
use std::sync::Arc;

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{self, EcdsaKeyPair, Ed25519KeyPair, KeyPair as _};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use criterion::{Criterion, criterion_group, criterion_main};
use picket_proxy::jwt::{Authenticator, JwtSettings};
use serde_json::json;

fn sign(
    header: serde_json::Value,
    claims: &serde_json::Value,
    sig: impl Fn(&[u8]) -> Vec<u8>,
) -> String {
    let input = format!(
        "{}.{}",
        B64.encode(header.to_string()),
        B64.encode(claims.to_string())
    );
    let s = sig(input.as_bytes());
    format!("{input}.{}", B64.encode(s))
}

fn jwt(c: &mut Criterion) {
    let rng = SystemRandom::new();
    let rsa = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).unwrap();
    let comps: aws_lc_rs::rsa::PublicKeyComponents<Vec<u8>> = rsa.public_key().into();
    let strip = |b: &[u8]| {
        b.iter()
            .position(|x| *x != 0)
            .map_or(Vec::new(), |i| b[i..].to_vec())
    };
    let ec_pkcs8 =
        EcdsaKeyPair::generate_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
    let ec = EcdsaKeyPair::from_pkcs8(
        &signature::ECDSA_P256_SHA256_FIXED_SIGNING,
        ec_pkcs8.as_ref(),
    )
    .unwrap();
    let ed_pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
    let ed = Ed25519KeyPair::from_pkcs8(ed_pkcs8.as_ref()).unwrap();
    let point = ec.public_key().as_ref().to_vec();
    let jwks = json!({"keys": [
        {"kty": "RSA", "kid": "rsa", "n": B64.encode(strip(&comps.n)), "e": B64.encode(strip(&comps.e))},
        {"kty": "EC", "crv": "P-256", "kid": "ec", "x": B64.encode(&point[1..33]), "y": B64.encode(&point[33..])},
        {"kty": "OKP", "crv": "Ed25519", "kid": "ed", "x": B64.encode(ed.public_key().as_ref())},
    ]});
    let text = format!(
        "apiVersion: security.istio.io/v1\nkind: RequestAuthentication\nmetadata: {{name: a, namespace: shop}}\nspec:\n  jwtRules:\n  - issuer: https://idp\n    audiences: [orders]\n    jwks: {}\n",
        serde_json::to_string(&jwks.to_string()).unwrap()
    );
    let set = picket_policy::load(
        &[picket_policy::Source {
            name: "b.yaml",
            text: &text,
        }],
        &picket_policy::LoadOptions::default(),
    )
    .unwrap();
    let policies = set.for_workload(&picket_policy::Workload {
        namespace: "shop".into(),
        labels: Default::default(),
    });
    let authn = Authenticator::build(
        policies.authentications(),
        Err("inline keys only"),
        Arc::new(JwtSettings::default()),
    )
    .unwrap();
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let claims = json!({"iss": "https://idp", "sub": "alice", "aud": "orders", "exp": now + 3600,
                        "groups": ["staff", "buyers"]});
    let tokens = [
        (
            "rs256",
            sign(json!({"alg": "RS256", "kid": "rsa"}), &claims, |m| {
                let mut s = vec![0; rsa.public_modulus_len()];
                rsa.sign(&signature::RSA_PKCS1_SHA256, &rng, m, &mut s)
                    .unwrap();
                s
            }),
        ),
        (
            "es256",
            sign(json!({"alg": "ES256", "kid": "ec"}), &claims, |m| {
                ec.sign(&rng, m).unwrap().as_ref().to_vec()
            }),
        ),
        (
            "eddsa",
            sign(json!({"alg": "EdDSA", "kid": "ed"}), &claims, |m| {
                ed.sign(m).as_ref().to_vec()
            }),
        ),
    ];
    let parts = |auth: Option<&str>| {
        let mut b = http::Request::builder()
            .uri("/api/orders/42")
            .header("host", "orders");
        if let Some(t) = auth {
            b = b.header("authorization", format!("Bearer {t}"));
        }
        b.body(()).unwrap().into_parts().0
    };
    let mut group = c.benchmark_group("authenticate");
    let none = parts(None);
    assert!(authn.authenticate(&none).unwrap().is_none());
    group.bench_function("no_token", |b| {
        b.iter(|| authn.authenticate(black_box(&none)))
    });
    for (name, token) in &tokens {
        let p = parts(Some(token));
        assert!(authn.authenticate(&p).unwrap().is_some(), "{name}");
        group.bench_function(*name, |b| b.iter(|| authn.authenticate(black_box(&p))));
    }
    group.finish();
}

criterion_group!(benches, jwt);
criterion_main!(benches);
