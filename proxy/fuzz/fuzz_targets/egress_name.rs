//! Arbitrary first bytes of an egress connection through the name readers (TLS ClientHello
//! SNI, also split across records and with Encrypted ClientHello; HTTP/1 Host): nothing may
//! panic; a name is a non-empty lowercase host name or IP literal; only a ClientHello says
//! ECH (with a name or without); and bytes after the message never change a name or an ECH
//! offer once it was read (the reader stops at the end of the ClientHello or request head).

#![no_main]

use libfuzzer_sys::fuzz_target;
use picket_proxy::outbound::egress::{NameSource, Parsed, server_name};

fuzz_target!(|data: &[u8]| {
    let (parsed, source) = server_name(data);
    if parsed == Parsed::EchWithoutName {
        assert_eq!(source, NameSource::Sni, "ECH from a Host header");
        let mut longer = data.to_vec();
        longer.extend_from_slice(b"\x16\r\n\r\nHost: other.example\r\n\r\n");
        assert_eq!(server_name(&longer), (parsed.clone(), source));
    }
    if let Parsed::Name { name, ech } = &parsed {
        assert!(!name.is_empty());
        assert!(!ech || source == NameSource::Sni, "ECH from a Host header");
        assert!(
            name.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b".-_:".contains(&b)),
            "{name:?}"
        );
        let mut longer = data.to_vec();
        longer.extend_from_slice(b"\x16\r\n\r\nHost: other.example\r\n\r\n");
        assert_eq!(server_name(&longer), (parsed.clone(), source));
    }
});
