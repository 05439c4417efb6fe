//! One canonical request: made once, used for the policy decision AND for what the app
//! receives, so the proxy and the app can never read two different requests.
//!
//! [`check_head`] applies the syntax rules of RFC 9112 and RFC 9113 that both directions
//! enforce (the caller's sidecar and the callee's): the request-target form, `Host`, header
//! values and framing headers. [`canonicalize`] adds what only the deciding (inbound) side
//! does: the method must be an uppercase token; the path is normalized by
//! [`picket_policy::normalize::normalize_path`] (decode once, dot segments, merged slashes,
//! encoded separators per config); the query is kept verbatim; the host comes from the
//! request-target when it is in absolute form (overriding `Host`, as RFC 9112 section 3.2.2
//! requires) and is lowercased; header names with `_` are refused unless allowed.

use http::header::{self, HeaderValue};
use http::request::Parts;
use http::{Method, StatusCode, Uri, Version};
use picket_policy::normalize;

use crate::config::HttpConfig;

/// The canonical view of a request, as policy sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Canonical {
    /// The method as policy sees it: the request's, except `GET` for the extended CONNECT of
    /// a WebSocket (RFC 8441), which stands for the HTTP/1.1 `GET` upgrade: one WebSocket is
    /// the same request for policy whichever HTTP version carried it.
    pub method: Method,
    /// Normalized path, without query; `*` for `OPTIONS *` (asterisk form).
    pub path: String,
    /// Lowercased host, with port if one was given.
    pub host: String,
}

/// A request refused before policy: the status (400, or 405 for CONNECT) and the reason given
/// to the client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}")]
pub struct Rejection {
    /// The status of the answer.
    pub status: StatusCode,
    /// Why, for the client and the log.
    pub reason: String,
}

impl Rejection {
    /// A 400 with `reason`.
    pub fn bad_request(reason: impl Into<String>) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            reason: reason.into(),
        }
    }
}

/// The request-target of `OPTIONS *`.
pub const ASTERISK: &str = "*";

/// Whether the request-target is the asterisk form (`OPTIONS *`; in HTTP/2 a `:path` of `*`).
pub fn is_asterisk(parts: &Parts) -> bool {
    parts.uri.path() == ASTERISK && parts.uri.query().is_none()
}

/// The syntax rules both directions enforce, in place of any lenient reading:
///
/// - CONNECT is refused with 405: Picket opens no tunnels on a client's request; the one
///   exception is HTTP/2's extended CONNECT for a WebSocket (`:protocol websocket`, RFC 8441),
///   which is a WebSocket upgrade decided like its HTTP/1.1 `GET` ([`crate::tunnel`]);
/// - an HTTP/1 request-target is origin form (starting with `/`), absolute form, or `*` with
///   OPTIONS only; an HTTP/2 `:path` starts with `/`, or is `*` with OPTIONS only;
/// - one `Host` at most; in HTTP/2, a `host` header must name what `:authority` names;
/// - header values are visible ASCII, space and tab only (no obs-text: an app that trims
///   Unicode whitespace would read another value than the one policy matched), without
///   leading or trailing whitespace;
/// - `Content-Length` values agree.
// Over 80 lines by choice: one check per item of the list above, in that order, so the list
// and the code can be read side by side; it runs on every request, and splitting it was not
// worth a per-request profile.
pub fn check_head(parts: &Parts) -> Result<(), Rejection> {
    if parts.method == Method::CONNECT && crate::tunnel::form(parts).is_none() {
        let reason = if crate::tunnel::is_extended_connect(parts) {
            "extended CONNECT is supported for the websocket protocol only"
        } else {
            "CONNECT is not supported: the sidecar opens no tunnels on request"
        };
        return Err(Rejection {
            status: StatusCode::METHOD_NOT_ALLOWED,
            reason: reason.into(),
        });
    }
    if is_asterisk(parts) {
        if parts.method != Method::OPTIONS {
            return Err(Rejection::bad_request(format!(
                "the asterisk request-target is only allowed with OPTIONS, not {}",
                parts.method
            )));
        }
    } else if parts.version == Version::HTTP_2 || parts.uri.scheme().is_none() {
        // HTTP/2 always has a scheme and authority here; its path must still be origin form.
        // HTTP/1 without a scheme: only origin form is left (authority form is CONNECT's).
        let target = parts.uri.path_and_query().map_or("", |p| p.as_str());
        if !target.starts_with('/')
            || (parts.uri.scheme().is_none() && parts.uri.authority().is_some())
        {
            return Err(Rejection::bad_request(
                "the request-target must start with '/' (origin form) or be an absolute URI",
            ));
        }
    }
    for (name, value) in &parts.headers {
        let b = value.as_bytes();
        if let Some(pos) = b.iter().position(|&c| c >= 0x80) {
            return Err(Rejection::bad_request(format!(
                "header {:?} has a byte above 0x7F at offset {pos}; only ASCII is accepted",
                name.as_str()
            )));
        }
        if matches!(b.first(), Some(b' ' | b'\t')) || matches!(b.last(), Some(b' ' | b'\t')) {
            // HTTP/1 parsers strip this whitespace and HTTP/2 does not: policy and app could
            // read two different values.
            return Err(Rejection::bad_request(format!(
                "header {:?} has leading or trailing whitespace",
                name.as_str()
            )));
        }
    }
    // HTTP/1 framing conflicts never get this far: the HTTP/1 parser refuses differing
    // Content-Length values, and for Content-Length with Transfer-Encoding it frames by
    // Transfer-Encoding alone, drops Content-Length and closes the connection after the
    // response (RFC 9112 section 6.3), so nothing can be smuggled behind the request.
    let mut lengths = parts.headers.get_all(header::CONTENT_LENGTH).iter();
    if let (Some(first), Some(_)) = (lengths.next(), lengths.next()) {
        let all_same = parts
            .headers
            .get_all(header::CONTENT_LENGTH)
            .iter()
            .all(|v| v == first);
        if !all_same {
            return Err(Rejection::bad_request("conflicting Content-Length values"));
        }
    }
    let mut hosts = parts.headers.get_all(header::HOST).iter();
    let host_header = hosts.next();
    if hosts.next().is_some() {
        return Err(Rejection::bad_request("more than one Host header"));
    }
    if parts.version == Version::HTTP_2
        && let (Some(authority), Some(host)) = (parts.uri.authority(), host_header)
    {
        // RFC 9113 section 8.3.1: compared after normalization.
        let same = host.to_str().ok().is_some_and(|h| {
            matches!(
                (normalize::normalize_host(h), normalize::normalize_host(authority.as_str())),
                (Ok(a), Ok(b)) if a == b
            )
        });
        if !same {
            return Err(Rejection::bad_request(
                "the host header names another host than :authority",
            ));
        }
    }
    Ok(())
}

/// The host a request names: the authority of an absolute target (or `:authority`), else the
/// `Host` header. Refused when neither is present or the `Host` header is not ASCII.
pub fn raw_host(parts: &Parts) -> Result<String, Rejection> {
    host_of(parts).map(str::to_owned)
}

/// [`raw_host`], borrowed from the request head.
fn host_of(parts: &Parts) -> Result<&str, Rejection> {
    match (parts.uri.authority(), parts.headers.get(header::HOST)) {
        (Some(a), _) => Ok(a.as_str()),
        (None, Some(h)) => h
            .to_str()
            .map_err(|_| Rejection::bad_request("Host header is not visible ASCII")),
        (None, None) => Err(Rejection::bad_request("request has no host")),
    }
}

/// Makes `parts` canonical in place and returns the canonical view.
///
/// The request-target and the `Host` header are rewritten only when they differ from the
/// canonical ones: a request that already is canonical (the common case, and always the case
/// between two sidecars) keeps its `Uri` and headers as they are, which is the same request
/// without a parse, a copy and a header-map insert per request.
pub fn canonicalize(parts: &mut Parts, cfg: &HttpConfig) -> Result<Canonical, Rejection> {
    check_head(parts)?;
    normalize::normalize_method(parts.method.as_str())
        .map_err(|e| Rejection::bad_request(format!("invalid method: {e}")))?;

    if !cfg.allow_header_underscores
        && let Some(name) = parts.headers.keys().find(|n| n.as_str().contains('_'))
    {
        return Err(Rejection::bad_request(format!(
            "header name {:?} contains '_'; refused so that no server can read it as another header",
            name.as_str()
        )));
    }

    let raw_host = host_of(parts)?;
    if raw_host.contains('@') {
        return Err(Rejection::bad_request(
            "user info in the authority is not allowed",
        ));
    }
    let host = normalize::normalize_host(raw_host)
        .map_err(|e| Rejection::bad_request(format!("invalid host: {e}")))?;

    let asterisk = is_asterisk(parts);
    let (path, path_unchanged) = if asterisk {
        (ASTERISK.to_owned(), false)
    } else {
        let raw_path = parts.uri.path_and_query().map_or("/", |pq| pq.path());
        let path = normalize::normalize_path(raw_path, &cfg.path)
            .map_err(|e| Rejection::bad_request(format!("invalid path: {e}")))?;
        let unchanged = parts.uri.path_and_query().is_some() && path == raw_path;
        (path, unchanged)
    };
    // The canonical target: origin form in HTTP/1; in HTTP/2 scheme `http` and the canonical
    // host as the authority.
    let canonical_form = if parts.version == Version::HTTP_2 {
        parts.uri.scheme_str() == Some("http")
            && parts.uri.authority().is_some_and(|a| a.as_str() == host)
    } else {
        parts.uri.scheme().is_none() && parts.uri.authority().is_none()
    };
    if !(path_unchanged && canonical_form) {
        let target = match parts.uri.query() {
            Some(q) if !asterisk => format!("{path}?{q}"),
            _ => path.clone(),
        };
        let mut builder = Uri::builder().path_and_query(target.as_str());
        if parts.version == Version::HTTP_2 {
            builder = builder.scheme("http").authority(host.as_str());
        }
        parts.uri = builder
            .build()
            .map_err(|e| Rejection::bad_request(format!("invalid request target: {e}")))?;
    }
    if parts.version == Version::HTTP_2 {
        parts.headers.remove(header::HOST);
    } else if parts
        .headers
        .get(header::HOST)
        .is_none_or(|h| h.as_bytes() != host.as_bytes())
    {
        let host_value =
            HeaderValue::from_str(&host).map_err(|_| Rejection::bad_request("invalid host"))?;
        parts.headers.insert(header::HOST, host_value);
    }
    let method = match crate::tunnel::form(parts) {
        Some(crate::tunnel::Form::ExtendedConnect) => Method::GET,
        _ => parts.method.clone(),
    };
    Ok(Canonical { method, path, host })
}

#[cfg(test)]
mod tests;
