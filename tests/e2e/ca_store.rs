//! The CA's store under crashes: `picket ca serve` is killed with SIGKILL at random points
//! while clients redeem single-use join tokens, a hundred times, and after every restart the
//! store must open and hold together: a token is either unused and unrecorded, or redeemed
//! with exactly one certificate recorded; every certificate a client received is recorded;
//! no serial appears twice.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use picket_ca::{Authority, WorkloadName};
use picket_tests::TestCa;
use picket_tests::ca::csr_pem;

/// How many times the CA is killed.
const KILLS: usize = 100;
/// New single-use tokens made before each start (more than a start's issuances use).
const TOKENS_PER_START: usize = 30;
/// Concurrent clients asking for certificates.
const CLIENTS: usize = 3;
/// The kill comes at a random point up to this long after the clients start.
const MAX_KILL_DELAY_MS: u64 = 300;

fn random_below(n: u64) -> u64 {
    let mut b = [0u8; 8];
    if picket_common::crypto::fill_random(&mut b).is_err() {
        return n / 2;
    }
    u64::from_le_bytes(b) % n.max(1)
}

fn digest(token: &str) -> String {
    URL_SAFE_NO_PAD.encode(picket_common::crypto::sha256(token.as_bytes()))
}

#[tokio::test]
async fn ca_killed_during_issuance_keeps_its_store_consistent() -> Result<()> {
    let mut ca = TestCa::start().await?;
    let workload = WorkloadName::new("shop", "orders")?;
    let identity = format!("spiffe://{}/ns/shop/sa/orders", picket_tests::TRUST_DOMAIN);
    let key = rcgen::KeyPair::generate()?;
    let csr = Arc::new(csr_pem(&key, &identity)?);
    let mut all_tokens = Vec::new();
    // Certificates clients received: serial -> the token that bought it.
    let received: Arc<Mutex<HashMap<String, String>>> = Arc::default();
    let mut interrupted = 0usize;

    for round in 0..KILLS {
        ca.stop().await?;
        // Tokens are made through the library while the CA is down (its store is shared by
        // processes; this also opens it after the previous kill).
        let authority = Authority::open(ca.state_dir())
            .with_context(|| format!("round {round}: the store did not open after a kill"))?;
        let mut tokens = Vec::new();
        for _ in 0..TOKENS_PER_START {
            tokens.push(authority.create_token(&workload, Duration::from_secs(3600), 1)?);
        }
        drop(authority);
        all_tokens.extend(tokens.iter().cloned());
        ca.restart()
            .await
            .with_context(|| format!("round {round}: the CA did not start after a kill"))?;

        let queue = Arc::new(Mutex::new(tokens));
        let client = ca.client()?;
        let mut tasks = Vec::new();
        for _ in 0..CLIENTS {
            let (queue, client, csr, received) = (
                Arc::clone(&queue),
                client.clone(),
                Arc::clone(&csr),
                Arc::clone(&received),
            );
            tasks.push(tokio::spawn(async move {
                loop {
                    let Some(token) = queue.lock().ok().and_then(|mut q| q.pop()) else {
                        return;
                    };
                    match client.issue_with_token(&csr, &token).await {
                        Ok(answer) => {
                            if let Ok(mut r) = received.lock() {
                                r.insert(answer.serial, token);
                            }
                        }
                        // The CA died under this request; later ones fail too.
                        Err(_) => return,
                    }
                }
            }));
        }
        tokio::time::sleep(Duration::from_millis(random_below(MAX_KILL_DELAY_MS))).await;
        ca.stop().await?;
        for task in tasks {
            task.await.context("an issuing client panicked")?;
        }
        if queue.lock().map(|q| !q.is_empty()).unwrap_or(false) {
            interrupted += 1;
        }
    }
    ca.restart()
        .await
        .context("the CA did not start after the last kill")?;

    // Every invariant, read from the database itself.
    let db = rusqlite::Connection::open_with_flags(
        ca.state_dir().join("ca.db"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )?;
    let (rows, distinct): (i64, i64) = db.query_row(
        "SELECT count(*), count(DISTINCT serial) FROM issued",
        [],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    ensure!(
        rows == distinct,
        "{rows} records but {distinct} distinct serials"
    );
    let mut redeemed = 0usize;
    for token in &all_tokens {
        let d = digest(token);
        let uses_left: i64 = db
            .query_row(
                "SELECT uses_left FROM tokens WHERE sha256 = ?1",
                [&d],
                |r| r.get(0),
            )
            .with_context(|| format!("token {d} is missing from the store"))?;
        let records: i64 = db.query_row(
            "SELECT count(*) FROM issued WHERE token_sha256 = ?1",
            [&d],
            |r| r.get(0),
        )?;
        match uses_left {
            1 => ensure!(
                records == 0,
                "token {d} is unused but {records} certificate(s) record it"
            ),
            0 => {
                ensure!(
                    records == 1,
                    "token {d} was redeemed but {records} certificates record it"
                );
                redeemed += 1;
            }
            other => anyhow::bail!("token {d} has {other} uses left"),
        }
    }
    let received = received.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
    for (serial, token) in received.iter() {
        let recorded: Option<String> = db
            .query_row(
                "SELECT token_sha256 FROM issued WHERE serial = ?1",
                [serial],
                |r| r.get(0),
            )
            .with_context(|| format!("certificate {serial} was handed out but not recorded"))?;
        ensure!(
            recorded.as_deref() == Some(digest(token).as_str()),
            "certificate {serial} is recorded against another token"
        );
    }
    // The kills must have hit issuances: certificates were handed out, and the store holds
    // every one of them (checked above).
    ensure!(
        redeemed >= received.len() && received.len() >= KILLS / 10,
        "too little was issued to test anything: {} certificates received, {redeemed} tokens \
         redeemed",
        received.len()
    );
    eprintln!(
        "{KILLS} kills ({interrupted} with requests still queued), {} certificates received, \
         {redeemed} tokens redeemed, {} tokens unused",
        received.len(),
        all_tokens.len() - redeemed
    );
    Ok(())
}
