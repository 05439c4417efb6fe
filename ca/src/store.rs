//! The CA's transactional store: join tokens and the issuance record, in one SQLite database
//! (`ca.db` in the state directory).
//!
//! Why SQLite (through rusqlite, with SQLite built from source): a join token's redemption and
//! the record of the certificate it bought commit in one transaction, so a crash leaves the
//! token either unused or redeemed with its certificate recorded; a redemption is one indexed
//! row update, whatever the number of tokens; and several processes may write at once
//! (`picket ca token create` while `picket ca serve` redeems), which SQLite's file locking
//! allows and redb, the pure-Rust candidate, does not (one process per database file).
//!
//! The database runs in WAL mode with `synchronous = FULL`: a transaction is on disk when its
//! commit returns. Writers wait up to [`BUSY_TIMEOUT`] for each other.
//!
//! State written by earlier versions (`tokens.json`, `issued.jsonl`) is taken over on first
//! open, in one transaction, and the old files are renamed to `*.migrated`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};
use time::OffsetDateTime;

use crate::identity::SpiffeId;
use crate::state::{self, CredentialKind, IssuedRecord, StateDir, StateError};
use crate::token::{self, TokenError};

/// How long a writer waits for another process's transaction.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);
/// How long an expired token is kept, so a late replay is answered "used"/"expired", not
/// "unknown".
const KEEP_AFTER_EXPIRY: i64 = 24 * 3600;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS tokens (
    sha256     TEXT PRIMARY KEY NOT NULL,
    identity   TEXT NOT NULL,
    expires_at INTEGER NOT NULL,
    uses_left  INTEGER NOT NULL CHECK (uses_left >= 0)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS tokens_by_expiry ON tokens (expires_at);
CREATE TABLE IF NOT EXISTS issued (
    serial       TEXT PRIMARY KEY NOT NULL,
    spiffe_id    TEXT NOT NULL,
    not_after    INTEGER NOT NULL,
    credential   TEXT NOT NULL,
    issued_at    INTEGER NOT NULL,
    root         TEXT,
    token_sha256 TEXT
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS issued_by_not_after ON issued (not_after);
";

/// One connection to the store.
#[derive(Debug)]
pub(crate) struct Store {
    conn: Connection,
    path: PathBuf,
}

/// What an issuance does inside its transaction, given the identity the credential grants.
pub(crate) enum Redemption<'a> {
    /// Take one use of this join token.
    Token(&'a str),
    /// Nothing to redeem (renewal, service-account token).
    None,
}

impl Store {
    /// Opens (creating if needed) the store in `dir`, and takes over state an earlier version
    /// kept in files. The caller holds the directory lock while opening.
    pub(crate) fn open(dir: &StateDir) -> Result<Self, StateError> {
        let path = dir.file(state::DATABASE);
        let fail = |e: rusqlite::Error| db_error(&path, e);
        let conn = Connection::open(&path).map_err(fail)?;
        conn.busy_timeout(BUSY_TIMEOUT).map_err(fail)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(fail)?;
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(fail)?;
        conn.execute_batch(SCHEMA).map_err(fail)?;
        let mut store = Self { conn, path };
        store.migrate_files(dir)?;
        Ok(store)
    }

    fn error(&self) -> impl Fn(rusqlite::Error) -> StateError + '_ {
        move |e| db_error(&self.path, e)
    }

    /// Begins an IMMEDIATE transaction (the write lock is taken at once, so two writers never
    /// deadlock upgrading a read lock); the database path is for error messages.
    fn begin(&mut self) -> Result<(rusqlite::Transaction<'_>, &Path), StateError> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(|e| db_error(&self.path, e))?;
        Ok((tx, &self.path))
    }

    /// Records a join token (by digest) granting `identity` `uses` times until `expires_at`,
    /// and forgets tokens expired more than a day ago.
    pub(crate) fn add_token(
        &mut self,
        token: &str,
        identity: &SpiffeId,
        expires_at: OffsetDateTime,
        uses: u32,
        now: OffsetDateTime,
    ) -> Result<(), StateError> {
        let (tx, path) = self.begin()?;
        let fail = |e| db_error(path, e);
        tx.execute(
            "INSERT INTO tokens (sha256, identity, expires_at, uses_left) VALUES (?1, ?2, ?3, ?4)",
            params![
                token::digest(token),
                identity.to_string(),
                expires_at.unix_timestamp(),
                uses
            ],
        )
        .map_err(fail)?;
        tx.execute(
            "DELETE FROM tokens WHERE expires_at < ?1",
            params![now.unix_timestamp() - KEEP_AFTER_EXPIRY],
        )
        .map_err(fail)?;
        tx.commit().map_err(fail)
    }

    /// Runs one issuance as a single transaction: takes a use of the join token (if any) and
    /// learns the identity it grants, then `sign` (given that identity and a fresh serial
    /// check) makes the certificate, and the record is inserted. Nothing is stored unless the
    /// whole transaction commits; `sign`'s error rolls it back.
    pub(crate) fn issue<T, E>(
        &mut self,
        redemption: Redemption<'_>,
        now: OffsetDateTime,
        sign: impl FnOnce(
            Option<SpiffeId>,
            &mut dyn FnMut(&str) -> Result<bool, StateError>,
        ) -> Result<(T, IssuedRecord), E>,
    ) -> Result<T, E>
    where
        E: From<StateError> + From<TokenError>,
    {
        let (tx, path) = self.begin()?;
        let fail = |e| db_error(path, e);
        let (granted, digest) = match redemption {
            Redemption::None => (None, None),
            Redemption::Token(token) => {
                let digest = token::digest(token);
                let row: Option<(String, i64, i64)> = tx
                    .query_row(
                        "SELECT identity, expires_at, uses_left FROM tokens WHERE sha256 = ?1",
                        params![digest],
                        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
                    )
                    .optional()
                    .map_err(fail)?;
                let (identity, expires_at, uses_left) = row.ok_or(TokenError::Unknown)?;
                if now.unix_timestamp() >= expires_at {
                    return Err(TokenError::Expired.into());
                }
                if uses_left <= 0 {
                    return Err(TokenError::Used.into());
                }
                tx.execute(
                    "UPDATE tokens SET uses_left = uses_left - 1 WHERE sha256 = ?1",
                    params![digest],
                )
                .map_err(fail)?;
                let identity: SpiffeId = identity.parse().map_err(|e| StateError::Corrupt {
                    path: path.to_owned(),
                    reason: format!("token identity {identity:?}: {e}"),
                })?;
                (Some(identity), Some(digest))
            }
        };
        let (out, record) = {
            let mut serial_taken = |serial: &str| -> Result<bool, StateError> {
                tx.query_row(
                    "SELECT 1 FROM issued WHERE serial = ?1",
                    params![serial],
                    |_| Ok(()),
                )
                .optional()
                .map(|found| found.is_some())
                .map_err(fail)
            };
            sign(granted, &mut serial_taken)?
        };
        insert_record(&tx, &record, digest.as_deref()).map_err(fail)?;
        tx.commit().map_err(fail)?;
        Ok(out)
    }

    /// How many certificates valid after `now` chain to a root other than `root` (or to an
    /// unrecorded one), and the latest end of validity among them.
    pub(crate) fn valid_under_other_roots(
        &self,
        root: &str,
        now: OffsetDateTime,
    ) -> Result<(u64, Option<OffsetDateTime>), StateError> {
        let (count, last): (i64, Option<i64>) = self
            .conn
            .query_row(
                "SELECT count(*), max(not_after) FROM issued
                 WHERE not_after > ?1 AND (root IS NULL OR root != ?2)",
                params![now.unix_timestamp(), root],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .map_err(self.error())?;
        let last = last.and_then(|t| OffsetDateTime::from_unix_timestamp(t).ok());
        Ok((u64::try_from(count).unwrap_or(0), last))
    }

    /// Takes over `tokens.json` and `issued.jsonl` written by an earlier version, in one
    /// transaction; then renames them to `*.migrated`. Repeating it after a crash between the
    /// commit and the renames changes nothing (rows already present are kept as they are).
    fn migrate_files(&mut self, dir: &StateDir) -> Result<(), StateError> {
        let has_tokens = dir.exists(state::TOKENS)?;
        let has_log = dir.exists(state::ISSUED_LOG)?;
        if !has_tokens && !has_log {
            return Ok(());
        }
        let tokens: Vec<token::TokenRow> = if has_tokens {
            dir.read_json::<token::TokenFile>(state::TOKENS)?
                .into_rows()
        } else {
            Vec::new()
        };
        let records = if has_log {
            state::IssuanceLog::open(dir)?.1
        } else {
            Vec::new()
        };
        let (tx, path) = self.begin()?;
        let fail = |e| db_error(path, e);
        for t in &tokens {
            tx.execute(
                "INSERT OR IGNORE INTO tokens (sha256, identity, expires_at, uses_left)
                 VALUES (?1, ?2, ?3, ?4)",
                params![
                    t.sha256,
                    t.identity.to_string(),
                    t.expires_at.unix_timestamp(),
                    t.uses_left
                ],
            )
            .map_err(fail)?;
        }
        for r in &records {
            tx.execute(
                "INSERT OR IGNORE INTO issued
                 (serial, spiffe_id, not_after, credential, issued_at, root, token_sha256)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, NULL)",
                params![
                    r.serial,
                    r.spiffe_id.to_string(),
                    r.not_after.unix_timestamp(),
                    credential_name(r.credential),
                    r.issued_at.unix_timestamp(),
                    r.root
                ],
            )
            .map_err(fail)?;
        }
        tx.commit().map_err(fail)?;
        for name in [state::TOKENS, state::ISSUED_LOG] {
            if dir.exists(name)? {
                dir.rename(name, &format!("{name}.migrated"))?;
            }
        }
        tracing::info!(
            tokens = tokens.len(),
            certificates = records.len(),
            "took over the token file and the issuance log into the CA database"
        );
        Ok(())
    }
}

fn insert_record(
    tx: &rusqlite::Transaction<'_>,
    record: &IssuedRecord,
    token_sha256: Option<&str>,
) -> Result<(), rusqlite::Error> {
    tx.execute(
        "INSERT INTO issued (serial, spiffe_id, not_after, credential, issued_at, root, token_sha256)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        params![
            record.serial,
            record.spiffe_id.to_string(),
            record.not_after.unix_timestamp(),
            credential_name(record.credential),
            record.issued_at.unix_timestamp(),
            record.root,
            token_sha256
        ],
    )
    .map(|_| ())
}

fn credential_name(kind: CredentialKind) -> &'static str {
    match kind {
        CredentialKind::JoinToken => "join_token",
        CredentialKind::Renewal => "renewal",
        CredentialKind::ServiceAccountToken => "service_account_token",
    }
}

fn db_error(path: &std::path::Path, e: rusqlite::Error) -> StateError {
    StateError::Io {
        path: path.to_owned(),
        source: std::io::Error::other(e),
    }
}

#[cfg(test)]
impl Store {
    /// Every recorded serial, in order.
    pub(crate) fn serials(&self) -> Vec<String> {
        let Ok(mut stmt) = self
            .conn
            .prepare("SELECT serial FROM issued ORDER BY serial")
        else {
            return Vec::new();
        };
        stmt.query_map([], |r| r.get(0))
            .map(|rows| rows.filter_map(Result::ok).collect())
            .unwrap_or_default()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests;
