//! Alerts: what the detectors raise, and the ring of recent ones served at admin `/alerts`.

use std::collections::{BTreeMap, VecDeque};
use std::net::IpAddr;
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::flow::LineType;

/// What a detector saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum AlertKind {
    /// A source reached a destination, port or route it was never seen reaching.
    NewEdge,
    /// One source reached many distinct destination ports.
    PortScan,
    /// One source hit many distinct routes that failed (4xx or denied).
    PathScan,
    /// One source reached many distinct destination identities or addresses.
    FanOut,
    /// Many denied requests or connections from one source.
    DenyBurst,
    /// Many 404 answers to one source.
    NotFoundBurst,
    /// Many authentication failures (401, or 403 from the application) of one source on one
    /// route: credential stuffing or a stolen credential tried out.
    AuthFailureBurst,
    /// Plaintext, certificate-less or foreign-certificate connection attempts on the meshed port.
    Unauthenticated,
    /// A known identity connected from an address it was never seen at.
    NewSourceAddress,
    /// An identity bound to known addresses was presented from another address: a stolen
    /// credential used elsewhere.
    ForeignAddress,
    /// A request for a sensitive path (`/admin`, `/.env`, ...).
    SensitivePath,
    /// An outbound call to a cloud metadata address.
    MetadataAccess,
    /// Many requests with an invalid end-user token from one source (a stolen or forged
    /// token being tried, or a broken client).
    InvalidTokenBurst,
    /// A route answered a source with a status class (1xx..5xx) it never answered that source
    /// with after it learned: errors where there were none, or success where there was only
    /// refusal.
    StatusClassNew,
}

impl AlertKind {
    /// Every kind, in a stable order.
    pub const ALL: [AlertKind; 14] = [
        Self::NewEdge,
        Self::PortScan,
        Self::PathScan,
        Self::FanOut,
        Self::DenyBurst,
        Self::NotFoundBurst,
        Self::AuthFailureBurst,
        Self::Unauthenticated,
        Self::NewSourceAddress,
        Self::ForeignAddress,
        Self::SensitivePath,
        Self::MetadataAccess,
        Self::InvalidTokenBurst,
        Self::StatusClassNew,
    ];

    /// The wire name (also the metric label).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NewEdge => "new_edge",
            Self::PortScan => "port_scan",
            Self::PathScan => "path_scan",
            Self::FanOut => "fan_out",
            Self::DenyBurst => "deny_burst",
            Self::NotFoundBurst => "not_found_burst",
            Self::AuthFailureBurst => "auth_failure_burst",
            Self::Unauthenticated => "unauthenticated",
            Self::NewSourceAddress => "new_source_address",
            Self::ForeignAddress => "foreign_address",
            Self::SensitivePath => "sensitive_path",
            Self::MetadataAccess => "metadata_access",
            Self::InvalidTokenBurst => "invalid_token_burst",
            Self::StatusClassNew => "status_class_new",
        }
    }
}

/// How urgent an alert is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Worth a look.
    Low,
    /// Unusual; may be an attack.
    Medium,
    /// Looks like an attack.
    High,
    /// An attack pattern with no benign explanation.
    Critical,
}

impl Severity {
    /// The wire name (also the metric label).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Low => "low",
            Self::Medium => "medium",
            Self::High => "high",
            Self::Critical => "critical",
        }
    }

    /// The OpenTelemetry severity number of a log record carrying this alert.
    pub fn otel(self) -> opentelemetry::logs::Severity {
        use opentelemetry::logs::Severity as S;
        match self {
            Self::Low => S::Info,
            Self::Medium => S::Warn,
            Self::High => S::Error,
            Self::Critical => S::Fatal,
        }
    }
}

/// One detection: what, who, where, the evidence and the window it was counted in.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Alert {
    /// Always [`LineType::Alert`]; written first so flow log readers can tell lines apart.
    #[serde(rename = "type")]
    pub line_type: LineType,
    /// What was detected.
    pub kind: AlertKind,
    /// How urgent.
    pub severity: Severity,
    /// The SPIFFE ID of the source, when it had one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_identity: Option<String>,
    /// The source IP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_address: Option<IpAddr>,
    /// What was reached: `identity:port route`, an address, or a host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination: Option<String>,
    /// Counts behind the alert (`distinct_ports`, `denied`, `suppressed`, ...).
    pub evidence: BTreeMap<String, u64>,
    /// The window the evidence was counted in, seconds (0 for single-event alerts).
    pub window_secs: u64,
    /// The first event counted.
    #[serde(with = "time::serde::rfc3339")]
    pub first_seen: OffsetDateTime,
    /// The event that raised the alert.
    #[serde(with = "time::serde::rfc3339")]
    pub last_seen: OffsetDateTime,
    /// One sentence for people.
    pub summary: String,
}

/// How many recent alerts admin `/alerts` keeps.
pub const RECENT_ALERTS: usize = 256;

/// The newest [`RECENT_ALERTS`] alerts, oldest first.
#[derive(Debug, Default)]
pub struct RecentAlerts {
    ring: Mutex<VecDeque<Alert>>,
}

impl RecentAlerts {
    /// Remembers `alert`, forgetting the oldest one when full.
    pub fn push(&self, alert: &Alert) {
        if let Ok(mut ring) = self.ring.lock() {
            if ring.len() == RECENT_ALERTS {
                ring.pop_front();
            }
            ring.push_back(alert.clone());
        }
    }

    /// A copy of the remembered alerts, oldest first.
    pub fn snapshot(&self) -> Vec<Alert> {
        self.ring
            .lock()
            .map(|r| r.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// `{"alerts":[...]}`, newest last: the body of admin `/alerts`.
    pub fn to_json(&self) -> String {
        #[derive(Serialize)]
        struct Body<'a> {
            alerts: &'a [Alert],
        }
        serde_json::to_string(&Body {
            alerts: &self.snapshot(),
        })
        .unwrap_or_else(|_| "{\"alerts\":[]}".to_owned())
    }
}
