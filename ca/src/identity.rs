//! SPIFFE identity types: [`TrustDomain`] and [`SpiffeId`].
//!
//! Picket identities always have the Kubernetes-style shape
//! `spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>`. Parsing is strict so that two
//! spellings of one identity can never exist: no percent-encoding, no empty or dot segments, no
//! query, fragment, port or user info, lowercase trust domain.

use std::fmt;
use std::str::FromStr;

/// Why a string is not a valid trust domain or SPIFFE ID.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum IdentityError {
    /// The trust domain is empty, too long, or has characters outside `[a-z0-9.-_]`.
    #[error(
        "invalid trust domain {0:?}: use lowercase letters, digits, '.', '-' and '_' (at most 255 characters)"
    )]
    TrustDomain(String),
    /// The string does not start with `spiffe://`.
    #[error("invalid SPIFFE ID {0:?}: must start with spiffe://")]
    Scheme(String),
    /// The path is not `/ns/<namespace>/sa/<service-account>`.
    #[error("invalid SPIFFE ID {0:?}: path must be /ns/<namespace>/sa/<service-account>")]
    Path(String),
    /// A namespace or service-account name is not a Kubernetes DNS label-like name.
    #[error(
        "invalid name {0:?}: use lowercase letters, digits, '-' and '.' (1 to 253 characters, starting and ending with a letter or digit)"
    )]
    Name(String),
}

/// A SPIFFE trust domain such as `cluster.local`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TrustDomain(String);

impl TrustDomain {
    /// The trust domain as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for TrustDomain {
    type Err = IdentityError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if picket_common::spiffe::is_trust_domain(s) {
            Ok(Self(s.to_owned()))
        } else {
            Err(IdentityError::TrustDomain(s.to_owned()))
        }
    }
}

impl fmt::Display for TrustDomain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The workload part of an identity: namespace and service account, without the trust domain.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct WorkloadName {
    namespace: String,
    service_account: String,
}

impl WorkloadName {
    /// A workload name from a namespace and a service account, both validated.
    pub fn new(namespace: &str, service_account: &str) -> Result<Self, IdentityError> {
        Ok(Self {
            namespace: validate_name(namespace)?.to_owned(),
            service_account: validate_name(service_account)?.to_owned(),
        })
    }

    /// The namespace.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// The service account.
    pub fn service_account(&self) -> &str {
        &self.service_account
    }
}

/// Parses `ns/<namespace>/sa/<service-account>`, the form the CLI takes.
impl FromStr for WorkloadName {
    type Err = IdentityError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut parts = s.split('/');
        match (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) {
            (Some("ns"), Some(ns), Some("sa"), Some(sa), None) => Self::new(ns, sa),
            _ => Err(IdentityError::Path(s.to_owned())),
        }
    }
}

impl fmt::Display for WorkloadName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ns/{}/sa/{}", self.namespace, self.service_account)
    }
}

/// A validated SPIFFE ID: `spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>`.
///
/// It keeps its URI text, written once when it is made: the request path names identities
/// in flow records, spans and headers for every request, and formatting the parts each time
/// cost about 1,200 instructions per use (bench/report.md, "Request path: no formatting or name
/// parsing per request").
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SpiffeId {
    trust_domain: TrustDomain,
    workload: WorkloadName,
    /// The URI form of the two fields above (so equality and order are theirs).
    uri: Box<str>,
}

impl SpiffeId {
    /// An identity in `trust_domain` for `workload`.
    pub fn new(trust_domain: TrustDomain, workload: WorkloadName) -> Self {
        let uri = format!("spiffe://{trust_domain}/{workload}").into_boxed_str();
        Self {
            trust_domain,
            workload,
            uri,
        }
    }

    /// The URI form, as put in a certificate's URI SAN, borrowed.
    pub fn as_str(&self) -> &str {
        &self.uri
    }

    /// The trust domain.
    pub fn trust_domain(&self) -> &TrustDomain {
        &self.trust_domain
    }

    /// Namespace and service account.
    pub fn workload(&self) -> &WorkloadName {
        &self.workload
    }

    /// The namespace.
    pub fn namespace(&self) -> &str {
        self.workload.namespace()
    }

    /// The service account.
    pub fn service_account(&self) -> &str {
        self.workload.service_account()
    }

    /// The URI form, as put in a certificate's URI SAN.
    pub fn to_uri(&self) -> String {
        self.uri.to_string()
    }
}

impl FromStr for SpiffeId {
    type Err = IdentityError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let rest = s
            .strip_prefix("spiffe://")
            .ok_or_else(|| IdentityError::Scheme(s.to_owned()))?;
        let (domain, path) = rest
            .split_once('/')
            .ok_or_else(|| IdentityError::Path(s.to_owned()))?;
        let trust_domain: TrustDomain = domain.parse()?;
        let workload: WorkloadName = path.parse().map_err(|e| match e {
            IdentityError::Name(n) => IdentityError::Name(n),
            _ => IdentityError::Path(s.to_owned()),
        })?;
        Ok(Self::new(trust_domain, workload))
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.uri)
    }
}

impl serde::Serialize for SpiffeId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.uri)
    }
}

impl<'de> serde::Deserialize<'de> for SpiffeId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl serde::Serialize for TrustDomain {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> serde::Deserialize<'de> for TrustDomain {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

fn validate_name(name: &str) -> Result<&str, IdentityError> {
    if picket_common::spiffe::is_name(name) {
        Ok(name)
    } else {
        Err(IdentityError::Name(name.to_owned()))
    }
}

#[cfg(test)]
mod tests;
