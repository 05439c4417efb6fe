//! The detectors' learned state in a small JSON file, so that a restart inherits what the
//! sidecar learned instead of opening a new learning window.
//!
//! Kept: the digest key (edge and rate-limit keys are keyed SipHash digests, so they stay
//! valid only with the same key), when the sidecar first started, the known identities with
//! when each was first seen, the learned edges, the addresses each identity used, the alert
//! rate limits, every burst counter with its learned rate, and every route with the status
//! classes it answered. Not kept: the scan windows, the handshake failure counts and the
//! answers of classes a route has not learned, which cover at most one `window`. Tables keep their insertion
//! order, so eviction continues where it left off.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::{
    Detectors, KnownIdentity, RateEntry, RateState, RouteClasses, class_names, parse_classes,
};
use crate::telemetry::baseline::{Counter, Rate};

/// The state file's format version. Version 1 (without routes) is read too.
pub const STATE_VERSION: u32 = 2;

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Saved {
    version: u32,
    #[serde(with = "time::serde::rfc3339")]
    saved: OffsetDateTime,
    /// The digest key, 32 hex digits.
    key: String,
    /// When the detectors first observed anything, Unix milliseconds.
    started: Option<i64>,
    identities: Vec<SavedIdentity>,
    edges: Vec<u64>,
    addresses: Vec<SavedAddresses>,
    rate_limits: Vec<SavedRateLimit>,
    burst_counters: Vec<SavedCounter>,
    /// Absent in version 1.
    #[serde(default)]
    routes: Vec<SavedRoute>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SavedRoute {
    source: String,
    destination: String,
    route: String,
    /// Unix milliseconds; absent when known from a baseline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    first_seen: Option<i64>,
    status_classes: Vec<String>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SavedIdentity {
    identity: String,
    /// Unix milliseconds; absent when known from a baseline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    first_seen: Option<i64>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SavedAddresses {
    key: u64,
    ips: Vec<IpAddr>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SavedRateLimit {
    key: u64,
    last: i64,
    suppressed: u64,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SavedCounter {
    counter: String,
    source: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    destination: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    route: String,
    rate: Rate,
}

/// What a state file held, for the start-up log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Restored {
    /// Known identities.
    pub identities: usize,
    /// Learned edges.
    pub edges: usize,
    /// Burst counter keys.
    pub burst_counters: usize,
    /// Routes with learned status classes.
    pub routes: usize,
}

fn key_hex(key: [u64; 2]) -> String {
    format!("{:016x}{:016x}", key[0], key[1])
}

fn parse_key(s: &str) -> Option<[u64; 2]> {
    if s.len() != 32 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let a = u64::from_str_radix(s.get(..16)?, 16).ok()?;
    let b = u64::from_str_radix(s.get(16..)?, 16).ok()?;
    Some([a, b])
}

impl Detectors {
    /// The learned state as the JSON of a state file.
    pub fn save_state(&self, now: OffsetDateTime) -> Result<Vec<u8>, serde_json::Error> {
        let saved = Saved {
            version: STATE_VERSION,
            saved: now,
            key: key_hex(self.key),
            started: self.started,
            identities: self
                .identities
                .in_order()
                .map(|(_, i)| SavedIdentity {
                    identity: i.name.to_string(),
                    first_seen: (i.first_seen != i64::MIN).then_some(i.first_seen),
                })
                .collect(),
            edges: self.edges.in_order().map(|(k, ())| k).collect(),
            addresses: self
                .addresses
                .in_order()
                .map(|(key, ips)| SavedAddresses {
                    key,
                    ips: ips.clone(),
                })
                .collect(),
            rate_limits: self
                .rate
                .in_order()
                .map(|(key, r)| SavedRateLimit {
                    key,
                    last: r.last,
                    suppressed: r.suppressed,
                })
                .collect(),
            burst_counters: self
                .rates
                .in_order()
                .map(|(_, r)| SavedCounter {
                    counter: r.counter.as_str().to_owned(),
                    source: r.source.to_string(),
                    destination: r.destination.to_string(),
                    route: r.route.to_string(),
                    rate: r.rate.clone(),
                })
                .collect(),
            routes: self
                .routes
                .in_order()
                .map(|(_, r)| {
                    let (source, destination, route) = r.parts();
                    SavedRoute {
                        source: source.to_owned(),
                        destination: destination.to_owned(),
                        route: route.to_owned(),
                        first_seen: (r.first_seen != i64::MIN).then_some(r.first_seen),
                        status_classes: class_names(r.learned),
                    }
                })
                .collect(),
        };
        let mut out = serde_json::to_vec(&saved)?;
        out.push(b'\n');
        Ok(out)
    }

    /// Replaces everything learned with the state in `json` (what [`Detectors::save_state`]
    /// wrote). Call before loading a baseline: the digest key changes. An error names what
    /// is wrong; the detectors are then unchanged.
    pub fn restore_state(&mut self, json: &[u8]) -> Result<Restored, String> {
        let saved: Saved = serde_json::from_slice(json).map_err(|e| e.to_string())?;
        if !(1..=STATE_VERSION).contains(&saved.version) {
            return Err(format!(
                "version {} is not a supported version (1 to {STATE_VERSION})",
                saved.version
            ));
        }
        let key = parse_key(&saved.key).ok_or("key: write 32 hex digits")?;
        let mut counters = Vec::with_capacity(saved.burst_counters.len());
        for c in &saved.burst_counters {
            let counter = Counter::parse(&c.counter)
                .ok_or_else(|| format!("burst_counters: unknown counter {:?}", c.counter))?;
            counters.push((counter, c));
        }
        let mut routes = Vec::with_capacity(saved.routes.len());
        for (i, r) in saved.routes.iter().enumerate() {
            let mask = parse_classes(&r.status_classes).ok_or_else(|| {
                format!(
                    "routes[{i}].status_classes: {:?} holds a name that is not a status class (1xx to 5xx)",
                    r.status_classes
                )
            })?;
            routes.push((mask, r));
        }
        // Everything is checked: nothing below fails, so a bad file leaves the state as it was.
        let mut fresh = Detectors::new(&self.cfg);
        fresh.key = key;
        fresh.started = saved.started;
        fresh.restore_learned(&saved);
        fresh.restore_counters(counters, routes);
        let restored = Restored {
            identities: fresh.identities.len(),
            edges: fresh.edges.len(),
            burst_counters: fresh.rates.len(),
            routes: fresh.routes.len(),
        };
        *self = fresh;
        Ok(restored)
    }

    /// Fills a fresh table set with the identities, edges, addresses and rate limits of a
    /// checked state file.
    fn restore_learned(&mut self, saved: &Saved) {
        for i in &saved.identities {
            let k = self.digest(&["identity", &i.identity], 0);
            // A state file larger than `max_tracked` keeps its oldest entries; the rest are
            // refused and counted, as new keys of a full table are.
            let _kept = self.identities.entry(k, || KnownIdentity {
                name: i.identity.as_str().into(),
                first_seen: i.first_seen.unwrap_or(i64::MIN),
            });
        }
        for e in &saved.edges {
            let _kept = self.edges.entry(*e, || ());
        }
        for a in &saved.addresses {
            if let Some(ips) = self.addresses.entry(a.key, Vec::new) {
                ips.clone_from(&a.ips);
            }
        }
        for r in &saved.rate_limits {
            self.rate.entry(r.key, || RateState {
                last: r.last,
                suppressed: r.suppressed,
            });
        }
    }

    /// Fills a fresh table set with the burst counters and routes of a checked state file.
    fn restore_counters(
        &mut self,
        counters: Vec<(Counter, &SavedCounter)>,
        routes: Vec<(u8, &SavedRoute)>,
    ) {
        for (counter, c) in counters {
            let k = self.digest(
                &[
                    "rate",
                    counter.as_str(),
                    &c.source,
                    &c.destination,
                    &c.route,
                ],
                0,
            );
            self.rates.entry(k, || RateEntry {
                counter,
                source: c.source.as_str().into(),
                destination: c.destination.as_str().into(),
                route: c.route.as_str().into(),
                rate: c.rate.clone(),
            });
        }
        for (mask, r) in routes {
            let k = self.route_key(&r.source, &r.destination, &r.route);
            let first_seen = r.first_seen.unwrap_or(i64::MIN);
            let _kept = self.routes.entry(k, || {
                let mut entry = RouteClasses::new(&r.source, &r.destination, &r.route, first_seen);
                entry.learned = mask;
                entry
            });
        }
    }
}

#[cfg(test)]
mod tests;
