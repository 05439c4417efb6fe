//! Reading values: the generic readers of mappings, lists, strings and ports, and the
//! checks of every kind of pattern a policy holds.

use std::collections::BTreeMap;

use super::*;

/// A value with where it is written and how it was written.
#[derive(Debug, Clone)]
pub(super) struct Item<T> {
    pub(super) pos: Pos,
    pub(super) raw: String,
    pub(super) value: T,
}

pub(super) fn raws<T>(items: &[Item<T>]) -> Vec<String> {
    items.iter().map(|i| i.raw.clone()).collect()
}

pub(super) fn values<T: Clone>(items: &[Item<T>]) -> Vec<T> {
    items.iter().map(|i| i.value.clone()).collect()
}

/// The known entries of a mapping.
pub(super) struct Fields<'y> {
    pub(super) entries: Vec<(&'y Key, &'y Yaml)>,
    pub(super) empty: bool,
}

impl<'y> Fields<'y> {
    pub(super) fn get(&self, name: &str) -> Option<&'y Yaml> {
        self.entries
            .iter()
            .find(|(k, _)| k.name == name)
            .map(|(_, v)| *v)
    }

    pub(super) fn key_pos(&self, name: &str) -> Option<Pos> {
        self.entries
            .iter()
            .find(|(k, _)| k.name == name)
            .map(|(k, _)| k.pos)
    }
}

pub(super) fn join(path: &str, name: &str) -> String {
    if path.is_empty() {
        name.to_owned()
    } else {
        format!("{path}.{name}")
    }
}

impl Decoder<'_> {
    /// The known fields of a mapping; unknown and unsupported ones are reported.
    pub(super) fn fields<'y>(
        &mut self,
        node: &'y Yaml,
        path: &str,
        known: &[&str],
        unsupported: &[(&str, &str)],
    ) -> Option<Fields<'y>> {
        let Value::Map(entries) = &node.value else {
            let what = if path.is_empty() {
                "a policy document".to_owned()
            } else {
                format!("`{path}`")
            };
            self.error(
                node.pos,
                format!("{what}: expected a mapping, found {}", node.value.kind()),
            );
            return None;
        };
        let mut fields = Fields {
            entries: Vec::new(),
            empty: entries.is_empty(),
        };
        for (key, value) in entries {
            if known.contains(&key.name.as_str()) {
                fields.entries.push((key, value));
            } else if let Some((_, why)) = unsupported.iter().find(|(n, _)| *n == key.name) {
                self.error(
                    key.pos,
                    format!(
                        "`{}` is not supported by Picket: {why}",
                        join(path, &key.name)
                    ),
                );
            } else {
                let place = if path.is_empty() {
                    "the document".to_owned()
                } else {
                    format!("`{path}`")
                };
                self.error(
                    key.pos,
                    format!(
                        "unknown field `{}` in {place}; expected one of: {}",
                        key.name,
                        known.join(", ")
                    ),
                );
            }
        }
        Some(fields)
    }

    pub(super) fn required<'y>(
        &mut self,
        fields: &Fields<'y>,
        parent: &Yaml,
        path: &str,
        name: &str,
    ) -> Option<&'y Yaml> {
        let found = fields.get(name);
        if found.is_none() {
            self.error(
                parent.pos,
                format!("missing required field `{}`", join(path, name)),
            );
        }
        found
    }

    pub(super) fn string<'y>(&mut self, node: &'y Yaml, path: &str) -> Option<&'y str> {
        match &node.value {
            Value::Str(s) => Some(s),
            Value::Int(_) | Value::Float(_) | Value::Bool(_) => {
                let text = node.value.scalar_text().unwrap_or_default();
                self.error(
                    node.pos,
                    format!(
                        "`{path}`: expected a string, found {} ({text}); quote it if a string \
                         was meant",
                        node.value.kind()
                    ),
                );
                None
            }
            other => {
                self.error(
                    node.pos,
                    format!("`{path}`: expected a string, found {}", other.kind()),
                );
                None
            }
        }
    }

    /// A non-empty list whose items are read by `read` (which gets the item and its path).
    pub(super) fn list<'y, T>(
        &mut self,
        node: &'y Yaml,
        path: &str,
        mut read: impl FnMut(&mut Self, &'y Yaml, &str) -> Option<T>,
    ) -> Vec<T> {
        let Value::Seq(items) = &node.value else {
            self.error(
                node.pos,
                format!("`{path}`: expected a list, found {}", node.value.kind()),
            );
            return Vec::new();
        };
        if items.is_empty() {
            self.error(
                node.pos,
                format!("`{path}` is empty: list at least one value, or remove it"),
            );
        }
        items
            .iter()
            .enumerate()
            .filter_map(|(i, item)| read(self, item, &format!("{path}[{i}]")))
            .collect()
    }

    /// A list of strings, each checked by `parse`.
    pub(super) fn patterns<T, E: std::fmt::Display>(
        &mut self,
        node: Option<&Yaml>,
        path: &str,
        parse: impl Fn(&str) -> Result<T, E>,
    ) -> Vec<Item<T>> {
        let Some(node) = node else {
            return Vec::new();
        };
        self.list(node, path, |d, item, item_path| {
            let s = d.string(item, item_path)?;
            match parse(s) {
                Ok(value) => Some(Item {
                    pos: item.pos,
                    raw: s.to_owned(),
                    value,
                }),
                Err(why) => {
                    d.error(item.pos, format!("`{item_path}`: {why}"));
                    None
                }
            }
        })
    }

    /// A list of ports, written as numbers or strings.
    pub(super) fn ports(&mut self, node: Option<&Yaml>, path: &str) -> Vec<Item<u16>> {
        let Some(node) = node else {
            return Vec::new();
        };
        self.list(node, path, |d, item, item_path| {
            let parsed = match &item.value {
                Value::Str(s) => parse_port_text(s),
                Value::Int(n) => u16::try_from(*n)
                    .ok()
                    .filter(|p| *p != 0)
                    .ok_or_else(|| format!("`{n}` is not a port number (1 to 65535)")),
                other => Err(format!("expected a port number, found {}", other.kind())),
            };
            match parsed {
                Ok(port) => Some(Item {
                    pos: item.pos,
                    raw: port.to_string(),
                    value: port,
                }),
                Err(why) => {
                    d.error(item.pos, format!("`{item_path}`: {why}"));
                    None
                }
            }
        })
    }

    /// A `not*` value equal to a positive one makes the object unmatchable.
    pub(super) fn contradiction<T: PartialEq>(
        &mut self,
        path: &str,
        positive: (&str, &[Item<T>]),
        negative: (&str, &[Item<T>]),
    ) {
        for n in negative.1 {
            if positive.1.iter().any(|p| p.value == n.value) {
                self.error(
                    n.pos,
                    format!(
                        "`{}` is listed in both `{}` and `{}` of `{path}`: it can never match",
                        n.raw, positive.0, negative.0
                    ),
                );
            }
        }
    }

    pub(super) fn string_map(&mut self, node: &Yaml, path: &str) -> BTreeMap<String, String> {
        let mut map = BTreeMap::new();
        let Value::Map(entries) = &node.value else {
            self.error(
                node.pos,
                format!("`{path}`: expected a mapping, found {}", node.value.kind()),
            );
            return map;
        };
        for (key, value) in entries {
            if key.name.is_empty() {
                self.error(key.pos, format!("`{path}`: empty key"));
                continue;
            }
            if let Some(v) = self.string(value, &join(path, &key.name)) {
                map.insert(key.name.clone(), v.to_owned());
            }
        }
        map
    }
}

pub(super) fn show_ports(ports: &[u16]) -> String {
    let mut ports = ports.to_vec();
    ports.sort_unstable();
    ports.dedup();
    let text: Vec<String> = ports.iter().map(u16::to_string).collect();
    text.join(", ")
}

pub(super) fn is_dns_label(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
}

pub(super) fn is_dns_subdomain(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 253
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, b'-' | b'.'))
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
}

pub(super) fn no_space_or_control(s: &str, what: &str) -> Result<(), String> {
    if s.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!(
            "`{s}`: {what} cannot contain spaces or control characters"
        ));
    }
    Ok(())
}

/// A header name (an RFC 9110 token).
pub(super) fn check_header_name(name: &str) -> Result<(), String> {
    if name.is_empty() || !name.bytes().all(is_tchar) {
        return Err(format!("`{name}` is not a header name"));
    }
    Ok(())
}

/// A header the sidecar writes for the application: a header name that is neither a
/// connection-level header nor one of the mesh's own.
pub(super) fn check_output_header(name: &str) -> Result<(), String> {
    check_header_name(name)?;
    let lower = name.to_ascii_lowercase();
    let reserved = [
        "host",
        "connection",
        "keep-alive",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "proxy-connection",
        "content-length",
        "traceparent",
        "tracestate",
    ];
    if reserved.contains(&lower.as_str()) || lower.starts_with("x-picket-") {
        return Err(format!(
            "`{name}` is a header the sidecar manages; choose another name"
        ));
    }
    Ok(())
}

/// `jwksUri`: an `https://` URL with a host. Keys fetched over plain HTTP could be replaced
/// by anyone on the path, so that scheme is refused.
pub(crate) fn check_jwks_uri(uri: &str) -> Result<(), String> {
    let Some(rest) = uri.strip_prefix("https://") else {
        return Err(format!(
            "`{uri}` is not an https:// URL; keys are fetched over HTTPS only"
        ));
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    if authority.is_empty()
        || authority.contains('@')
        || uri.chars().any(|c| c.is_whitespace() || c.is_control())
    {
        return Err(format!(
            "`{uri}` is not a URL with a host (and no user info)"
        ));
    }
    Ok(())
}

/// `jwks`: a JSON object with a non-empty `keys` list of objects that each have `kty`. The
/// sidecar turns the keys into verification keys at load and refuses unusable ones.
pub(crate) fn check_inline_jwks(text: &str) -> Result<(), String> {
    let value: serde_json::Value =
        serde_json::from_str(text).map_err(|e| format!("not a JSON JWK set: {e}"))?;
    let keys = value
        .get("keys")
        .and_then(serde_json::Value::as_array)
        .ok_or("a JWK set is a JSON object with a `keys` list")?;
    if keys.is_empty() {
        return Err("the JWK set has no keys".into());
    }
    for (i, key) in keys.iter().enumerate() {
        if key.get("kty").and_then(serde_json::Value::as_str).is_none() {
            return Err(format!("key {i} of the JWK set has no `kty`"));
        }
    }
    Ok(())
}

/// `[a][b]` after `request.auth.claims`: one or more non-empty claim names in brackets.
pub(super) fn parse_claim_path(key: &str, mut rest: &str) -> Result<Box<[Box<str>]>, String> {
    let mut path: Vec<Box<str>> = Vec::new();
    while !rest.is_empty() {
        let Some(inner) = rest.strip_prefix('[') else {
            return Err(format!(
                "`{key}`: expected `[claim]` after `request.auth.claims`"
            ));
        };
        let Some(end) = inner.find(']') else {
            return Err(format!("`{key}`: missing `]`"));
        };
        let name = &inner[..end];
        if name.is_empty() || name.contains('[') || name.chars().any(char::is_control) {
            return Err(format!("`{key}`: `{name}` is not a claim name"));
        }
        path.push(name.into());
        rest = &inner[end + 1..];
    }
    if path.is_empty() {
        return Err(format!(
            "`{key}`: name the claim, as in `request.auth.claims[groups]`"
        ));
    }
    if path.len() > MAX_CLAIM_DEPTH {
        return Err(format!(
            "`{key}`: claims are read at most {MAX_CLAIM_DEPTH} levels deep"
        ));
    }
    Ok(path.into_boxed_slice())
}

/// How deep a `request.auth.claims[a][b]...` key may reach.
const MAX_CLAIM_DEPTH: usize = 8;

/// A request principal pattern: `iss/sub` of a JWT, in the four string forms (`*`,
/// `iss/*`, `*/sub`, exact).
pub(super) fn parse_request_principal(s: &str) -> Result<StrMatch, String> {
    no_space_or_control(s, "a request principal")?;
    let m = StrMatch::parse(s)?;
    if let StrMatch::Exact(p) = &m
        && !p.contains('/')
    {
        return Err(format!(
            "`{s}` is not a request principal: write `issuer/subject` (or `issuer/*`, `*/subject`, `*`)"
        ));
    }
    Ok(m)
}

/// A principal pattern; a leading `spiffe://` is dropped so both spellings compare equal. What
/// remains must be an identity's shape, `<trust-domain>/ns/<namespace>/sa/<service-account>`,
/// or (with `*`) a prefix or suffix of one: a principal no identity can have is an error.
pub(crate) fn parse_principal(s: &str) -> Result<StrMatch, String> {
    no_space_or_control(s, "a principal")?;
    let m = match StrMatch::parse(s)? {
        StrMatch::Exact(p) => match strip_spiffe(&p) {
            "" => return Err(format!("`{s}` names no principal")),
            rest => StrMatch::Exact(rest.into()),
        },
        StrMatch::Prefix(p) => match strip_spiffe(&p) {
            "" => StrMatch::Present,
            rest => StrMatch::Prefix(rest.into()),
        },
        other => other,
    };
    principal_shape(&m).map_err(|why| {
        format!(
            "`{s}` is not a principal: {why}; write \
             <trust-domain>/ns/<namespace>/sa/<service-account>, or `*` before or after a \
             part of one"
        )
    })?;
    Ok(m)
}

/// One `/`-separated part of a principal.
#[derive(Clone, Copy)]
enum PrincipalPart {
    TrustDomain,
    Literal(&'static str),
    Name(&'static str),
}

/// `<trust-domain>/ns/<namespace>/sa/<service-account>`, part by part.
const PRINCIPAL_PARTS: [PrincipalPart; 5] = [
    PrincipalPart::TrustDomain,
    PrincipalPart::Literal("ns"),
    PrincipalPart::Name("namespace"),
    PrincipalPart::Literal("sa"),
    PrincipalPart::Name("service account"),
];

/// How much of a part a pattern holds.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Held {
    Whole,
    /// Its beginning (the part before a trailing `*`).
    Start,
    /// Its end (the part after a leading `*`).
    End,
}

impl PrincipalPart {
    pub(super) fn check(self, text: &str, held: Held) -> Result<(), String> {
        use picket_common::spiffe::{is_name, is_trust_domain, name_byte, trust_domain_byte};
        let ok = match (self, held) {
            (PrincipalPart::Literal(l), Held::Whole) => text == l,
            (PrincipalPart::Literal(l), Held::Start) => l.starts_with(text),
            (PrincipalPart::Literal(l), Held::End) => l.ends_with(text),
            (PrincipalPart::TrustDomain, Held::Whole) => is_trust_domain(text),
            (PrincipalPart::TrustDomain, _) => {
                text.bytes().all(trust_domain_byte)
                    && !(held == Held::Start && text.starts_with('.'))
                    && !(held == Held::End && text.ends_with('.'))
            }
            (PrincipalPart::Name(_), Held::Whole) => is_name(text),
            (PrincipalPart::Name(_), _) => {
                let edge = if held == Held::Start {
                    text.bytes().next()
                } else {
                    text.bytes().last()
                };
                text.bytes().all(name_byte)
                    && edge.is_none_or(|b| b.is_ascii_alphanumeric())
                    && !text.contains("..")
            }
        };
        if ok {
            return Ok(());
        }
        Err(match self {
            PrincipalPart::Literal(l) => format!("`{text}` stands where `{l}` belongs"),
            PrincipalPart::TrustDomain if text.is_empty() => "the trust domain is empty".into(),
            PrincipalPart::TrustDomain => {
                format!("`{text}` is not a trust domain (lowercase letters, digits, `.`, `-`, `_`)")
            }
            PrincipalPart::Name(what) if text.is_empty() => format!("the {what} is empty"),
            PrincipalPart::Name(what) => format!(
                "`{text}` is not a {what} (lowercase letters, digits, `-` and `.`, a letter or \
                 digit at each end)"
            ),
        })
    }
}

/// Whether a principal pattern (the `spiffe://` dropped) can match an identity.
pub(super) fn principal_shape(m: &StrMatch) -> Result<(), String> {
    let too_many = || "it has more than five `/`-separated parts".to_owned();
    match m {
        StrMatch::Present => Ok(()),
        StrMatch::Exact(p) => {
            let parts: Vec<&str> = p.split('/').collect();
            if parts.len() != PRINCIPAL_PARTS.len() {
                return Err(format!(
                    "it has {} `/`-separated parts, not five",
                    parts.len()
                ));
            }
            for (text, part) in parts.into_iter().zip(PRINCIPAL_PARTS) {
                part.check(text, Held::Whole)?;
            }
            Ok(())
        }
        StrMatch::Prefix(p) => {
            let parts: Vec<&str> = p.split('/').collect();
            if parts.len() > PRINCIPAL_PARTS.len() {
                return Err(too_many());
            }
            let last = parts.len() - 1;
            for (i, (text, part)) in parts.into_iter().zip(PRINCIPAL_PARTS).enumerate() {
                part.check(text, if i == last { Held::Start } else { Held::Whole })?;
            }
            Ok(())
        }
        StrMatch::Suffix(p) => {
            let parts: Vec<&str> = p.rsplit('/').collect();
            if parts.len() > PRINCIPAL_PARTS.len() {
                return Err(too_many());
            }
            let last = parts.len() - 1;
            let from_end = PRINCIPAL_PARTS.iter().rev().copied();
            for (i, (text, part)) in parts.into_iter().zip(from_end).enumerate() {
                part.check(text, if i == last { Held::End } else { Held::Whole })?;
            }
            Ok(())
        }
    }
}

pub(super) fn parse_namespace(s: &str) -> Result<StrMatch, String> {
    let m = StrMatch::parse(s)?;
    let ok = m
        .literal()
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if !ok {
        return Err(format!(
            "`{s}` is not a namespace (lowercase letters, digits and `-`)"
        ));
    }
    Ok(m)
}

pub(super) fn parse_method(s: &str) -> Result<StrMatch, String> {
    let m = StrMatch::parse(s)?;
    let ok = m
        .literal()
        .bytes()
        .all(|b| is_tchar(b) && !b.is_ascii_lowercase());
    if !ok {
        return Err(format!(
            "`{s}` is not an uppercase HTTP method; methods are case-sensitive (write `GET`)"
        ));
    }
    Ok(m)
}

pub(super) fn parse_sni(s: &str) -> Result<StrMatch, String> {
    let m = StrMatch::parse(s)?.map(|l| l.to_ascii_lowercase());
    let ok = m
        .literal()
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'));
    if !ok {
        return Err(format!("`{s}` is not a server name"));
    }
    Ok(m)
}

pub(super) fn parse_header_value(s: &str) -> Result<StrMatch, String> {
    if s.chars().any(|c| c.is_control()) {
        return Err(format!(
            "`{}`: header values cannot contain control characters",
            s.escape_debug()
        ));
    }
    StrMatch::parse(s)
}

/// Escapes in a path pattern must be what normalization leaves: two upper-case hex digits,
/// never an unreserved character.
pub(super) fn escapes_are_canonical(s: &str) -> bool {
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let (Some(h), Some(l)) = (b.get(i + 1), b.get(i + 2)) else {
                return false;
            };
            let upper_hex = |c: &u8| c.is_ascii_digit() || (b'A'..=b'F').contains(c);
            if !upper_hex(h) || !upper_hex(l) {
                return false;
            }
            let text = [*h, *l];
            let value = std::str::from_utf8(&text)
                .ok()
                .and_then(|t| u8::from_str_radix(t, 16).ok());
            match value {
                Some(v) if v != 0 && !(v.is_ascii_alphanumeric() || b"-._~".contains(&v)) => {}
                _ => return false,
            }
            i += 3;
        } else {
            i += 1;
        }
    }
    true
}

/// A path pattern. Requests are matched after normalization, so a pattern that no normalized
/// path can equal (dot segments, `//`, lower-case escapes, `?`, `#`) is an error.
pub(super) fn parse_path(s: &str) -> Result<StrMatch, String> {
    if s.chars()
        .any(|c| c.is_whitespace() || c.is_control() || c == '?' || c == '#')
    {
        return Err(format!(
            "`{s}`: paths are matched without query or fragment and cannot contain `?`, `#`, \
             spaces or control characters"
        ));
    }
    let m = StrMatch::parse(s)?;
    let never = |why: String| Err(format!("`{s}` can never match: {why}"));
    match &m {
        StrMatch::Present => {}
        StrMatch::Exact(lit) => {
            if !lit.starts_with('/') {
                return never("request paths always start with `/`".into());
            }
            match normalize_path(lit, &PATTERN_PATH_OPTIONS) {
                Ok(n) if n == **lit => {}
                Ok(n) => {
                    return never(format!(
                        "requests are matched after normalization, which makes it `{n}`"
                    ));
                }
                Err(e) => return never(format!("such a request is refused ({e})")),
            }
        }
        StrMatch::Prefix(lit) => {
            if !lit.starts_with('/') {
                return never("request paths always start with `/`".into());
            }
            // The complete segments must be normalized; the last, partial one may be the start
            // of any segment (`/.well*` is fine).
            let cut = lit.rfind('/').map(|i| i + 1).unwrap_or(0);
            let (whole, partial) = lit.split_at(cut);
            match normalize_path(whole, &PATTERN_PATH_OPTIONS) {
                Ok(n) if n == whole => {}
                Ok(n) => {
                    return never(format!(
                        "requests are matched after normalization, which makes `{whole}` `{n}`"
                    ));
                }
                Err(e) => return never(format!("such a request is refused ({e})")),
            }
            if !escapes_are_canonical(partial) || partial.contains('\\') {
                return never(
                    "escapes must be upper-case and not encode unreserved characters".into(),
                );
            }
        }
        StrMatch::Suffix(lit) => {
            let dotted = lit.contains("//")
                || lit.contains("/./")
                || lit.contains("/../")
                || lit.ends_with("/.")
                || lit.ends_with("/..");
            if dotted {
                return never("normalized paths have no empty or dot segments".into());
            }
            if !escapes_are_canonical(lit) || lit.contains('\\') {
                return never(
                    "escapes must be upper-case and not encode unreserved characters".into(),
                );
            }
        }
    }
    Ok(m)
}

/// A `when` key. Known Istio keys Picket does not support are named with the reason.
pub(super) fn parse_condition_key(key: &str) -> Result<CondKey, String> {
    if let Some(rest) = key.strip_prefix("request.headers[") {
        let Some(name) = rest.strip_suffix(']') else {
            return Err(format!("`{key}`: missing `]`"));
        };
        if name.is_empty() || !name.bytes().all(is_tchar) {
            return Err(format!("`{key}`: `{name}` is not a header name"));
        }
        return Ok(CondKey::Header(name.to_ascii_lowercase().into()));
    }
    match key {
        "source.ip" => return Ok(CondKey::SourceIp),
        "source.namespace" => return Ok(CondKey::SourceNamespace),
        "source.principal" => return Ok(CondKey::SourcePrincipal),
        "destination.port" => return Ok(CondKey::DestinationPort),
        "connection.sni" => return Ok(CondKey::Sni),
        "request.auth.principal" => return Ok(CondKey::RequestPrincipal),
        "request.auth.audiences" => return Ok(CondKey::RequestAudiences),
        "request.auth.presenter" => return Ok(CondKey::RequestPresenter),
        _ => {}
    }
    if let Some(rest) = key.strip_prefix("request.auth.claims") {
        return parse_claim_path(key, rest).map(CondKey::RequestClaim);
    }
    let why = if key.starts_with("request.auth.") {
        Some(
            "the JWT attributes are request.auth.principal, request.auth.audiences, \
             request.auth.presenter and request.auth.claims[NAME]",
        )
    } else if key == "remote.ip" {
        Some(
            "the remote IP is read from X-Forwarded-For, which Picket does not trust; use `source.ip`",
        )
    } else if key == "destination.ip" {
        Some(
            "the destination address of an inbound request is always the workload's own; use \
             `destination.port` (egress policies, `spec.direction: egress`, read destination.ip)",
        )
    } else if key.starts_with("experimental.") {
        Some("experimental Envoy filter metadata does not exist in Picket")
    } else {
        None
    };
    match why {
        Some(why) => Err(format!("`{key}` is not supported by Picket: {why}")),
        None => Err(format!("unknown key `{key}`; supported keys: {WHEN_KEYS}")),
    }
}
