#![allow(clippy::unwrap_used)]
use super::*;

fn record(serial: &str) -> IssuedRecord {
    IssuedRecord {
        serial: serial.into(),
        spiffe_id: "spiffe://example.org/ns/a/sa/b".parse().unwrap(),
        not_after: OffsetDateTime::UNIX_EPOCH,
        credential: CredentialKind::JoinToken,
        issued_at: OffsetDateTime::UNIX_EPOCH,
        root: None,
    }
}

#[test]
fn atomic_write_replaces_content_and_sets_mode() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("secret");
    write_file_atomic(&path, b"one", SECRET_MODE).unwrap();
    write_file_atomic(&path, b"two", SECRET_MODE).unwrap();
    assert_eq!(fs::read(&path).unwrap(), b"two");
    let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let names: Vec<_> = fs::read_dir(dir.path()).unwrap().collect();
    assert_eq!(names.len(), 1, "no temporary file is left behind");
}

#[test]
fn issuance_log_survives_reopen_and_cuts_a_torn_last_line() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = StateDir::create(tmp.path()).unwrap();
    let (mut log, records) = IssuanceLog::open(&dir).unwrap();
    assert!(records.is_empty());
    log.append(&record("01")).unwrap();
    log.append(&record("02")).unwrap();
    drop(log);
    let mut raw = OpenOptions::new()
        .append(true)
        .open(dir.file(ISSUED_LOG))
        .unwrap();
    raw.write_all(b"{\"serial\":\"03\",").unwrap();
    drop(raw);

    let (mut log, records) = IssuanceLog::open(&dir).unwrap();
    let serials: Vec<_> = records.iter().map(|r| r.serial.as_str()).collect();
    assert_eq!(serials, ["01", "02"]);
    log.append(&record("04")).unwrap();
    drop(log);
    let (_, records) = IssuanceLog::open(&dir).unwrap();
    let serials: Vec<_> = records.iter().map(|r| r.serial.as_str()).collect();
    assert_eq!(serials, ["01", "02", "04"]);
}

#[test]
fn corrupt_log_line_is_an_error() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = StateDir::create(tmp.path()).unwrap();
    fs::write(dir.file(ISSUED_LOG), b"not json\n").unwrap();
    assert!(matches!(
        IssuanceLog::open(&dir),
        Err(StateError::Corrupt { .. })
    ));
}
