//! One canonical request: made once, used for the policy decision AND for what the app
//! receives, so the proxy and the app can never read two different requests.
//!
//! Method must be an uppercase token; the path is normalized by
//! [`picket_policy::normalize::normalize_path`] (decode once, dot segments, merged slashes,
//! encoded separators per config); the query is kept verbatim; the host comes from the
//! request-target when it is in absolute form (overriding `Host`, as RFC 9112 section 3.2.2
//! requires) and is lowercased; several `Host` headers, header names with `_` (unless allowed),
//! header values with leading or trailing whitespace and conflicting Content-Length values are
//! refused.

use http::header::{self, HeaderValue};
use http::request::Parts;
use http::{Uri, Version};
use picket_policy::normalize;

use crate::config::HttpConfig;

/// The canonical view of a request, as policy sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Canonical {
    /// Normalized path, without query.
    pub path: String,
    /// Lowercased host, with port if one was given.
    pub host: String,
}

/// A request refused before policy, with the reason given to the client (400).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Rejection(pub String);

/// Makes `parts` canonical in place and returns the canonical view.
pub fn canonicalize(parts: &mut Parts, cfg: &HttpConfig) -> Result<Canonical, Rejection> {
    normalize::normalize_method(parts.method.as_str())
        .map_err(|e| Rejection(format!("invalid method: {e}")))?;

    if !cfg.allow_header_underscores
        && let Some(name) = parts.headers.keys().find(|n| n.as_str().contains('_'))
    {
        return Err(Rejection(format!(
            "header name {:?} contains '_'; refused so that no server can read it as another header",
            name.as_str()
        )));
    }
    // HTTP/1 framing conflicts never get this far: the HTTP/1 parser refuses differing
    // Content-Length values, and for Content-Length with Transfer-Encoding it frames by
    // Transfer-Encoding alone, drops Content-Length and closes the connection after the
    // response (RFC 9112 section 6.3), so nothing can be smuggled behind the request.
    if let Some((name, _)) = parts.headers.iter().find(|(_, v)| {
        let b = v.as_bytes();
        matches!(b.first(), Some(b' ' | b'\t')) || matches!(b.last(), Some(b' ' | b'\t'))
    }) {
        // HTTP/1 parsers strip this whitespace and HTTP/2 does not: policy and app could read
        // two different values.
        return Err(Rejection(format!(
            "header {:?} has leading or trailing whitespace",
            name.as_str()
        )));
    }
    let mut lengths = parts.headers.get_all(header::CONTENT_LENGTH).iter();
    if let (Some(first), Some(_)) = (lengths.next(), lengths.next()) {
        let all_same = parts
            .headers
            .get_all(header::CONTENT_LENGTH)
            .iter()
            .all(|v| v == first);
        if !all_same {
            return Err(Rejection("conflicting Content-Length values".into()));
        }
    }

    let mut hosts = parts.headers.get_all(header::HOST).iter();
    let host_header = hosts.next();
    if hosts.next().is_some() {
        return Err(Rejection("more than one Host header".into()));
    }
    let raw_host = match (parts.uri.authority(), host_header) {
        (Some(a), _) => a.as_str().to_owned(),
        (None, Some(h)) => h
            .to_str()
            .map_err(|_| Rejection("Host header is not visible ASCII".into()))?
            .to_owned(),
        (None, None) => return Err(Rejection("request has no host".into())),
    };
    if raw_host.contains('@') {
        return Err(Rejection(
            "user info in the authority is not allowed".into(),
        ));
    }
    let host = normalize::normalize_host(&raw_host)
        .map_err(|e| Rejection(format!("invalid host: {e}")))?;

    let (raw_path, query) = match parts.uri.path_and_query() {
        Some(pq) => (pq.path(), pq.query()),
        None => ("/", None),
    };
    if parts.method == http::Method::OPTIONS && raw_path == "*" {
        return Err(Rejection("OPTIONS * is not forwarded".into()));
    }
    let path = normalize::normalize_path(raw_path, &cfg.path)
        .map_err(|e| Rejection(format!("invalid path: {e}")))?;

    let target = match query {
        Some(q) => format!("{path}?{q}"),
        None => path.clone(),
    };
    let mut builder = Uri::builder().path_and_query(target.as_str());
    if parts.version == Version::HTTP_2 {
        builder = builder.scheme("http").authority(host.as_str());
    }
    parts.uri = builder
        .build()
        .map_err(|e| Rejection(format!("invalid request target: {e}")))?;
    let host_value = HeaderValue::from_str(&host).map_err(|_| Rejection("invalid host".into()))?;
    if parts.version == Version::HTTP_2 {
        parts.headers.remove(header::HOST);
    } else {
        parts.headers.insert(header::HOST, host_value);
    }
    Ok(Canonical { path, host })
}
