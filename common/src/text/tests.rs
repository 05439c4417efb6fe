#![allow(clippy::unwrap_used)]

use super::{TextError, read_text};

#[test]
fn reads_text_within_the_limit() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.yaml");
    std::fs::write(&path, "key: value\n").unwrap();
    assert_eq!(read_text(&path, 11).unwrap(), "key: value\n");
}

#[test]
fn refuses_a_file_over_the_limit() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.yaml");
    std::fs::write(&path, vec![b'#'; 12]).unwrap();
    let err = read_text(&path, 11).unwrap_err();
    assert!(matches!(err, TextError::TooLarge { limit: 11 }), "{err}");
}

#[test]
fn names_the_offset_of_invalid_utf8() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.yaml");
    std::fs::write(&path, b"key: \xff\n").unwrap();
    let err = read_text(&path, 100).unwrap_err();
    assert_eq!(err.to_string(), "not UTF-8: invalid byte at offset 5");
}
