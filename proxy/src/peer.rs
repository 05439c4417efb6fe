//! `PeerIdentity`: which server identity an outbound connection accepts, as the
//! configuration names it and the TLS verifier and the controller's client check it. A leaf:
//! `config`, `tls` and `discover` all use it, so none of them imports another for it.

/// Which server identity an outbound connection accepts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerIdentity {
    /// Exactly this workload.
    Exact(picket_ca::SpiffeId),
    /// Any workload of this trust domain (transparent destinations configured without a pinned
    /// identity: the chain and trust domain are checked, the workload is not).
    AnyIn(picket_ca::TrustDomain),
}

impl PeerIdentity {
    /// The trust domain the peer must belong to.
    pub fn trust_domain(&self) -> &picket_ca::TrustDomain {
        match self {
            Self::Exact(id) => id.trust_domain(),
            Self::AnyIn(td) => td,
        }
    }

    /// The one identity this expectation names, when it pins one.
    pub fn exact(&self) -> Option<&picket_ca::SpiffeId> {
        match self {
            Self::Exact(id) => Some(id),
            Self::AnyIn(_) => None,
        }
    }

    /// The expectation as flow records and spans name it: the SPIFFE ID, or
    /// `spiffe://<trust domain>/*` for any workload of the trust domain.
    pub fn expectation(&self) -> String {
        match self {
            Self::Exact(id) => id.to_string(),
            Self::AnyIn(td) => format!("spiffe://{td}/*"),
        }
    }
}

impl std::fmt::Display for PeerIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Exact(id) => write!(f, "{id}"),
            Self::AnyIn(td) => write!(f, "any identity of {td}"),
        }
    }
}
