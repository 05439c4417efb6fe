//! User-level edges: which end users (the `iss/sub` of a validated JWT, as the inbound sidecar
//! records it) called which service, bounded to the busiest principals per service.

use serde::Serialize;

use super::read::{Aggregate, UserCounts};

/// Principals listed per service unless told otherwise (`--top-users`).
pub const DEFAULT_TOP_USERS: usize = 10;

/// One end user's requests to one service.
#[derive(Debug, Clone, Serialize)]
pub struct UserEdge {
    /// `iss/sub`.
    pub principal: String,
    /// Requests it made.
    pub requests: u64,
    /// Of which denied.
    pub denied: u64,
}

/// The principals beyond the listed ones, summed.
#[derive(Debug, Clone, Default, Serialize)]
pub struct OtherUsers {
    /// How many distinct principals (a lower bound when `principals_capped`).
    pub principals: u64,
    /// Their requests.
    pub requests: u64,
    /// Of which denied.
    pub denied: u64,
}

/// The end users of one service.
#[derive(Debug, Clone, Serialize)]
pub struct ServiceUsers {
    /// The service's node id.
    pub destination: String,
    /// Distinct principals seen (a lower bound when `principals_capped`).
    pub principals: u64,
    /// More principals called than the analysis keeps per service; their requests are in
    /// `others`, not told apart.
    pub principals_capped: bool,
    /// Requests that carried a principal.
    pub requests: u64,
    /// The busiest principals, most requests first (ties by name).
    pub top: Vec<UserEdge>,
    /// Everyone else, summed.
    pub others: OtherUsers,
}

/// The user-level edges of every service, by destination id, each bounded to `top` principals.
pub(crate) fn user_edges(agg: &Aggregate, top: usize) -> Vec<ServiceUsers> {
    let mut out: Vec<ServiceUsers> = agg
        .users
        .iter()
        .map(|(&dst, users)| {
            let mut all: Vec<(&str, UserCounts)> = users
                .principals
                .iter()
                .map(|(p, c)| (p.as_ref(), *c))
                .collect();
            all.sort_by(|a, b| b.1.requests.cmp(&a.1.requests).then(a.0.cmp(b.0)));
            let capped = users.overflow.requests > 0;
            let mut others = OtherUsers {
                requests: users.overflow.requests,
                denied: users.overflow.denied,
                ..OtherUsers::default()
            };
            for (_, c) in all.iter().skip(top) {
                others.principals += 1;
                others.requests += c.requests;
                others.denied += c.denied;
            }
            let requests =
                all.iter().map(|(_, c)| c.requests).sum::<u64>() + users.overflow.requests;
            ServiceUsers {
                destination: agg.nodes.name(dst).to_owned(),
                principals: all.len() as u64,
                principals_capped: capped,
                requests,
                top: all
                    .iter()
                    .take(top)
                    .map(|(p, c)| UserEdge {
                        principal: (*p).to_owned(),
                        requests: c.requests,
                        denied: c.denied,
                    })
                    .collect(),
                others,
            }
        })
        .collect();
    out.sort_by(|a, b| a.destination.cmp(&b.destination));
    out
}
