#![allow(clippy::unwrap_used)]
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
fn the_digest_does_not_reveal_the_token() {
    let token = generate().unwrap();
    let d = digest(&token);
    assert_ne!(d, token);
    assert_eq!(URL_SAFE_NO_PAD.decode(&d).unwrap().len(), 32);
    assert_eq!(d, digest(&token));
}

#[test]
fn the_old_token_file_reads() {
    let json = format!(
        r#"{{"tokens":[{{"sha256":"abc","identity":"{}","expires_at":"2030-01-01T00:00:00Z","uses_left":1}}]}}"#,
        id()
    );
    let rows = serde_json::from_str::<TokenFile>(&json)
        .unwrap()
        .into_rows();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].identity, id());
    assert_eq!(rows[0].expires_at, at(1_893_456_000));
}
