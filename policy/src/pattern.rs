//! Value matchers: the four string forms, CIDR blocks, host patterns, ports and the helpers that
//! read a principal. Nothing here compiles to a regular expression.

pub(crate) use picket_common::Cidr;
use std::fmt;

/// One of the four string forms: `exact`, `prefix*`, `*suffix`, `*` (present and non-empty).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum StrMatch {
    Exact(Box<str>),
    Prefix(Box<str>),
    Suffix(Box<str>),
    Present,
}

impl StrMatch {
    /// Reads a pattern. A `*` anywhere but alone, first or last is an error, and so is an empty
    /// pattern.
    pub(crate) fn parse(s: &str) -> Result<StrMatch, String> {
        if s.is_empty() {
            return Err("empty value; write `*` to match any non-empty value".into());
        }
        if s == "*" {
            return Ok(StrMatch::Present);
        }
        let stars = s.bytes().filter(|b| *b == b'*').count();
        if stars == 1 {
            if let Some(prefix) = s.strip_suffix('*') {
                return Ok(StrMatch::Prefix(prefix.into()));
            }
            if let Some(suffix) = s.strip_prefix('*') {
                return Ok(StrMatch::Suffix(suffix.into()));
            }
        }
        if stars == 0 {
            return Ok(StrMatch::Exact(s.into()));
        }
        Err(format!(
            "`{s}`: `*` is allowed only alone, at the start or at the end of a value"
        ))
    }

    /// The literal part of the pattern (empty for `*`).
    pub(crate) fn literal(&self) -> &str {
        match self {
            StrMatch::Exact(s) | StrMatch::Prefix(s) | StrMatch::Suffix(s) => s,
            StrMatch::Present => "",
        }
    }

    /// The pattern with its literal part mapped through `f`.
    pub(crate) fn map(self, f: impl FnOnce(&str) -> String) -> StrMatch {
        match self {
            StrMatch::Exact(s) => StrMatch::Exact(f(&s).into()),
            StrMatch::Prefix(s) => StrMatch::Prefix(f(&s).into()),
            StrMatch::Suffix(s) => StrMatch::Suffix(f(&s).into()),
            StrMatch::Present => StrMatch::Present,
        }
    }

    /// The value when the pattern is an exact one.
    pub(crate) fn exact(&self) -> Option<&str> {
        match self {
            StrMatch::Exact(s) => Some(s),
            _ => None,
        }
    }

    /// Case-sensitive match.
    #[inline]
    pub(crate) fn matches(&self, v: &str) -> bool {
        match self {
            StrMatch::Exact(s) => v == &**s,
            StrMatch::Prefix(p) => v.starts_with(&**p),
            StrMatch::Suffix(p) => v.ends_with(&**p),
            StrMatch::Present => !v.is_empty(),
        }
    }

    /// ASCII case-insensitive match (hosts, SNI).
    #[inline]
    pub(crate) fn matches_ignore_case(&self, v: &str) -> bool {
        let v = v.as_bytes();
        match self {
            StrMatch::Exact(s) => v.eq_ignore_ascii_case(s.as_bytes()),
            StrMatch::Prefix(p) => {
                v.len() >= p.len() && v[..p.len()].eq_ignore_ascii_case(p.as_bytes())
            }
            StrMatch::Suffix(p) => {
                v.len() >= p.len() && v[v.len() - p.len()..].eq_ignore_ascii_case(p.as_bytes())
            }
            StrMatch::Present => !v.is_empty(),
        }
    }
}

impl fmt::Display for StrMatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StrMatch::Exact(s) => f.write_str(s),
            StrMatch::Prefix(s) => write!(f, "{s}*"),
            StrMatch::Suffix(s) => write!(f, "*{s}"),
            StrMatch::Present => f.write_str("*"),
        }
    }
}

/// A host pattern: a string form over the host name, plus an optional port that must match too.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct HostMatch {
    host: StrMatch,
    port: Option<u16>,
}

impl HostMatch {
    /// Reads `orders`, `orders:8080`, `*.example.com`, `api.*`, `[::1]:8443`, `*`. Hosts are
    /// compared case-insensitively; a pattern without a port matches any port.
    pub(crate) fn parse(s: &str) -> Result<HostMatch, String> {
        let lower = s.to_ascii_lowercase();
        let (host, port) = split_host_port(&lower).map_err(|why| format!("host `{s}`: {why}"))?;
        let port = match port {
            None => None,
            Some(p) => Some(
                parse_port_text(p)
                    .map_err(|why| format!("host `{s}`: {why}; omit the port to match any port"))?,
            ),
        };
        let pattern = StrMatch::parse(host).map_err(|why| format!("host {why}"))?;
        let literal = pattern.literal();
        let bracketed = literal.starts_with('[') || literal.ends_with(']');
        let valid = literal.bytes().all(|b| {
            b.is_ascii_alphanumeric()
                || matches!(b, b'.' | b'-' | b'_')
                || (bracketed && matches!(b, b'[' | b']' | b':'))
        });
        if !valid {
            return Err(format!("host `{s}` has characters a host name cannot have"));
        }
        Ok(HostMatch {
            host: pattern,
            port,
        })
    }

    /// Whether the request's `Host` (name, optional port) matches.
    #[inline]
    pub(crate) fn matches(&self, host: &str) -> bool {
        let (name, port) = split_request_host(host);
        self.host.matches_ignore_case(name) && self.port.is_none_or(|p| port == Some(p))
    }
}

impl fmt::Display for HostMatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.port {
            Some(p) => write!(f, "{}:{p}", self.host),
            None => write!(f, "{}", self.host),
        }
    }
}

/// Splits `name[:port]` or `[v6][:port]` without checking the port's digits.
pub(crate) fn split_host_port(s: &str) -> Result<(&str, Option<&str>), &'static str> {
    if s.starts_with('[') {
        let Some(end) = s.find(']') else {
            return Err("unclosed `[`");
        };
        let (name, rest) = s.split_at(end + 1);
        return match rest {
            "" => Ok((name, None)),
            _ => match rest.strip_prefix(':') {
                Some(port) => Ok((name, Some(port))),
                None => Err("unexpected text after `]`"),
            },
        };
    }
    match s.split_once(':') {
        None => Ok((s, None)),
        Some((name, port)) if !port.contains(':') => Ok((name, Some(port))),
        Some(_) => Err("an IPv6 address must be written in brackets, as `[::1]`"),
    }
}

/// The request side of [`split_host_port`]: never fails; an unreadable port is no port.
#[inline]
pub(crate) fn split_request_host(host: &str) -> (&str, Option<u16>) {
    match split_host_port(host) {
        Ok((name, Some(port))) => (name, parse_port_text(port).ok()),
        Ok((name, None)) => (name, None),
        Err(_) => (host, None),
    }
}

/// A port written as decimal digits, 1 to 65535, without sign or leading zeros.
pub(crate) fn parse_port_text(s: &str) -> Result<u16, String> {
    let digits = !s.is_empty() && s.len() <= 5 && s.bytes().all(|b| b.is_ascii_digit());
    if !digits || (s.len() > 1 && s.starts_with('0')) {
        return Err(format!("`{s}` is not a port number (1 to 65535)"));
    }
    match s.parse::<u32>() {
        Ok(n @ 1..=65535) => u16::try_from(n).map_err(|e| e.to_string()),
        _ => Err(format!("`{s}` is not a port number (1 to 65535)")),
    }
}

/// Strips an optional `spiffe://` scheme so both identity spellings compare equal.
pub(crate) fn strip_spiffe(s: &str) -> &str {
    match s.get(..9) {
        Some(scheme) if scheme.eq_ignore_ascii_case("spiffe://") => &s[9..],
        _ => s,
    }
}

/// The namespace of a `<trust-domain>/ns/<namespace>/sa/<account>` principal: exactly five
/// `/`-separated parts, the second `ns`, the fourth `sa`, the third not empty.
///
/// Every decision with a principal reads it, so the four slashes are found in one pass over
/// the bytes rather than by `split('/')`, whose searcher cost about 500 instructions per
/// request on the inbound sidecar (`bench/report.md`).
#[inline]
pub(crate) fn namespace_of(principal: &str) -> Option<&str> {
    let mut slashes = [0usize; 4];
    let mut found = 0;
    for (i, &b) in principal.as_bytes().iter().enumerate() {
        if b == b'/' {
            // A fifth slash: more than five parts.
            *slashes.get_mut(found)? = i;
            found += 1;
        }
    }
    if found != 4 {
        return None;
    }
    // Parts: trust domain, `ns`, namespace, `sa`, account; each slash is one byte.
    let [after_domain, after_ns, after_namespace, after_sa] = slashes;
    let ns = principal.get(after_domain + 1..after_ns)?;
    let namespace = principal.get(after_ns + 1..after_namespace)?;
    let sa = principal.get(after_namespace + 1..after_sa)?;
    (ns == "ns" && sa == "sa" && !namespace.is_empty()).then_some(namespace)
}

/// RFC 9110 `tchar`.
pub(crate) fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric()
        || matches!(
            b,
            b'!' | b'#'
                | b'$'
                | b'%'
                | b'&'
                | b'\''
                | b'*'
                | b'+'
                | b'-'
                | b'.'
                | b'^'
                | b'_'
                | b'`'
                | b'|'
                | b'~'
        )
}

#[cfg(test)]
mod tests;
