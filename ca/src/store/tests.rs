//! Unit tests of the CA's store.

use std::fs;

use super::*;
use crate::authority::{Authority, Credential, IssueError};
use crate::test_support::{csr, new_ca, p256, spiffe_id, workload};

fn at(unix: i64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(unix).unwrap()
}

fn open(dir: &std::path::Path) -> Store {
    Store::open(&StateDir::open(&dir.join("state")).unwrap()).unwrap()
}

/// Runs an issuance transaction that records serial `serial` or fails with `fail`.
fn redeem(
    store: &mut Store,
    token: &str,
    now: OffsetDateTime,
    serial: &str,
    fail: bool,
) -> Result<SpiffeId, IssueError> {
    store.issue(Redemption::Token(token), now, |granted, taken| {
        let id = granted.unwrap();
        assert!(!taken(serial)?);
        if fail {
            return Err(IssueError::MalformedCsr("refused after redemption".into()));
        }
        let record = IssuedRecord {
            serial: serial.into(),
            spiffe_id: id.clone(),
            not_after: now,
            credential: CredentialKind::JoinToken,
            issued_at: now,
            root: None,
        };
        Ok((id, record))
    })
}

#[test]
fn a_token_grants_exactly_its_uses_until_it_expires() {
    let (dir, _ca) = new_ca();
    let mut store = open(dir.path());
    let id = spiffe_id("shop", "orders");
    let three = token::generate().unwrap();
    store.add_token(&three, &id, at(100), 3, at(0)).unwrap();
    for n in 0..3 {
        assert_eq!(
            redeem(&mut store, &three, at(50), &format!("0{n}"), false).unwrap(),
            id
        );
    }
    assert!(matches!(
        redeem(&mut store, &three, at(50), "09", false),
        Err(IssueError::Token(TokenError::Used))
    ));
    let late = token::generate().unwrap();
    store.add_token(&late, &id, at(100), 1, at(0)).unwrap();
    assert!(matches!(
        redeem(&mut store, &late, at(100), "10", false),
        Err(IssueError::Token(TokenError::Expired))
    ));
    assert!(matches!(
        redeem(&mut store, &token::generate().unwrap(), at(50), "11", false),
        Err(IssueError::Token(TokenError::Unknown))
    ));
}

#[test]
fn a_failed_issuance_leaves_the_token_unused_and_nothing_recorded() {
    let (dir, _ca) = new_ca();
    let mut store = open(dir.path());
    let t = token::generate().unwrap();
    store
        .add_token(&t, &spiffe_id("shop", "orders"), at(100), 1, at(0))
        .unwrap();
    assert!(redeem(&mut store, &t, at(50), "01", true).is_err());
    // Still one use left, and serial 01 was never recorded.
    redeem(&mut store, &t, at(50), "01", false).unwrap();
    assert!(matches!(
        redeem(&mut store, &t, at(50), "02", false),
        Err(IssueError::Token(TokenError::Used))
    ));
}

#[test]
fn spent_tokens_are_kept_until_a_day_after_expiry() {
    let (dir, _ca) = new_ca();
    let mut store = open(dir.path());
    let id = spiffe_id("shop", "orders");
    let t = token::generate().unwrap();
    store.add_token(&t, &id, at(100), 1, at(0)).unwrap();
    redeem(&mut store, &t, at(50), "01", false).unwrap();
    // Adding a token prunes: an hour after expiry the spent token is still known.
    store
        .add_token(&token::generate().unwrap(), &id, at(10_000), 1, at(3_700))
        .unwrap();
    assert!(matches!(
        redeem(&mut store, &t, at(50), "02", false),
        Err(IssueError::Token(TokenError::Used))
    ));
    store
        .add_token(
            &token::generate().unwrap(),
            &id,
            at(200_000),
            1,
            at(100 + 86_401),
        )
        .unwrap();
    assert!(matches!(
        redeem(&mut store, &t, at(50), "03", false),
        Err(IssueError::Token(TokenError::Unknown))
    ));
}

#[test]
fn the_file_layout_of_earlier_versions_is_taken_over_once() {
    let (dir, ca) = new_ca();
    drop(ca);
    let state = dir.path().join("state");
    let unused = token::generate().unwrap();
    let spent = token::generate().unwrap();
    let row = |t: &str, uses: u32| {
        format!(
            r#"{{"sha256":"{}","identity":"spiffe://example.org/ns/shop/sa/orders","expires_at":"2099-01-01T00:00:00Z","uses_left":{uses}}}"#,
            token::digest(t)
        )
    };
    fs::write(
        state.join(state::TOKENS),
        format!(r#"{{"tokens":[{},{}]}}"#, row(&unused, 1), row(&spent, 0)),
    )
    .unwrap();
    // Two complete lines and one torn by a crash.
    fs::write(
        state.join(state::ISSUED_LOG),
        concat!(
            r#"{"serial":"0a","spiffe_id":"spiffe://example.org/ns/shop/sa/orders","not_after":"2099-01-01T00:00:00Z","credential":"join_token","issued_at":"2024-01-01T00:00:00Z"}"#,
            "\n",
            r#"{"serial":"0b","spiffe_id":"spiffe://example.org/ns/shop/sa/orders","not_after":"2099-01-01T00:00:00Z","credential":"renewal","issued_at":"2024-01-01T00:00:00Z"}"#,
            "\n",
            r#"{"serial":"0c","#
        ),
    )
    .unwrap();

    let ca = Authority::open(&state).unwrap();
    assert!(!state.join(state::TOKENS).exists());
    assert!(state.join("tokens.json.migrated").exists());
    assert!(state.join("issued.jsonl.migrated").exists());
    assert_eq!(ca.issued_serials(), ["0a", "0b"]);
    ca.issue(&csr(&p256(), &[]), Credential::JoinToken(unused.clone()))
        .unwrap();
    assert!(matches!(
        ca.issue(&csr(&p256(), &[]), Credential::JoinToken(spent)),
        Err(IssueError::Token(TokenError::Used))
    ));
    drop(ca);
    // Opening again changes nothing.
    let ca = Authority::open(&state).unwrap();
    assert_eq!(ca.issued_serials().len(), 3);
    assert!(matches!(
        ca.issue(&csr(&p256(), &[]), Credential::JoinToken(unused)),
        Err(IssueError::Token(TokenError::Used))
    ));
}

#[test]
fn two_processes_share_the_store() {
    let (dir, ca) = new_ca();
    // A second connection, as `picket ca token create` opens beside `picket ca serve`.
    let other = Authority::open(dir.path().join("state")).unwrap();
    let t = other
        .create_token(
            &workload("shop", "orders"),
            std::time::Duration::from_secs(60),
            1,
        )
        .unwrap();
    ca.issue(&csr(&p256(), &[]), Credential::JoinToken(t.clone()))
        .unwrap();
    assert!(matches!(
        other.issue(&csr(&p256(), &[]), Credential::JoinToken(t)),
        Err(IssueError::Token(TokenError::Used))
    ));
}
