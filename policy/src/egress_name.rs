//! The name of an egress connection (a destination outside the mesh): the one rule the
//! sidecar reads a TLS ClientHello's SNI and a plaintext HTTP/1 request's `Host` with, and
//! `picket policy explain` checks `--sni` and `--host` with, so the two never disagree on
//! what is a name. A text that is no name leaves the connection without one (its egress
//! decision then sees no name); the error says why.
//!
//! - SNI (RFC 6066 section 3): an ASCII DNS host name, at most one trailing dot (dropped),
//!   labels of 1 to 63 letters, digits, `-` and `_`, 253 bytes at most, lowercased. An IP
//!   literal is not a host name there (RFC 6066 forbids it), nor is a name whose last label
//!   is all digits (a dotted address in some spelling, such as `010.0.0.1`), nor a port.
//! - `Host`: `host[:port]` without user information; the port (digits, at most 65535, or
//!   empty) is dropped; the host is an IPv6 literal in brackets or an IPv4 address, each
//!   written canonically, or a host name by the SNI rule.

use std::net::{Ipv4Addr, Ipv6Addr};

/// Why a text is no name of an egress connection.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NameError {
    /// Nothing (or only a dot).
    #[error("empty")]
    Empty,
    /// A byte that is not ASCII.
    #[error("not ASCII (an internationalized name is sent in its xn-- form)")]
    NotAscii,
    /// Over 253 bytes.
    #[error("longer than 253 bytes")]
    TooLong,
    /// An empty label (`a..b`, `.a`).
    #[error("an empty label")]
    EmptyLabel,
    /// A label over 63 bytes.
    #[error("label {0:?} is longer than 63 bytes")]
    LongLabel(String),
    /// A character other than letters, digits, `-`, `_` and the dots between labels.
    #[error("{0:?} is not a letter, digit, '-', '_' or '.'")]
    Character(char),
    /// An IP address (or a name whose last label is all digits) where only a host name may be.
    #[error("an IP address, not a host name")]
    Address,
    /// A port where only a host name may be (an SNI).
    #[error("a port after the name (a server name has none)")]
    Port,
    /// `user@` before the host (`Host`).
    #[error("user information before the host")]
    UserInfo,
    /// A port that is not at most 5 digits up to 65535 (`Host`).
    #[error("port {0:?} is not a number from 0 to 65535")]
    BadPort(String),
    /// A `[` without its `]`, text after `]` other than a port, or a bracketed text that is
    /// not an IPv6 address (`Host`).
    #[error("a bracketed host that is not [IPv6 address] or [IPv6 address]:port")]
    BadBracket,
}

/// The name an SNI carries: lowercase, without its trailing dot.
pub fn sni_name(bytes: &[u8]) -> Result<String, NameError> {
    let text = std::str::from_utf8(bytes).map_err(|_| NameError::NotAscii)?;
    if !text.is_ascii() {
        return Err(NameError::NotAscii);
    }
    if text.contains(':') {
        // `host:port`, or an IPv6 literal (bracketed or not): no server name.
        let bare = text.trim_start_matches('[').trim_end_matches(']');
        if bare.parse::<Ipv6Addr>().is_ok() {
            return Err(NameError::Address);
        }
        return Err(NameError::Port);
    }
    dns_name(text)
}

/// The host a `Host` header value names: a host name as [`sni_name`] reads it, or an IP
/// address, written canonically (IPv6 without brackets); any port is dropped.
pub fn host_header_name(bytes: &[u8]) -> Result<String, NameError> {
    let text = std::str::from_utf8(bytes).map_err(|_| NameError::NotAscii)?;
    if !text.is_ascii() {
        return Err(NameError::NotAscii);
    }
    if text.contains('@') {
        return Err(NameError::UserInfo);
    }
    let (host, port) = if let Some(rest) = text.strip_prefix('[') {
        let (inside, after) = rest.split_once(']').ok_or(NameError::BadBracket)?;
        let ip: Ipv6Addr = inside.parse().map_err(|_| NameError::BadBracket)?;
        let port = match after {
            "" => None,
            _ => Some(after.strip_prefix(':').ok_or(NameError::BadBracket)?),
        };
        (Host::Ip(ip.to_string()), port)
    } else {
        let (host, port) = match text.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (text, None),
        };
        match host.parse::<Ipv4Addr>() {
            Ok(ip) => (Host::Ip(ip.to_string()), port),
            Err(_) => (Host::Name(host), port),
        }
    };
    if let Some(p) = port {
        let digits = p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit());
        if !(p.is_empty() || digits && p.parse::<u16>().is_ok()) {
            return Err(NameError::BadPort(p.to_owned()));
        }
    }
    match host {
        Host::Ip(ip) => Ok(ip),
        Host::Name(name) => dns_name(name),
    }
}

/// A `Host`'s host before it is checked.
enum Host<'a> {
    Ip(String),
    Name(&'a str),
}

/// The DNS host name rule both readers share (see the module).
fn dns_name(text: &str) -> Result<String, NameError> {
    let text = text.strip_suffix('.').unwrap_or(text);
    if text.is_empty() {
        return Err(NameError::Empty);
    }
    if text.len() > 253 {
        return Err(NameError::TooLong);
    }
    let mut last = "";
    for label in text.split('.') {
        if label.is_empty() {
            return Err(NameError::EmptyLabel);
        }
        if label.len() > 63 {
            return Err(NameError::LongLabel(label.to_owned()));
        }
        if let Some(c) = label
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '_'))
        {
            return Err(NameError::Character(c));
        }
        last = label;
    }
    if last.bytes().all(|b| b.is_ascii_digit()) {
        return Err(NameError::Address);
    }
    Ok(text.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_names_are_host_names_only() {
        assert_eq!(sni_name(b"Api.Example.COM."), Ok("api.example.com".into()));
        assert_eq!(sni_name(b"_svc.x-1.example"), Ok("_svc.x-1.example".into()));
        for (bad, why) in [
            (&b""[..], NameError::Empty),
            (b".", NameError::Empty),
            (b"a..example", NameError::EmptyLabel),
            (b".example", NameError::EmptyLabel),
            (b"example..", NameError::EmptyLabel),
            (b"a example", NameError::Character(' ')),
            (b"10.0.0.1", NameError::Address),
            (b"010.0.0.1", NameError::Address),
            (b"::1", NameError::Address),
            (b"[::1]", NameError::Address),
            (b"example.com:443", NameError::Port),
            ("bücher.example".as_bytes(), NameError::NotAscii),
            (b"\xff.example", NameError::NotAscii),
        ] {
            assert_eq!(
                sni_name(bad),
                Err(why),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        let long = "a".repeat(64);
        assert_eq!(
            sni_name(format!("{long}.example").as_bytes()),
            Err(NameError::LongLabel(long))
        );
        let labels = vec!["abcdefghi"; 26].join(".");
        assert_eq!(sni_name(labels.as_bytes()), Err(NameError::TooLong));
        assert!(sni_name(labels[..253].trim_end_matches('.').as_bytes()).is_ok());
    }

    #[test]
    fn a_host_header_names_a_host_name_or_an_address_without_its_port() {
        for (host, want) in [
            (&b"Example.COM:8080"[..], "example.com"),
            (b"example.com.", "example.com"),
            (b"example.com:", "example.com"),
            (b"10.0.0.1", "10.0.0.1"),
            (b"10.0.0.1:80", "10.0.0.1"),
            (b"[::1]:80", "::1"),
            (b"[0:0::1]", "::1"),
        ] {
            assert_eq!(
                host_header_name(host),
                Ok(want.to_owned()),
                "{:?}",
                String::from_utf8_lossy(host)
            );
        }
        for (bad, why) in [
            (&b""[..], NameError::Empty),
            (b":80", NameError::Empty),
            (b"u@a.example", NameError::UserInfo),
            (b"a.example:http", NameError::BadPort("http".into())),
            (b"a.example:65536", NameError::BadPort("65536".into())),
            (b"a.example:1:2", NameError::BadPort("1:2".into())),
            (b"[::1", NameError::BadBracket),
            (b"[::1]x", NameError::BadBracket),
            (b"[a.example]", NameError::BadBracket),
            (b"::1", NameError::BadPort(":1".into())),
            (b"010.0.0.1", NameError::Address),
            ("bücher.example".as_bytes(), NameError::NotAscii),
            (b"a b", NameError::Character(' ')),
        ] {
            assert_eq!(
                host_header_name(bad),
                Err(why),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}
