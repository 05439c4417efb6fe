//! Arbitrary request heads through the canonical request: nothing may panic; an accepted head
//! has a canonical path (`/...` or `*` for OPTIONS), ASCII header values without edge
//! whitespace, one host, no CONNECT; and the canonical request is accepted again unchanged.
//!
//! Input: one selector byte (options and version), then `METHOD TARGET`, then header lines
//! `name:value`, separated by `\n`.

#![no_main]

use http::header::{HeaderName, HeaderValue};
use http::{Method, Request, Uri, Version};
use libfuzzer_sys::fuzz_target;
use picket_policy::normalize::{Backslash, EncodedSlashes, PathOptions, PathParams};
use picket_proxy::canonical::{self, canonicalize};
use picket_proxy::config::HttpConfig;

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let mut lines = rest.split(|&b| b == b'\n');
    let Some(first) = lines.next() else { return };
    let Some(space) = first.iter().position(|&b| b == b' ') else {
        return;
    };
    let (Ok(method), Ok(uri)) = (
        Method::from_bytes(&first[..space]),
        Uri::try_from(&first[space + 1..]),
    ) else {
        return;
    };
    let version = if selector & 1 == 0 {
        Version::HTTP_11
    } else {
        Version::HTTP_2
    };
    let mut builder = Request::builder().method(method).uri(uri).version(version);
    for line in lines {
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        if let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(&line[..colon]),
            HeaderValue::from_bytes(&line[colon + 1..]),
        ) {
            builder = builder.header(n, v);
        }
    }
    let Ok(req) = builder.body(()) else { return };
    let (mut parts, ()) = req.into_parts();
    let cfg = HttpConfig {
        path: PathOptions {
            encoded_slashes: [
                EncodedSlashes::Reject,
                EncodedSlashes::Decode,
                EncodedSlashes::Keep,
            ][usize::from((selector >> 1) % 3)],
            backslash: [Backslash::Reject, Backslash::Slash][usize::from((selector >> 3) & 1)],
            path_params: [PathParams::Keep, PathParams::Strip, PathParams::Reject]
                [usize::from((selector >> 4) % 3)],
        },
        allow_header_underscores: selector & 0x80 != 0,
        ..HttpConfig::default()
    };
    let Ok(c) = canonicalize(&mut parts, &cfg) else {
        return;
    };
    assert_ne!(parts.method, Method::CONNECT);
    if c.path == canonical::ASTERISK {
        assert_eq!(parts.method, Method::OPTIONS);
    } else {
        assert!(c.path.starts_with('/'), "{c:?}");
        assert!(!c.path.contains("//"), "{c:?}");
    }
    for (name, value) in &parts.headers {
        let b = value.as_bytes();
        assert!(b.iter().all(|&x| x < 0x80), "{name}: {value:?}");
        assert!(!b.starts_with(b" ") && !b.ends_with(b" "), "{name}: {value:?}");
    }
    assert!(parts.headers.get_all(http::header::HOST).iter().count() <= 1);
    let mut again = parts.clone();
    let c2 = canonicalize(&mut again, &cfg).expect("a canonical request is accepted again");
    assert_eq!(c, c2);
    assert_eq!(again.uri, parts.uri);
    assert_eq!(again.headers, parts.headers);
});
