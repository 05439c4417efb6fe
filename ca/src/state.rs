//! The CA's state directory on disk.
//!
//! Layout, all inside one directory of mode 0700:
//!
//! | file           | content                                                        |
//! |----------------|----------------------------------------------------------------|
//! | `ca.json`      | trust domain, leaf TTLs, format version; written last by init  |
//! | `root.pem`     | the root certificate (generated roots only)                    |
//! | `root.key`     | the root key, 0600 (generated roots only)                      |
//! | `issuer.pem`   | the online intermediate certificate                            |
//! | `issuer.key`   | the intermediate key, 0600                                     |
//! | `bundle.pem`   | the trust bundle handed to workloads                           |
//! | `ca.db`        | SQLite: join tokens (SHA-256 digest, identity, expiry, uses left) and the issuance record ([`crate::store`]) |
//! | `tokens.json`, `issued.jsonl` | where earlier versions kept tokens and the issuance log; taken over into `ca.db` and renamed `*.migrated` |
//! | `lock`         | empty; locked while the state is created, opened or rotated     |
//! | `root.next.pem`, `root.next.key` | a new root staged by `rotate root --stage add`       |
//! | `root.prev.pem`, `root.prev.key` | the root replaced by `--stage switch`, kept in the bundle until `--stage remove` |
//! | `issuer.next.pem`, `issuer.next.key` | a new issuer being installed (only during a rotation command) |
//! | `rotation.json` | when the last certificate signed under the previous root expires |
//!
//! Every file but the log is replaced atomically: written to a temporary file in the same
//! directory, fsynced, renamed over the old one, and the directory fsynced. The `lock` file lets
//! `picket ca token create` run while `picket ca serve` is redeeming tokens.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Seek, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::identity::SpiffeId;

pub(crate) const CONFIG: &str = "ca.json";
pub(crate) const ROOT_CERT: &str = "root.pem";
pub(crate) const ROOT_KEY: &str = "root.key";
pub(crate) const ISSUER_CERT: &str = "issuer.pem";
pub(crate) const ISSUER_KEY: &str = "issuer.key";
pub(crate) const BUNDLE: &str = "bundle.pem";
pub(crate) const TOKENS: &str = "tokens.json";
pub(crate) const ISSUED_LOG: &str = "issued.jsonl";
pub(crate) const NEXT_ROOT_CERT: &str = "root.next.pem";
pub(crate) const NEXT_ROOT_KEY: &str = "root.next.key";
pub(crate) const PREV_ROOT_CERT: &str = "root.prev.pem";
pub(crate) const PREV_ROOT_KEY: &str = "root.prev.key";
pub(crate) const NEXT_ISSUER_CERT: &str = "issuer.next.pem";
pub(crate) const NEXT_ISSUER_KEY: &str = "issuer.next.key";
pub(crate) const ROTATION: &str = "rotation.json";
/// The SQLite database of join tokens and the issuance record (`crate::store`).
pub(crate) const DATABASE: &str = "ca.db";
const LOCK: &str = "lock";

/// Every file that makes a directory hold CA state; init refuses to run over any of them.
pub(crate) const STATE_FILES: &[&str] = &[
    CONFIG,
    ROOT_CERT,
    ROOT_KEY,
    ISSUER_CERT,
    ISSUER_KEY,
    BUNDLE,
    TOKENS,
    ISSUED_LOG,
    NEXT_ROOT_CERT,
    NEXT_ROOT_KEY,
    PREV_ROOT_CERT,
    PREV_ROOT_KEY,
    NEXT_ISSUER_CERT,
    NEXT_ISSUER_KEY,
    ROTATION,
    DATABASE,
];

/// Mode of files holding private keys.
pub(crate) const SECRET_MODE: u32 = 0o600;
/// Mode of every other state file.
pub(crate) const PUBLIC_MODE: u32 = 0o644;
const DIR_MODE: u32 = 0o700;

/// Why the state directory could not be read or written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StateError {
    /// A file system operation failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or directory concerned.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// A state file exists but does not hold what the CA wrote there.
    #[error("{}: corrupt CA state: {reason}", path.display())]
    Corrupt {
        /// The file concerned.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
}

fn io_error(path: &Path) -> impl FnOnce(io::Error) -> StateError + '_ {
    move |source| StateError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Writes `contents` to `path` atomically with permissions `mode`: a reader sees the old file
/// or the new one, never half of it, and the new one survives a crash once this returns.
pub fn write_file_atomic(path: &Path, contents: &[u8], mode: u32) -> Result<(), StateError> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let name = path.file_name().ok_or_else(|| StateError::Io {
        path: path.to_owned(),
        source: io::Error::new(io::ErrorKind::InvalidInput, "not a file path"),
    })?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(".tmp");
    let tmp = dir.join(tmp_name);
    // A temporary file left behind by a crash may have other permissions: start afresh.
    match fs::remove_file(&tmp) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_error(&tmp)(e)),
    }
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .map_err(io_error(&tmp))?;
    file.write_all(contents).map_err(io_error(&tmp))?;
    file.sync_all().map_err(io_error(&tmp))?;
    fs::rename(&tmp, path).map_err(io_error(path))?;
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_error(dir))
}

/// The state directory.
#[derive(Debug, Clone)]
pub(crate) struct StateDir {
    path: PathBuf,
}

impl StateDir {
    /// Creates the directory (and parents) if needed and makes it private to its owner.
    pub(crate) fn create(path: &Path) -> Result<Self, StateError> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(DIR_MODE)
            .create(path)
            .map_err(io_error(path))?;
        fs::set_permissions(path, fs::Permissions::from_mode(DIR_MODE)).map_err(io_error(path))?;
        Ok(Self {
            path: path.to_owned(),
        })
    }

    /// An existing state directory: it must hold `ca.json`.
    pub(crate) fn open(path: &Path) -> Result<Self, StateError> {
        let dir = Self {
            path: path.to_owned(),
        };
        if !dir.exists(CONFIG)? {
            return Err(StateError::Corrupt {
                path: dir.file(CONFIG),
                reason: "missing: not a CA state directory (run `picket ca init` first)".into(),
            });
        }
        Ok(dir)
    }

    /// A directory that holds only signing material (`issuer.pem`, `issuer.key`,
    /// `bundle.pem`), such as a Kubernetes Secret volume: no `ca.json` is required, and it is
    /// only read.
    pub(crate) fn signing_material(path: &Path) -> Self {
        Self {
            path: path.to_owned(),
        }
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    pub(crate) fn file(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    pub(crate) fn exists(&self, name: &str) -> Result<bool, StateError> {
        let path = self.file(name);
        path.try_exists().map_err(io_error(&path))
    }

    pub(crate) fn read_string(&self, name: &str) -> Result<String, StateError> {
        let path = self.file(name);
        fs::read_to_string(&path).map_err(io_error(&path))
    }

    pub(crate) fn read_json<T: DeserializeOwned>(&self, name: &str) -> Result<T, StateError> {
        let text = self.read_string(name)?;
        serde_json::from_str(&text).map_err(|e| StateError::Corrupt {
            path: self.file(name),
            reason: e.to_string(),
        })
    }

    pub(crate) fn write(&self, name: &str, contents: &[u8], mode: u32) -> Result<(), StateError> {
        write_file_atomic(&self.file(name), contents, mode)
    }

    pub(crate) fn write_json<T: Serialize>(&self, name: &str, value: &T) -> Result<(), StateError> {
        let mut bytes = serde_json::to_vec_pretty(value).map_err(|e| StateError::Corrupt {
            path: self.file(name),
            reason: e.to_string(),
        })?;
        bytes.push(b'\n');
        self.write(name, &bytes, PUBLIC_MODE)
    }

    /// Renames `from` to `to` (replacing `to`) and makes the change durable.
    pub(crate) fn rename(&self, from: &str, to: &str) -> Result<(), StateError> {
        let target = self.file(to);
        fs::rename(self.file(from), &target).map_err(io_error(&target))?;
        self.sync()
    }

    /// Removes `name` if it exists and makes the change durable.
    pub(crate) fn remove(&self, name: &str) -> Result<(), StateError> {
        let path = self.file(name);
        match fs::remove_file(&path) {
            Ok(()) => self.sync(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_error(&path)(e)),
        }
    }

    fn sync(&self) -> Result<(), StateError> {
        File::open(&self.path)
            .and_then(|d| d.sync_all())
            .map_err(io_error(&self.path))
    }

    /// Takes the directory's exclusive lock, blocking until other processes release it. The lock
    /// is held until the returned guard is dropped.
    pub(crate) fn lock(&self) -> Result<DirLock, StateError> {
        let path = self.file(LOCK);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(SECRET_MODE)
            .open(&path)
            .map_err(io_error(&path))?;
        file.lock().map_err(io_error(&path))?;
        Ok(DirLock(file))
    }
}

/// Holds the state directory's lock until dropped.
#[derive(Debug)]
pub(crate) struct DirLock(File);

impl Drop for DirLock {
    fn drop(&mut self) {
        // Closing the file releases the lock anyway; unlocking first just says so.
        if let Err(e) = self.0.unlock() {
            tracing::warn!(error = %e, "cannot unlock the CA state directory");
        }
    }
}

/// How the workload proved its identity for one issuance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum CredentialKind {
    /// A join token.
    JoinToken,
    /// A still-valid certificate of the same identity.
    Renewal,
    /// A Kubernetes service-account token the API server vouched for.
    ServiceAccountToken,
}

/// One line of `issued.jsonl`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct IssuedRecord {
    /// Serial, lowercase hex as shown by [`crate::svid::hex_lower`].
    pub(crate) serial: String,
    pub(crate) spiffe_id: SpiffeId,
    #[serde(with = "time::serde::rfc3339")]
    pub(crate) not_after: OffsetDateTime,
    pub(crate) credential: CredentialKind,
    #[serde(with = "time::serde::rfc3339")]
    pub(crate) issued_at: OffsetDateTime,
    /// The subject of the root the certificate chains to (absent in records written before
    /// root rotation existed): `rotate root --stage remove` waits until no certificate of the
    /// previous root is still valid.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) root: Option<String>,
}

/// The issuance log of earlier versions, read once when the store takes it over.
#[derive(Debug)]
// Only the tests append to it (to make a log to take over).
#[cfg_attr(not(test), allow(dead_code))]
pub(crate) struct IssuanceLog {
    path: PathBuf,
    file: File,
}

impl IssuanceLog {
    /// Opens the log and returns every record in it. The caller holds the directory lock.
    ///
    /// A last line without its newline is the trace of a crash in the middle of an append; the
    /// certificate it describes was never handed out, so the partial line is cut off. Any other
    /// unreadable line is corruption and an error.
    pub(crate) fn open(dir: &StateDir) -> Result<(Self, Vec<IssuedRecord>), StateError> {
        let path = dir.file(ISSUED_LOG);
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .mode(PUBLIC_MODE)
            .open(&path)
            .map_err(io_error(&path))?;
        let mut records = Vec::new();
        let mut complete_len: u64 = 0;
        let mut reader = BufReader::new(&mut file);
        let mut line = String::new();
        loop {
            line.clear();
            let n = reader.read_line(&mut line).map_err(io_error(&path))?;
            if n == 0 || !line.ends_with('\n') {
                break;
            }
            let record = serde_json::from_str(&line).map_err(|e| StateError::Corrupt {
                path: path.clone(),
                reason: format!("line {}: {e}", records.len() + 1),
            })?;
            records.push(record);
            complete_len += n as u64;
        }
        drop(reader);
        let len = file.seek(io::SeekFrom::End(0)).map_err(io_error(&path))?;
        if len != complete_len {
            tracing::warn!(
                path = %path.display(),
                "cutting off an incomplete last line of the issuance log"
            );
            file.set_len(complete_len).map_err(io_error(&path))?;
            file.sync_all().map_err(io_error(&path))?;
        }
        Ok((Self { path, file }, records))
    }

    /// Appends one record and waits until it is on disk (only earlier versions wrote the
    /// log; the tests write one to take over).
    #[cfg(test)]
    pub(crate) fn append(&mut self, record: &IssuedRecord) -> Result<(), StateError> {
        let mut line = serde_json::to_vec(record).map_err(|e| StateError::Corrupt {
            path: self.path.clone(),
            reason: e.to_string(),
        })?;
        line.push(b'\n');
        self.file.write_all(&line).map_err(io_error(&self.path))?;
        self.file.sync_data().map_err(io_error(&self.path))
    }
}

/// Completes what an interrupted rotation command left half done, under the directory lock:
/// - a new issuer whose key was already moved into place gets its certificate moved too; a
///   new issuer not yet moved at all is dropped (the old pair is intact);
/// - a root switch cut short between moving the old root away and the new one in is
///   finished.
pub(crate) fn finish_interrupted_rotation(dir: &StateDir) -> Result<(), StateError> {
    match (dir.exists(NEXT_ISSUER_KEY)?, dir.exists(NEXT_ISSUER_CERT)?) {
        (false, true) => dir.rename(NEXT_ISSUER_CERT, ISSUER_CERT)?,
        (true, _) => {
            dir.remove(NEXT_ISSUER_CERT)?;
            dir.remove(NEXT_ISSUER_KEY)?;
        }
        (false, false) => {}
    }
    if !dir.exists(ROOT_CERT)? && dir.exists(NEXT_ROOT_CERT)? {
        if dir.exists(ROOT_KEY)? && dir.exists(NEXT_ROOT_KEY)? {
            dir.rename(ROOT_KEY, PREV_ROOT_KEY)?;
        }
        if dir.exists(NEXT_ROOT_KEY)? {
            dir.rename(NEXT_ROOT_KEY, ROOT_KEY)?;
        }
        dir.rename(NEXT_ROOT_CERT, ROOT_CERT)?;
        tracing::warn!("finished a root switch that was interrupted");
    }
    Ok(())
}

#[cfg(test)]
mod tests;
