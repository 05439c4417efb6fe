//! What evaluation reads and writes: the request or connection to authorize, and the decision
//! (verdict, deciding policy and rule, reason, dry-run shadows). A leaf module: compiling,
//! indexing and evaluating all use these types, and it uses none of them.

use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

use serde::{Serialize, Serializer};

/// One request or connection to authorize.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    /// The peer's identity as `trust-domain/ns/<namespace>/sa/<account>` (a `spiffe://` prefix
    /// is tolerated); `None` when the peer is unauthenticated.
    pub source_principal: Option<&'a str>,
    /// The peer's address (IPv4-mapped IPv6 addresses are read as IPv4).
    pub source_ip: IpAddr,
    /// The port the connection arrived on.
    pub destination_port: u16,
    /// The TLS server name the peer asked for.
    pub sni: Option<&'a str>,
    /// The HTTP request; `None` for an opaque TCP connection or the connection-level check.
    pub http: Option<HttpRequest<'a>>,
    /// The end user, from a validated JWT; `None` when the request carried no token (it is
    /// then unauthenticated, not refused: policy decides what such a request may do).
    pub auth: Option<&'a RequestAuth>,
}

/// One connection of the workload to a destination outside the mesh, as egress policies
/// (`spec.direction: egress`) decide it.
#[derive(Debug, Clone, Copy)]
pub struct EgressRequest<'a> {
    /// The address the workload dialled (its original destination).
    pub ip: IpAddr,
    /// The port it dialled.
    pub port: u16,
    /// The name it asked for: the SNI of its TLS ClientHello or the `Host` of its plaintext
    /// HTTP/1 request, lowercase, without port; `None` when none was seen.
    pub name: Option<&'a str>,
    /// The SNI, when the name came from a ClientHello (`connection.sni` reads it).
    pub sni: Option<&'a str>,
}

/// The end user a request acts for: the claims of a JWT the sidecar has validated
/// (signature, `exp`/`nbf`, `iss`, `aud`) against a `RequestAuthentication` rule.
#[derive(Debug, Clone, PartialEq)]
pub struct RequestAuth {
    /// `iss/sub` (Istio's request principal); `None` when the token has no `sub`.
    pub principal: Option<String>,
    /// The `aud` claim: one string or a list of strings.
    pub audiences: Vec<String>,
    /// The `azp` claim (authorized presenter).
    pub presenter: Option<String>,
    /// Every claim of the token's payload.
    pub claims: serde_json::Map<String, serde_json::Value>,
}

impl RequestAuth {
    /// The attributes of a token whose payload is `claims`: principal `iss/sub` (both must be
    /// strings), audiences from `aud`, presenter from `azp`.
    pub fn from_claims(claims: serde_json::Map<String, serde_json::Value>) -> RequestAuth {
        let text = |k: &str| claims.get(k).and_then(serde_json::Value::as_str);
        let principal = match (text("iss"), text("sub")) {
            (Some(iss), Some(sub)) => Some(format!("{iss}/{sub}")),
            _ => None,
        };
        let audiences = match claims.get("aud") {
            Some(serde_json::Value::String(a)) => vec![a.clone()],
            Some(serde_json::Value::Array(list)) => list
                .iter()
                .filter_map(serde_json::Value::as_str)
                .map(str::to_owned)
                .collect(),
            _ => Vec::new(),
        };
        let presenter = text("azp").map(str::to_owned);
        RequestAuth {
            principal,
            audiences,
            presenter,
            claims,
        }
    }

    /// The claim at `path` (`["realm", "roles"]` is `claims.realm.roles`).
    pub fn claim(&self, path: &[Box<str>]) -> Option<&serde_json::Value> {
        let (first, rest) = path.split_first()?;
        let mut value = self.claims.get(&**first)?;
        for key in rest {
            value = value.as_object()?.get(&**key)?;
        }
        Some(value)
    }
}

/// The HTTP part of a request, already normalized by the proxy ([`crate::normalize`]).
#[derive(Debug, Clone, Copy)]
pub struct HttpRequest<'a> {
    /// Uppercase method token.
    pub method: &'a str,
    /// Normalized path, without the query.
    pub path: &'a str,
    /// Normalized host, lowercase, with its port when the request gave one.
    pub host: &'a str,
    /// Header names lowercase, duplicates kept in order.
    pub headers: &'a [(&'a str, &'a str)],
}

/// Allow or deny: the one verdict type, used by decisions and by the sidecar's flow records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Verdict {
    /// The request may proceed.
    Allow,
    /// The request is refused.
    Deny,
}

impl Verdict {
    /// `allow` or `deny`.
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Allow => "allow",
            Verdict::Deny => "deny",
        }
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why the verdict is what it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Reason {
    /// An enforced DENY rule matched.
    ExplicitDeny,
    /// The workload has enforced ALLOW policies and none of their rules matched.
    NoAllowMatch,
    /// As `NoAllowMatch`, for a request without a principal when some ALLOW rule needed one.
    Unauthenticated,
    /// No enforced ALLOW policy selects the workload: the mesh default applied.
    Default,
    /// An enforced ALLOW rule matched.
    AllowMatch,
}

impl Reason {
    /// `explicit-deny`, `no-allow-match`, `unauthenticated`, `default` or `allow-match`.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::ExplicitDeny => "explicit-deny",
            Reason::NoAllowMatch => "no-allow-match",
            Reason::Unauthenticated => "unauthenticated",
            Reason::Default => "default",
            Reason::AllowMatch => "allow-match",
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A policy's namespace and name; `Display` is `namespace/name`. Cloning is two reference
/// count increments.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PolicyRef {
    /// `metadata.namespace`.
    pub namespace: Arc<str>,
    /// `metadata.name`.
    pub name: Arc<str>,
}

impl PolicyRef {
    /// `namespace/name`, as `Display` writes it, built without the formatting machinery:
    /// every flow record of a decided request takes it (about 630 instructions through
    /// `to_string`).
    pub fn qualified(&self) -> String {
        let mut s = String::with_capacity(self.namespace.len() + 1 + self.name.len());
        s.push_str(&self.namespace);
        s.push('/');
        s.push_str(&self.name);
        s
    }
}

impl fmt::Display for PolicyRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

impl Serialize for PolicyRef {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// A dry-run policy that matched, and what it would have decided if enforced.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Shadow {
    /// The dry-run policy.
    pub policy: PolicyRef,
    /// Its first matching rule.
    pub rule: Option<usize>,
    /// `deny` for a DENY policy, `allow` for an ALLOW policy.
    pub would: Verdict,
}

/// The outcome of one evaluation: one record for the 403 body, the log, metrics and spans.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Decision {
    /// Allow or deny.
    pub verdict: Verdict,
    /// Why.
    pub reason: Reason,
    /// The deciding policy: the matching DENY or ALLOW policy; `None` for the default and for
    /// no-allow-match.
    pub policy: Option<PolicyRef>,
    /// The deciding rule's index in `spec.rules`.
    pub rule: Option<usize>,
    /// Matching dry-run policies, in policy order (one entry per policy, its first matching
    /// rule). A dry-run policy not listed did not match.
    pub shadows: Vec<Shadow>,
    /// Matching AUDIT policies, in policy order.
    pub audit: Vec<PolicyRef>,
    /// The verdict if every dry-run policy were enforced and an `audit-only` mesh default
    /// were `deny`. Equal to `verdict` when nothing is being tried out.
    pub would_verdict: Verdict,
}

impl Decision {
    /// Whether the request may proceed.
    pub fn is_allowed(&self) -> bool {
        self.verdict == Verdict::Allow
    }
}

impl fmt::Display for Decision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.verdict, self.reason)?;
        if let Some(policy) = &self.policy {
            write!(f, " by {policy}")?;
            if let Some(rule) = self.rule {
                write!(f, " rule {rule}")?;
            }
        }
        if self.would_verdict != self.verdict {
            write!(
                f,
                "; would {} with dry-run policies enforced",
                self.would_verdict
            )?;
        }
        Ok(())
    }
}
