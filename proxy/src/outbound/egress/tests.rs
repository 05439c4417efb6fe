#![allow(clippy::unwrap_used, clippy::cast_possible_truncation)]

use std::sync::Arc;

use super::*;

fn named(name: &str) -> Parsed {
    Parsed::Name {
        name: name.into(),
        ech: false,
    }
}

/// The first flight of a real rustls client asking for `name`.
fn client_hello(name: &str) -> Vec<u8> {
    let provider = picket_common::crypto::provider();
    let config = rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
    first_flight(config, name)
}

/// The first flight of a real rustls client offering ECH (GREASE: an outer ClientHello with
/// an `encrypted_client_hello` extension, as a client without the server's ECH config sends)
/// with `name` as its outer name.
fn ech_client_hello(name: &str) -> Vec<u8> {
    use rustls::client::{EchGreaseConfig, EchMode};
    use rustls::crypto::hpke::Hpke as _;
    let provider = picket_common::crypto::provider();
    let suite = rustls::crypto::aws_lc_rs::hpke::DH_KEM_X25519_HKDF_SHA256_AES_128;
    let (public, _) = suite.generate_key_pair().unwrap();
    let config = rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_ech(EchMode::Grease(EchGreaseConfig::new(suite, public)))
        .unwrap()
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
    first_flight(config, name)
}

fn first_flight(config: rustls::ClientConfig, name: &str) -> Vec<u8> {
    let server = rustls::pki_types::ServerName::try_from(name.to_owned()).unwrap();
    let mut conn = rustls::ClientConnection::new(Arc::new(config), server).unwrap();
    let mut out = Vec::new();
    while conn.wants_write() {
        conn.write_tls(&mut out).unwrap();
    }
    out
}

#[test]
fn a_real_client_hello_names_its_server() {
    let hello = client_hello("API.Example.com");
    assert!(hello.len() > 100, "rustls wrote a ClientHello");
    assert_eq!(client_hello_sni(&hello), named("api.example.com"));
    // Every strict prefix needs more, never a wrong answer.
    for cut in 0..hello.len() {
        assert_eq!(
            client_hello_sni(&hello[..cut]),
            Parsed::NeedMore,
            "prefix of {cut} bytes"
        );
    }
    // Bytes after the record (the client's next records) change nothing.
    let mut more = hello.clone();
    more.extend_from_slice(&[0x17, 0x03, 0x03, 0x00, 0x01, 0x00]);
    assert_eq!(
        server_name(&more),
        (named("api.example.com"), NameSource::Sni)
    );
}

/// `hello` (one handshake record) re-cut into records of at most `size` bytes of handshake
/// data each, as a client may send it (RFC 8446 section 5.1).
fn fragmented(hello: &[u8], size: usize) -> Vec<u8> {
    let (header, message) = hello.split_at(5);
    let mut out = Vec::new();
    for chunk in message.chunks(size) {
        out.extend_from_slice(&header[..3]);
        out.extend_from_slice(&(chunk.len() as u16).to_be_bytes());
        out.extend_from_slice(chunk);
    }
    out
}

#[test]
fn a_client_hello_split_across_records_is_reassembled() {
    let hello = client_hello("split.example.com");
    for size in [1, 3, 4, 5, 100, 512, hello.len() - 6] {
        let split = fragmented(&hello, size);
        assert!(split.len() > hello.len(), "{size}: several records");
        assert_eq!(
            client_hello_sni(&split),
            named("split.example.com"),
            "records of {size} bytes"
        );
        // Every strict prefix needs more: a record header or a fragment still to come.
        for cut in (0..split.len()).step_by(7) {
            assert_eq!(
                client_hello_sni(&split[..cut]),
                Parsed::NeedMore,
                "records of {size} bytes cut at {cut}"
            );
        }
    }
    // The largest split that fits the peek (16,389 bytes) is read; the rest needs more than
    // the peek holds, so `peek_name` gives up on it.
    let small = fragmented(&hello, 64);
    assert!(small.len() <= EGRESS_PEEK_BYTES);
    assert_eq!(client_hello_sni(&small), named("split.example.com"));
    // Another record type between the fragments, or an empty fragment: no name.
    let split = fragmented(&hello, 512);
    let mut alert = split[..517].to_vec();
    alert.extend_from_slice(&[0x15, 0x03, 0x03, 0x00, 0x02, 0x01, 0x00]);
    alert.extend_from_slice(&split[517..]);
    assert_eq!(client_hello_sni(&alert), Parsed::NoName);
    let mut empty = split[..517].to_vec();
    empty.extend_from_slice(&[0x16, 0x03, 0x03, 0x00, 0x00]);
    empty.extend_from_slice(&split[517..]);
    assert_eq!(client_hello_sni(&empty), Parsed::NoName);
}

#[test]
fn an_encrypted_client_hello_gives_its_outer_name_and_says_ech() {
    let hello = ech_client_hello("public.example.net");
    assert_eq!(
        client_hello_sni(&hello),
        Parsed::Name {
            name: "public.example.net".into(),
            ech: true
        }
    );
    assert_eq!(
        client_hello_sni(&fragmented(&hello, 200)),
        Parsed::Name {
            name: "public.example.net".into(),
            ech: true
        }
    );
    // Hand-made: a well-formed outer extension; an inner one, an empty one, a short one and
    // two of them are malformed.
    let outer = |kind: u8, payload: &[u8]| {
        let mut ext = vec![kind, 0x00, 0x01, 0x00, 0x01, 0x2a, 0x00, 0x02, 0xaa, 0xbb];
        ext.extend_from_slice(&(payload.len() as u16).to_be_bytes());
        ext.extend_from_slice(payload);
        ext
    };
    let sni = (0u16, sni_ext(&[(0, b"cover.example")]));
    assert_eq!(
        client_hello_sni(&hello_with(&[sni.clone(), (0xfe0d, outer(0, b"sealed"))])),
        Parsed::Name {
            name: "cover.example".into(),
            ech: true
        }
    );
    for bad in [
        hello_with(&[sni.clone(), (0xfe0d, outer(1, b"sealed"))]),
        hello_with(&[sni.clone(), (0xfe0d, outer(0, b""))]),
        hello_with(&[sni.clone(), (0xfe0d, Vec::new())]),
        hello_with(&[sni.clone(), (0xfe0d, vec![0, 0, 1])]),
        hello_with(&[
            sni.clone(),
            (0xfe0d, outer(0, b"a")),
            (0xfe0d, outer(0, b"b")),
        ]),
    ] {
        assert_eq!(client_hello_sni(&bad), Parsed::NoName);
    }
    // ECH without an outer name: no name to record, and the ECH offer is seen all the same;
    // a malformed extension still makes the whole ClientHello malformed.
    assert_eq!(
        client_hello_sni(&hello_with(&[(0xfe0d, outer(0, b"sealed"))])),
        Parsed::EchWithoutName
    );
    assert_eq!(
        client_hello_sni(&fragmented(
            &hello_with(&[(0x000a, vec![0, 2, 0, 0x1d]), (0xfe0d, outer(0, b"sealed"))]),
            20
        )),
        Parsed::EchWithoutName
    );
    for bad in [outer(1, b"sealed"), outer(0, b""), vec![0, 0, 1]] {
        assert_eq!(
            client_hello_sni(&hello_with(&[(0xfe0d, bad)])),
            Parsed::NoName
        );
    }
}

#[test]
fn a_real_encrypted_client_hello_to_an_address_says_ech_without_a_name() {
    // rustls sends no SNI for an IP address, and offers ECH all the same.
    let hello = ech_client_hello("203.0.113.9");
    assert_eq!(client_hello_sni(&hello), Parsed::EchWithoutName);
    assert_eq!(
        client_hello_sni(&fragmented(&hello, 100)),
        Parsed::EchWithoutName
    );
    for cut in 0..hello.len() {
        assert_eq!(client_hello_sni(&hello[..cut]), Parsed::NeedMore, "{cut}");
    }
}

#[test]
fn a_client_hello_to_an_address_has_no_name() {
    // rustls sends no SNI for an IP address.
    assert_eq!(
        client_hello_sni(&client_hello("203.0.113.9")),
        Parsed::NoName
    );
}

#[test]
fn malformed_client_hellos_have_no_name() {
    let hello = client_hello("api.example.com");
    // Every single-byte change gives some answer and never panics.
    for i in 0..hello.len() {
        for delta in [1u8, 0x80] {
            let mut bad = hello.clone();
            bad[i] = bad[i].wrapping_add(delta);
            let _ = client_hello_sni(&bad);
        }
    }
    let mut not_handshake = hello.clone();
    not_handshake[0] = 0x17;
    assert_eq!(client_hello_sni(&not_handshake), Parsed::NoName);
    let mut server_hello = hello.clone();
    server_hello[5] = 0x02;
    assert_eq!(client_hello_sni(&server_hello), Parsed::NoName);
    // A handshake longer than its record: the rest may come in the next record.
    let mut split = hello.clone();
    split[7] = split[7].wrapping_add(1);
    assert_eq!(client_hello_sni(&split), Parsed::NeedMore);
    // ... but not in a record of another type.
    split.extend_from_slice(&[0x17, 0x03, 0x03, 0x00, 0x01, 0x00]);
    assert_eq!(client_hello_sni(&split), Parsed::NoName);
    assert_eq!(client_hello_sni(&[0x16, 0x03, 0x05]), Parsed::NoName);
    assert_eq!(
        client_hello_sni(&[0x16, 0x03, 0x01, 0x00, 0x00]),
        Parsed::NoName
    );
    assert_eq!(client_hello_sni(b"SSH-2.0-OpenSSH_9.6\r\n"), Parsed::NoName);
}

/// A minimal ClientHello with `extensions` (each `(type, data)`).
fn hello_with(extensions: &[(u16, Vec<u8>)]) -> Vec<u8> {
    let mut ext = Vec::new();
    for (kind, data) in extensions {
        ext.extend_from_slice(&kind.to_be_bytes());
        ext.extend_from_slice(&(data.len() as u16).to_be_bytes());
        ext.extend_from_slice(data);
    }
    let mut body = vec![0x03, 0x03];
    body.extend_from_slice(&[7u8; 32]);
    body.extend_from_slice(&[0, 0, 2, 0x13, 0x01, 1, 0]);
    body.extend_from_slice(&(ext.len() as u16).to_be_bytes());
    body.extend_from_slice(&ext);
    let mut hs = vec![0x01, 0, (body.len() >> 8) as u8, body.len() as u8];
    hs.extend_from_slice(&body);
    let mut rec = vec![0x16, 0x03, 0x01, (hs.len() >> 8) as u8, hs.len() as u8];
    rec.extend_from_slice(&hs);
    rec
}

fn sni_ext(names: &[(u8, &[u8])]) -> Vec<u8> {
    let mut list = Vec::new();
    for (kind, name) in names {
        list.push(*kind);
        list.extend_from_slice(&(name.len() as u16).to_be_bytes());
        list.extend_from_slice(name);
    }
    let mut data = (list.len() as u16).to_be_bytes().to_vec();
    data.extend_from_slice(&list);
    data
}

#[test]
fn server_name_extensions_are_read_strictly() {
    let ok = hello_with(&[
        (10, vec![0, 2, 0, 29]),
        (0, sni_ext(&[(0, b"db.example.org.")])),
    ]);
    assert_eq!(client_hello_sni(&ok), named("db.example.org"));
    let none = hello_with(&[(10, vec![0, 2, 0, 29])]);
    assert_eq!(client_hello_sni(&none), Parsed::NoName);
    for bad in [
        // Two server_name extensions, two host names, bad names, an empty list, a short one.
        hello_with(&[
            (0, sni_ext(&[(0, b"a.example")])),
            (0, sni_ext(&[(0, b"b.example")])),
        ]),
        hello_with(&[(0, sni_ext(&[(0, b"a.example"), (0, b"b.example")]))]),
        hello_with(&[(0, sni_ext(&[(0, b"a example")]))]),
        hello_with(&[(0, sni_ext(&[(0, b"")]))]),
        hello_with(&[(0, sni_ext(&[(0, b"a..example")]))]),
        hello_with(&[(0, sni_ext(&[]))]),
        hello_with(&[(0, vec![0, 9, 0])]),
    ] {
        assert_eq!(client_hello_sni(&bad), Parsed::NoName);
    }
}

#[test]
fn plaintext_http1_requests_name_their_host() {
    let head = b"GET /v1/x HTTP/1.1\r\nUser-Agent: t\r\nHost: Example.COM:8080\r\n\r\n";
    assert_eq!(http1_host(head), named("example.com"));
    assert_eq!(server_name(head), (named("example.com"), NameSource::Host));
    for cut in 0..head.len() {
        assert_eq!(http1_host(&head[..cut]), Parsed::NeedMore, "prefix {cut}");
    }
    assert_eq!(
        http1_host(b"GET / HTTP/1.1\r\nHost: [::1]:80\r\n\r\n"),
        named("::1")
    );
    assert_eq!(
        http1_host(b"GET / HTTP/1.1\r\nHost: 10.0.0.1\r\n\r\n"),
        named("10.0.0.1")
    );
    for bad in [
        &b"GET / HTTP/1.1\r\nHost: a.example\r\nHost: b.example\r\n\r\n"[..],
        b"GET / HTTP/1.1\r\nX: y\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: u@a.example\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost:\r\n\r\n",
        b"GET / HTTP/1.1\r\nHo st: x\r\n\r\n",
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
        b"SSH-2.0-OpenSSH_9.6\r\n",
        b"\x00\x01",
    ] {
        assert_eq!(
            http1_host(bad),
            Parsed::NoName,
            "{:?}",
            String::from_utf8_lossy(bad)
        );
    }
}

#[tokio::test]
async fn peeking_consumes_nothing_and_bounds_the_wait() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let hello = client_hello("api.example.com");
    let sent = hello.clone();
    let client = tokio::spawn(async move {
        let mut c = TcpStream::connect(addr).await.unwrap();
        // Two writes: the parser must wait for the rest of the record.
        let (a, b) = sent.split_at(40);
        c.write_all(a).await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
        c.write_all(b).await.unwrap();
        c
    });
    let (mut server, _) = listener.accept().await.unwrap();
    let name = peek_name(&server, Duration::from_secs(5)).await;
    assert_eq!(
        name,
        Asked {
            name: Some(ServerName {
                source: NameSource::Sni,
                name: "api.example.com".into(),
            }),
            ech: false,
        }
    );
    let mut got = vec![0u8; hello.len()];
    server.read_exact(&mut got).await.unwrap();
    assert_eq!(got, hello, "the peeked bytes are still there, unchanged");
    let _client = client.await.unwrap();

    // A client that waits for the server: no name once the wait is over.
    let silent = TcpStream::connect(addr).await.unwrap();
    let (server, _) = listener.accept().await.unwrap();
    let start = std::time::Instant::now();
    assert_eq!(
        peek_name(&server, Duration::from_millis(50)).await,
        Asked::default()
    );
    assert!(start.elapsed() < Duration::from_secs(2));
    drop(silent);
}

#[test]
fn the_fuzz_seeds_are_read_as_meant() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds/egress_name");
    let ech = Parsed::Name {
        name: "public.example.net".into(),
        ech: true,
    };
    for (file, want) in [
        ("http1", named("api.example.com")),
        ("tls_one_record", named("api.example.com")),
        ("tls_split_records", named("api.example.com")),
        ("tls_ech_outer", ech),
        ("tls_ech_no_name", Parsed::EchWithoutName),
    ] {
        let bytes = std::fs::read(dir.join(file)).unwrap();
        assert_eq!(server_name(&bytes).0, want, "{file}");
    }
}

#[tokio::test]
async fn peeking_sees_an_ech_offer_without_a_name() {
    use tokio::io::AsyncWriteExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let hello = ech_client_hello("203.0.113.9");
    let mut client = TcpStream::connect(addr).await.unwrap();
    client.write_all(&hello).await.unwrap();
    let (server, _) = listener.accept().await.unwrap();
    assert_eq!(
        peek_name(&server, Duration::from_secs(5)).await,
        Asked {
            name: None,
            ech: true,
        }
    );
}

/// Edge names read by the sidecar (from an SNI and from a `Host`) and decided by an egress
/// policy, beside what `picket policy explain --sni/--host` makes of the same text (the one
/// rule in `picket_policy::egress_name`): a text explain refuses is one the sidecar reads no
/// name from, and a name explain accepts is read and decided alike.
#[test]
fn edge_names_are_read_and_decided_as_explain_reads_them() {
    use picket_policy::egress_name::{host_header_name, sni_name};
    use picket_policy::{DefaultAction, EgressRequest, LoadOptions, Source, Verdict, Workload};
    let text = "apiVersion: picket.dev/v1\nkind: AuthorizationPolicy\nmetadata: { name: out, namespace: shop }\nspec:\n  direction: egress\n  rules:\n  - to: [{ operation: { hosts: [\"api.example.com\", \"10.0.0.1\"] } }]\n";
    let set = picket_policy::load(
        &[Source {
            name: "egress.yaml",
            text,
        }],
        &LoadOptions::default(),
    )
    .unwrap();
    let policies = set.for_workload(&Workload {
        namespace: "shop".into(),
        labels: Default::default(),
    });
    let decide = |name: Option<&str>, sni: bool| {
        let req = EgressRequest {
            ip: "203.0.113.9".parse().unwrap(),
            port: 443,
            name,
            sni: name.filter(|_| sni),
        };
        let decided = policies.evaluate_egress(&req, DefaultAction::Allow).verdict;
        let explained = policies
            .explain_egress(&req, DefaultAction::Allow)
            .decision
            .verdict;
        assert_eq!(decided, explained, "{name:?}");
        decided
    };
    let long_label = format!("{}.example.com", "a".repeat(64));
    // (text, the name read from an SNI, from a Host; allowed by name?)
    let cases: [(&str, Option<&str>, Option<&str>); 10] = [
        (
            "Api.Example.COM.",
            Some("api.example.com"),
            Some("api.example.com"),
        ),
        (
            "API.EXAMPLE.COM",
            Some("api.example.com"),
            Some("api.example.com"),
        ),
        ("api.example.com:443", None, Some("api.example.com")),
        ("10.0.0.1", None, Some("10.0.0.1")),
        ("010.0.0.1", None, None),
        ("[::1]:8443", None, Some("::1")),
        ("", None, None),
        ("bücher.example", None, None),
        (&long_label, None, None),
        ("api..example.com", None, None),
    ];
    for (raw, want_sni, want_host) in cases {
        let hello = hello_with(&[(0, sni_ext(&[(0, raw.as_bytes())]))]);
        let read_sni = match client_hello_sni(&hello) {
            Parsed::Name { name, .. } => Some(name),
            _ => None,
        };
        let head = format!("GET / HTTP/1.1\r\nHost: {raw}\r\n\r\n");
        let read_host = match http1_host(head.as_bytes()) {
            Parsed::Name { name, .. } => Some(name),
            _ => None,
        };
        assert_eq!(read_sni.as_deref(), want_sni, "SNI {raw:?}");
        assert_eq!(read_host.as_deref(), want_host, "Host {raw:?}");
        assert_eq!(
            sni_name(raw.as_bytes()).ok(),
            read_sni,
            "explain --sni {raw:?}"
        );
        assert_eq!(
            host_header_name(raw.as_bytes()).ok(),
            read_host,
            "explain --host {raw:?}"
        );
        // The decision: only the allowed names pass; a connection without a name does not.
        let allowed =
            |n: &Option<String>| matches!(n.as_deref(), Some("api.example.com" | "10.0.0.1"));
        let want = |n: &Option<String>| {
            if allowed(n) {
                Verdict::Allow
            } else {
                Verdict::Deny
            }
        };
        assert_eq!(
            decide(read_sni.as_deref(), true),
            want(&read_sni),
            "{raw:?}"
        );
        assert_eq!(
            decide(read_host.as_deref(), false),
            want(&read_host),
            "{raw:?}"
        );
    }
}
