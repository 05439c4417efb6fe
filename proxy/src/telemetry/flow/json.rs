//! The flow record's JSON line, written field by field.
//!
//! The bytes are those serde_json writes for the derived `Serialize` of [`FlowRecord`] (what
//! `picket analyze` and the detectors' baseline loader read back), so the writer thread does
//! not pay what the derived path costs per record: the `time` crate's generic RFC 3339
//! formatter and its `String`, the socket addresses through `core::fmt`, the key of every
//! field escaped byte by byte, and every string value scanned byte by byte. Here keys are
//! constants, the timestamp and IPv4 addresses are written digit by digit, and a string value
//! is checked 16 bytes at a time for the bytes JSON escapes (`"`, `\` and the control bytes
//! below 0x20): a clean one is copied as it is, any other goes to serde_json's own escaper.
//! Numbers use serde_json's own formatter (itoa, and zmij for `duration_ms`; a non-finite one
//! is `null`, as serde_json writes it). The unit tests compare the two outputs byte for byte
//! on adversarial records (quotes, control bytes, non-ASCII, U+2028, IPv6 with scope IDs,
//! timestamps with offsets and sub-second digits, non-finite durations).

use std::io::{self, Write as _};
use std::net::SocketAddr;

use serde::Serialize;
use serde_json::ser::{CompactFormatter, Formatter as _};
use time::OffsetDateTime;

use super::{FlowRecord, Verdict};

impl FlowRecord<'_> {
    /// Appends the record to `out` as one JSON object (no newline): the same bytes as
    /// `serde_json::to_writer(out, self)`. On an error (a timestamp without an RFC 3339 form:
    /// a year outside 0..=9999 or an offset with seconds, which serde refuses too) nothing is
    /// appended.
    pub fn write_json(&self, out: &mut Vec<u8>) -> io::Result<()> {
        let start = out.len();
        let written = self.write_fields(out);
        if written.is_err() {
            out.truncate(start);
        }
        written
    }

    fn write_fields(&self, out: &mut Vec<u8>) -> io::Result<()> {
        out.extend_from_slice(b"{\"type\":");
        word(out, self.line_type.as_str());
        out.extend_from_slice(b",\"ts\":\"");
        rfc3339(out, self.ts)?;
        out.extend_from_slice(b"\",\"direction\":");
        word(out, self.direction.as_str());
        out.extend_from_slice(b",\"protocol\":");
        word(out, self.protocol.as_str());
        if let Some(p) = self.phase {
            out.extend_from_slice(b",\"phase\":");
            word(out, p.as_str());
        }
        opt_str(
            out,
            b",\"source_identity\":",
            self.source_identity.as_deref(),
        )?;
        opt_addr(out, b",\"source_address\":", self.source_address)?;
        opt_str(
            out,
            b",\"destination_identity\":",
            self.destination_identity.as_deref(),
        )?;
        opt_str(
            out,
            b",\"expected_identity\":",
            self.expected_identity.as_deref(),
        )?;
        opt_addr(out, b",\"destination_address\":", self.destination_address)?;
        if let Some(p) = self.destination_port {
            out.extend_from_slice(b",\"destination_port\":");
            CompactFormatter.write_u16(out, p)?;
        }
        opt_addr(out, b",\"endpoint\":", self.endpoint)?;
        opt_str(out, b",\"kx\":", self.kx.as_deref())?;
        opt_str(out, b",\"method\":", self.method.as_deref())?;
        opt_str(out, b",\"path\":", self.path.as_deref())?;
        opt_str(out, b",\"host\":", self.host.as_deref())?;
        opt_str(out, b",\"sni\":", self.sni.as_deref())?;
        if self.ech {
            out.extend_from_slice(b",\"ech\":true");
        }
        if let Some(s) = self.status {
            out.extend_from_slice(b",\"status\":");
            CompactFormatter.write_u16(out, s)?;
        }
        if let Some(s) = self.grpc_status {
            out.extend_from_slice(b",\"grpc_status\":");
            CompactFormatter.write_u32(out, s)?;
        }
        opt_verdict(out, b",\"verdict\":", self.verdict);
        opt_str(out, b",\"policy\":", self.policy.as_deref())?;
        if let Some(r) = self.rule {
            out.extend_from_slice(b",\"rule\":");
            CompactFormatter.write_u32(out, r)?;
        }
        opt_str(out, b",\"reason\":", self.reason.as_deref())?;
        if !self.dry_run.is_empty() {
            out.extend_from_slice(b",\"dry_run\":[");
            for (i, s) in self.dry_run.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                string(out, s)?;
            }
            out.push(b']');
        }
        opt_verdict(out, b",\"would_verdict\":", self.would_verdict);
        out.extend_from_slice(b",\"bytes_in\":");
        CompactFormatter.write_u64(out, self.bytes_in)?;
        out.extend_from_slice(b",\"bytes_out\":");
        CompactFormatter.write_u64(out, self.bytes_out)?;
        out.extend_from_slice(b",\"duration_ms\":");
        if self.duration_ms.is_finite() {
            CompactFormatter.write_f64(out, self.duration_ms)?;
        } else {
            out.extend_from_slice(b"null");
        }
        opt_str(out, b",\"trace_id\":", self.trace_id.as_deref())?;
        opt_str(out, b",\"span_id\":", self.span_id.as_deref())?;
        opt_str(out, b",\"parent_span_id\":", self.parent_span_id.as_deref())?;
        opt_str(out, b",\"request_id\":", self.request_id.as_deref())?;
        opt_str(
            out,
            b",\"request_principal\":",
            self.request_principal.as_deref(),
        )?;
        opt_str(out, b",\"token_error\":", self.token_error.as_deref())?;
        if self.sidecar_answer {
            out.extend_from_slice(b",\"sidecar_answer\":true");
        }
        out.push(b'}');
        Ok(())
    }
}

/// A word from a fixed set of plain ASCII (a tag, an enum's wire name), quoted.
fn word(out: &mut Vec<u8>, w: &str) {
    out.push(b'"');
    out.extend_from_slice(w.as_bytes());
    out.push(b'"');
}

fn opt_str(out: &mut Vec<u8>, key: &[u8], value: Option<&str>) -> io::Result<()> {
    match value {
        Some(v) => {
            out.extend_from_slice(key);
            string(out, v)
        }
        None => Ok(()),
    }
}

fn opt_addr(out: &mut Vec<u8>, key: &[u8], value: Option<SocketAddr>) -> io::Result<()> {
    match value {
        Some(a) => {
            out.extend_from_slice(key);
            addr(out, a)
        }
        None => Ok(()),
    }
}

fn opt_verdict(out: &mut Vec<u8>, key: &[u8], value: Option<Verdict>) {
    if let Some(v) = value {
        out.extend_from_slice(key);
        word(out, v.as_str());
    }
}

/// A JSON string: copied as it is when nothing in it needs an escape, else through
/// serde_json's escaper.
fn string(out: &mut Vec<u8>, s: &str) -> io::Result<()> {
    if plain(s.as_bytes()) {
        out.reserve(s.len() + 2);
        word(out, s);
        Ok(())
    } else {
        s.serialize(&mut serde_json::Serializer::new(&mut *out))
            .map_err(io::Error::from)
    }
}

/// Whether no byte of `b` is one serde_json escapes (`"`, `\`, below 0x20; it leaves DEL and
/// non-ASCII as they are). Checked 16 bytes at a time without an early exit inside a block,
/// which the compiler turns into vector compares.
fn plain(b: &[u8]) -> bool {
    fn escaped(x: u8) -> bool {
        x < 0x20 || x == b'"' || x == b'\\'
    }
    let mut blocks = b.chunks_exact(16);
    for block in &mut blocks {
        if block.iter().fold(false, |any, &x| any | escaped(x)) {
            return false;
        }
    }
    !blocks.remainder().iter().any(|&x| escaped(x))
}

/// A socket address as its `Display` form in quotes (as serde writes it): IPv4 digit by
/// digit, IPv6 (compression, scope ID) through `Display`.
fn addr(out: &mut Vec<u8>, a: SocketAddr) -> io::Result<()> {
    match a {
        SocketAddr::V4(a) => {
            out.push(b'"');
            for (i, octet) in a.ip().octets().into_iter().enumerate() {
                if i > 0 {
                    out.push(b'.');
                }
                CompactFormatter.write_u8(out, octet)?;
            }
            out.push(b':');
            CompactFormatter.write_u16(out, a.port())?;
            out.push(b'"');
            Ok(())
        }
        SocketAddr::V6(a) => write!(out, "\"{a}\""),
    }
}

/// `ts` in RFC 3339 as the `time` crate writes it: sub-second digits only when not zero,
/// without trailing zeros; `Z` for UTC, else `+HH:MM` / `-HH:MM`.
fn rfc3339(out: &mut Vec<u8>, ts: OffsetDateTime) -> io::Result<()> {
    let offset = ts.offset();
    let (offset_h, offset_m, offset_s) = offset.as_hms();
    let year = ts.year();
    if !(0..10_000).contains(&year) || offset_h.unsigned_abs() > 23 || offset_s != 0 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "flow record timestamp has no RFC 3339 form (year outside 0..=9999 or an offset with seconds)",
        ));
    }
    let (_, month, day) = ts.to_calendar_date();
    let (hour, minute, second, nanos) = ts.to_hms_nano();
    let year = year.unsigned_abs();
    let mut b = [
        digit(year / 1000),
        digit(year / 100),
        digit(year / 10),
        digit(year),
        b'-',
        0,
        0,
        b'-',
        0,
        0,
        b'T',
        0,
        0,
        b':',
        0,
        0,
        b':',
        0,
        0,
    ];
    two(&mut b[5..7], u8::from(month));
    two(&mut b[8..10], day);
    two(&mut b[11..13], hour);
    two(&mut b[14..16], minute);
    two(&mut b[17..19], second);
    out.extend_from_slice(&b);
    if nanos != 0 {
        let mut digits = [b'.', 0, 0, 0, 0, 0, 0, 0, 0, 0];
        let mut n = nanos;
        for d in digits[1..].iter_mut().rev() {
            *d = digit(n);
            n /= 10;
        }
        let zeros = digits.iter().rev().take_while(|&&d| d == b'0').count();
        out.extend_from_slice(&digits[..digits.len() - zeros]);
    }
    if offset.is_utc() {
        out.push(b'Z');
    } else {
        let mut o = [
            if offset.is_negative() { b'-' } else { b'+' },
            0,
            0,
            b':',
            0,
            0,
        ];
        two(&mut o[1..3], offset_h.unsigned_abs());
        two(&mut o[4..6], offset_m.unsigned_abs());
        out.extend_from_slice(&o);
    }
    Ok(())
}

/// The last decimal digit of `n`, as ASCII.
fn digit<N: Into<u32>>(n: N) -> u8 {
    b'0' + (n.into() % 10) as u8
}

/// `n` (below 100) as two digits.
fn two(slot: &mut [u8], n: u8) {
    if let [tens, ones] = slot {
        *tens = digit(n / 10);
        *ones = digit(n);
    }
}
