//! The telemetry metric families: `picket_alerts_total{kind,severity}`,
//! `picket_telemetry_dropped_total{sink,reason}` and
//! `picket_detector_identities_learning_total`, `picket_detector_replica_addresses_total` and
//! `picket_detector_refused_total{table}`.
//! Labels come from fixed sets.

use std::fmt;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

use super::alert::{AlertKind, Severity};
use super::detect::LearnedTable;

/// Where telemetry goes; the `sink` label.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq)]
pub enum Sink {
    /// The flow log writer (flow records and alert lines).
    FlowLog,
    /// OTLP spans.
    Traces,
    /// OTLP log records (alerts).
    Logs,
    /// The alert stream (`telemetry.alerts.path`).
    AlertLog,
    /// The alert webhook (`telemetry.alerts.webhook`).
    AlertWebhook,
}

impl Sink {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::FlowLog => "flow_log",
            Self::Traces => "traces",
            Self::Logs => "logs",
            Self::AlertLog => "alert_log",
            Self::AlertWebhook => "alert_webhook",
        }
    }
}

/// Why telemetry was dropped; the `reason` label.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq)]
pub enum DropReason {
    /// The bounded queue in front of the sink was full.
    QueueFull,
    /// The sink failed (an export error or timeout, a write error).
    SinkFailed,
}

impl DropReason {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::QueueFull => "queue_full",
            Self::SinkFailed => "sink_failed",
        }
    }
}

macro_rules! label_value {
    ($($t:ty),*) => {$(
        impl EncodeLabelValue for $t {
            fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), fmt::Error> {
                fmt::Write::write_str(encoder, self.as_str())
            }
        }
    )*};
}
label_value!(Sink, DropReason, AlertKind, Severity, LearnedTable);

/// Labels of `picket_detector_refused_total`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RefusedLabels {
    /// The full table of learned state.
    pub table: LearnedTable,
}

/// Labels of `picket_alerts_total`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AlertLabels {
    /// What was detected.
    pub kind: AlertKind,
    /// How bad it is.
    pub severity: Severity,
}

/// Labels of `picket_telemetry_dropped_total`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DroppedLabels {
    /// Which sink lost the item.
    pub sink: Sink,
    /// Why.
    pub reason: DropReason,
}

/// Handles on the telemetry metric families. Cloning shares the counters.
#[derive(Debug, Clone, Default)]
pub struct TelemetryMetrics {
    alerts: Family<AlertLabels, Counter>,
    dropped: Family<DroppedLabels, Counter>,
    learning: Counter,
    replicas: Counter,
    refused: Family<RefusedLabels, Counter>,
}

impl TelemetryMetrics {
    /// Registers the telemetry families in `registry` and returns their handles.
    pub fn register(registry: &mut Registry) -> Self {
        let this = Self::default();
        registry.register(
            "picket_alerts",
            "Lateral-movement alerts raised by the detectors, by kind and severity",
            this.alerts.clone(),
        );
        registry.register(
            "picket_telemetry_dropped",
            "Flow records, spans and log records lost because a queue was full or a sink failed",
            this.dropped.clone(),
        );
        registry.register(
            "picket_detector_identities_learning",
            "Source identities whose detector learning window opened (new identities learn, known ones do not)",
            this.learning.clone(),
        );
        registry.register(
            "picket_detector_replica_addresses",
            "New source addresses of known identities that the cluster announces for that identity (replicas: no new_source_address alert)",
            this.replicas.clone(),
        );
        registry.register(
            "picket_detector_refused",
            "New keys a full detector table of learned state refused (what was learned is kept; max_tracked)",
            this.refused.clone(),
        );
        this
    }

    /// Counts `n` new keys `table` refused because it was full.
    pub fn refused(&self, table: LearnedTable, n: u64) {
        self.refused
            .get_or_create(&RefusedLabels { table })
            .inc_by(n);
    }

    /// New keys `table` refused so far.
    pub fn refused_count(&self, table: LearnedTable) -> u64 {
        self.refused
            .get(&RefusedLabels { table })
            .map_or(0, |c| c.get())
    }

    /// Counts one identity whose learning window opened.
    pub fn learning_started(&self) {
        self.learning.inc();
    }

    /// Counts one new source address the cluster announces for the identity presented.
    pub fn replica_address(&self) {
        self.replicas.inc();
    }

    /// Counts one raised alert.
    pub fn alert(&self, kind: AlertKind, severity: Severity) {
        self.alerts
            .get_or_create(&AlertLabels { kind, severity })
            .inc();
    }

    /// Counts `n` items lost by `sink`.
    pub fn dropped(&self, sink: Sink, reason: DropReason, n: u64) {
        self.dropped
            .get_or_create(&DroppedLabels { sink, reason })
            .inc_by(n);
    }

    /// Creates the zero series of `sink`, so that a scrape shows the sink exists before
    /// anything was lost.
    pub fn declare_sink(&self, sink: Sink) {
        for reason in [DropReason::QueueFull, DropReason::SinkFailed] {
            let _ = self.dropped.get_or_create(&DroppedLabels { sink, reason });
        }
    }

    /// Items lost by `sink` for `reason` so far.
    pub fn dropped_count(&self, sink: Sink, reason: DropReason) -> u64 {
        self.dropped
            .get(&DroppedLabels { sink, reason })
            .map_or(0, |c| c.get())
    }

    /// Alerts of `kind` raised so far, over every severity.
    pub fn alert_count(&self, kind: AlertKind) -> u64 {
        [
            Severity::Low,
            Severity::Medium,
            Severity::High,
            Severity::Critical,
        ]
        .into_iter()
        .map(|severity| {
            self.alerts
                .get(&AlertLabels { kind, severity })
                .map_or(0, |c| c.get())
        })
        .sum()
    }
}
