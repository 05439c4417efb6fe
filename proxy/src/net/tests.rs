use super::*;

#[test]
fn classifies_http_and_opaque_prefixes() {
    assert_eq!(classify(b"GET / HTTP/1.1\r\n"), Some(Detected::Http));
    assert_eq!(classify(b"PRI * HTTP/2.0\r\n"), Some(Detected::Http));
    assert_eq!(classify(b"POS"), None);
    assert_eq!(classify(b"\x16\x03\x01"), Some(Detected::Opaque));
    assert_eq!(classify(b"SSH-2.0-"), Some(Detected::Opaque));
    assert_eq!(classify(b"GETX"), Some(Detected::Opaque));
}
