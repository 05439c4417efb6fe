//! One canonical request: the path, method and host the proxy uses for BOTH policy and
//! forwarding, so what a rule matched is exactly what the application receives.
//!
//! [`normalize_path`] does, in this order (the policy reference in `README.md` has examples):
//!
//! 1. cut a `#fragment` (clients must not send one; if one arrives it is dropped);
//! 2. reject NUL, control characters, space, DEL, non-ASCII bytes and `?`;
//! 3. reject a malformed escape (`%`, `%4`, `%zz`) and `%00`;
//! 4. decode escapes of unreserved characters (`A-Z a-z 0-9 - . _ ~`) exactly once; every other
//!    escape stays encoded with its hex in upper case (`%2a` becomes `%2A`, `%25` stays `%25`,
//!    so `%252e` stays `%252e` and never turns into a dot);
//! 5. encoded `/` and `\` (`%2F`, `%5C`): rejected by default, or decoded into `/`, or kept;
//! 6. a raw `\`: rejected by default, or read as `/`;
//! 7. `;` path parameters: kept by default, but a dot segment carrying parameters (`..;x`,
//!    `.;x`, the Tomcat traversal shape) is rejected; or every parameter is stripped; or any
//!    `;` is rejected;
//! 8. merge repeated slashes, remove `.` and `..` segments (RFC 3986 section 5.2.4, including
//!    the ones that were encoded dots before step 4); `..` never climbs above the root;
//! 9. the result always starts with `/`; a trailing slash is kept.
//!
//! The function is idempotent: normalizing its output again gives the same output.

use serde::{Deserialize, Serialize};

/// Why a request part was refused. The proxy answers 400 for all of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NormalizeError {
    /// `%00` or a raw NUL byte.
    #[error("NUL byte in path")]
    Nul,
    /// A `%` not followed by two hex digits.
    #[error("malformed percent-escape in path")]
    InvalidEscape,
    /// A control character, space, DEL, non-ASCII byte or `?` in the path.
    #[error("invalid character in path")]
    InvalidCharacter,
    /// `%2F` or `%5C` while encoded slashes are rejected.
    #[error("encoded slash or backslash in path")]
    EncodedSlash,
    /// A raw `\` while backslashes are rejected.
    #[error("backslash in path")]
    Backslash,
    /// A dot segment with `;` parameters, such as `/..;/admin`.
    #[error("dot segment with path parameters")]
    DotSegmentParams,
    /// A `;` while path parameters are rejected.
    #[error("path parameters are not allowed")]
    PathParams,
    /// A method that is not an uppercase RFC 9110 token.
    #[error("invalid method")]
    InvalidMethod,
    /// A host that is empty, has invalid characters or an unbracketed IPv6 address.
    #[error("invalid host")]
    InvalidHost,
    /// A port that is not a number from 1 to 65535.
    #[error("invalid port")]
    InvalidPort,
}

/// What to do with `%2F` and `%5C`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum EncodedSlashes {
    /// Refuse the request (the default): the safe choice when the backend's reading is unknown.
    #[default]
    Reject,
    /// Decode both into `/`, which then separates segments for dot removal and matching.
    Decode,
    /// Keep them encoded (hex upper-cased); they are not separators.
    Keep,
}

/// What to do with a raw `\`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Backslash {
    /// Refuse the request (the default).
    #[default]
    Reject,
    /// Read it as `/`, as browsers and some servers do.
    Slash,
}

/// What to do with `;` path parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PathParams {
    /// Keep them as part of their segment (the default), but refuse a dot segment that carries
    /// parameters (`..;x`, `.;x`), which servers such as Tomcat read as a dot segment.
    #[default]
    Keep,
    /// Remove `;...` from every segment before dot-segment removal (what Tomcat does).
    Strip,
    /// Refuse any `;`.
    Reject,
}

/// Path normalization choices. The default is the strictest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub struct PathOptions {
    /// `%2F` and `%5C`.
    pub encoded_slashes: EncodedSlashes,
    /// A raw `\`.
    pub backslash: Backslash,
    /// `;` path parameters.
    pub path_params: PathParams,
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

const HEX_UPPER: &[u8; 16] = b"0123456789ABCDEF";

/// Normalizes a request path (without its query). See the module documentation for the steps.
// Over 80 lines by choice: the two passes follow the numbered steps of the module
// documentation (decode, then segments), and it runs on every request's path.
pub fn normalize_path(raw_path: &str, opts: &PathOptions) -> Result<String, NormalizeError> {
    if is_normal_path(raw_path) {
        return Ok(raw_path.to_owned());
    }
    normalize_path_steps(raw_path, opts)
}

/// Whether `p` is its own normal form under every [`PathOptions`], so the steps below would
/// give it back unchanged: it starts with `/`, holds only unreserved bytes and `/` (nothing to
/// decode, no `\`, `;`, `#` or `?` for an option to act on), and has no empty, `.` or `..`
/// segment except an empty last one (a trailing slash, which is kept). Most requests' paths
/// are; they skip the two passes and their allocations (a property test holds this to
/// [`normalize_path_steps`]).
fn is_normal_path(p: &str) -> bool {
    let Some(rest) = p.strip_prefix('/') else {
        return false;
    };
    if !rest.bytes().all(|b| b == b'/' || is_unreserved(b)) {
        return false;
    }
    let mut segments = rest.split('/').peekable();
    while let Some(segment) = segments.next() {
        let last = segments.peek().is_none();
        if (segment.is_empty() && !last) || segment == "." || segment == ".." {
            return false;
        }
    }
    true
}

/// The steps of the module documentation, for any path.
fn normalize_path_steps(raw_path: &str, opts: &PathOptions) -> Result<String, NormalizeError> {
    let raw = raw_path.split('#').next().unwrap_or("");
    // Steps 2 to 6: one pass that decodes and turns separators into '/'.
    let bytes = raw.as_bytes();
    let mut decoded = String::with_capacity(raw.len() + 1);
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        match b {
            0 => return Err(NormalizeError::Nul),
            b'%' => {
                let (Some(h), Some(l)) = (
                    bytes.get(i + 1).copied().and_then(hex),
                    bytes.get(i + 2).copied().and_then(hex),
                ) else {
                    return Err(NormalizeError::InvalidEscape);
                };
                let value = h * 16 + l;
                i += 3;
                if value == 0 {
                    return Err(NormalizeError::Nul);
                }
                if is_unreserved(value) {
                    decoded.push(char::from(value));
                    continue;
                }
                if value == b'/' || value == b'\\' {
                    match opts.encoded_slashes {
                        EncodedSlashes::Reject => return Err(NormalizeError::EncodedSlash),
                        EncodedSlashes::Decode => {
                            decoded.push('/');
                            continue;
                        }
                        EncodedSlashes::Keep => {}
                    }
                }
                decoded.push('%');
                decoded.push(char::from(HEX_UPPER[usize::from(h)]));
                decoded.push(char::from(HEX_UPPER[usize::from(l)]));
                continue;
            }
            b'\\' => match opts.backslash {
                Backslash::Reject => return Err(NormalizeError::Backslash),
                Backslash::Slash => decoded.push('/'),
            },
            b'?' => return Err(NormalizeError::InvalidCharacter),
            0x21..=0x7e => decoded.push(char::from(b)),
            _ => return Err(NormalizeError::InvalidCharacter),
        }
        i += 1;
    }

    // Steps 7 and 8: segment by segment.
    let ends_with_slash = decoded.ends_with('/');
    let mut out: Vec<&str> = Vec::new();
    let mut trailing_slash = ends_with_slash;
    for raw_segment in decoded.split('/') {
        let segment = match raw_segment.split_once(';') {
            None => raw_segment,
            Some((name, _)) => match opts.path_params {
                PathParams::Reject => return Err(NormalizeError::PathParams),
                PathParams::Strip => name,
                PathParams::Keep if name == "." || name == ".." => {
                    return Err(NormalizeError::DotSegmentParams);
                }
                PathParams::Keep => raw_segment,
            },
        };
        match segment {
            "" => {}
            "." => trailing_slash = true,
            ".." => {
                out.pop();
                trailing_slash = true;
            }
            s => {
                out.push(s);
                trailing_slash = ends_with_slash;
            }
        }
    }
    let mut path = String::with_capacity(decoded.len() + 1);
    for segment in &out {
        path.push('/');
        path.push_str(segment);
    }
    if path.is_empty() || trailing_slash {
        path.push('/');
    }
    Ok(path)
}

/// Checks that a method is an uppercase RFC 9110 token (`GET`, `POST`, `PURGE`); returns it.
pub fn normalize_method(m: &str) -> Result<&str, NormalizeError> {
    let ok = !m.is_empty()
        && m.bytes()
            .all(|b| crate::pattern::is_tchar(b) && !b.is_ascii_lowercase());
    if ok {
        Ok(m)
    } else {
        Err(NormalizeError::InvalidMethod)
    }
}

/// Normalizes a `Host` (or `:authority`) value: lowercase, one trailing dot removed, port
/// checked (1 to 65535, written without leading zeros; an empty port is dropped), IPv6 in
/// brackets and in its canonical text form. Userinfo (`user@host`) is refused.
pub fn normalize_host(h: &str) -> Result<String, NormalizeError> {
    if is_normal_host(h) {
        return Ok(h.to_owned());
    }
    normalize_host_steps(h)
}

/// Whether `h` is its own normal form, so the steps below would give it back unchanged: a
/// lowercase name of letters, digits, `-` and `_` in dot-separated labels (none empty, no
/// trailing dot), then at most a port of one to five digits, 1 to 65535, without leading
/// zeros. Most requests' hosts are; they skip the lowercased copy and the checks' searches
/// (a property test holds this to [`normalize_host_steps`]).
fn is_normal_host(h: &str) -> bool {
    let (name, port) = match h.split_once(':') {
        Some((name, port)) => (name, Some(port)),
        None => (h, None),
    };
    // One pass over the name's bytes, counting the current label's length.
    let mut label = 0usize;
    for &b in name.as_bytes() {
        if b == b'.' {
            if label == 0 {
                return false;
            }
            label = 0;
        } else if b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_' {
            label += 1;
        } else {
            return false;
        }
    }
    let name_ok = label > 0;
    let port_ok = port.is_none_or(|p| {
        (1..=5).contains(&p.len())
            && !p.starts_with('0')
            && p.bytes().all(|b| b.is_ascii_digit())
            && p.parse::<u32>().is_ok_and(|n| n <= 65_535)
    });
    name_ok && port_ok
}

/// The normalization of any host.
fn normalize_host_steps(h: &str) -> Result<String, NormalizeError> {
    let lower = h.to_ascii_lowercase();
    let (name, port) =
        crate::pattern::split_host_port(&lower).map_err(|_| NormalizeError::InvalidHost)?;
    // The port's digits without leading zeros (checked to be 1 to 65535).
    let port = match port {
        None | Some("") => None,
        Some(p) => {
            let digits = p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit());
            match p.parse::<u32>() {
                Ok(1..=65535) if digits => Some(p.trim_start_matches('0')),
                _ => return Err(NormalizeError::InvalidPort),
            }
        }
    };
    let name = if let Some(inner) = name.strip_prefix('[') {
        let inner = inner.strip_suffix(']').ok_or(NormalizeError::InvalidHost)?;
        let addr: std::net::Ipv6Addr = inner.parse().map_err(|_| NormalizeError::InvalidHost)?;
        format!("[{addr}]")
    } else {
        let name = name.strip_suffix('.').unwrap_or(name);
        let valid = !name.is_empty()
            && !name.starts_with('.')
            && !name.ends_with('.')
            && !name.contains("..")
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'));
        if !valid {
            return Err(NormalizeError::InvalidHost);
        }
        // Room for the longest port, `:65535`.
        let mut owned = String::with_capacity(name.len() + 6);
        owned.push_str(name);
        owned
    };
    // Written piece by piece: this runs for every request, and `format!` cost several times
    // the copies.
    let mut out = name;
    if let Some(p) = port {
        out.reserve(1 + p.len());
        out.push(':');
        out.push_str(p);
    }
    Ok(out)
}

#[cfg(test)]
mod tests;
