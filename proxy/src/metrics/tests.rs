#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
use std::time::Duration;

use http::StatusCode;

use super::*;

#[test]
fn requests_count_in_their_series_and_only_used_series_are_listed() {
    let m = Metrics::new();
    m.request(Direction::Inbound, StatusCode::OK, Duration::from_millis(1));
    m.request(
        Direction::Inbound,
        StatusCode::NO_CONTENT,
        Duration::from_millis(3),
    );
    m.request(
        Direction::Outbound,
        StatusCode::SERVICE_UNAVAILABLE,
        Duration::from_secs(2),
    );
    let text = m.encode();
    let line = |prefix: &str| {
        text.lines()
            .find(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("no {prefix} in\n{text}"))
            .rsplit(' ')
            .next()
            .unwrap()
            .to_owned()
    };
    assert_eq!(
        line("picket_requests_total{direction=\"inbound\",status_class=\"2xx\"}"),
        "2"
    );
    assert_eq!(
        line("picket_requests_total{direction=\"outbound\",status_class=\"5xx\"}"),
        "1"
    );
    assert_eq!(
        line("picket_request_duration_seconds_count{direction=\"inbound\"}"),
        "2"
    );
    assert_eq!(
        line("picket_request_duration_seconds_sum{direction=\"outbound\"}"),
        "2.0"
    );
    // A series no request used is not listed, as before the handles were kept.
    assert!(!text.contains("status_class=\"1xx\""), "{text}");
    assert!(
        !text.contains("direction=\"outbound\",status_class=\"2xx\""),
        "{text}"
    );
}

/// Decisions count in the same series whether their labels were in the kept list or past its
/// size: 40 policies (more than the list keeps), each deciding in turn, some with a dry-run
/// shadow, counted exactly as by label set in the family, and each series listed once.
#[test]
fn decisions_count_in_their_series_past_the_kept_handles() {
    use picket_policy::{Decision, PolicyRef, Reason, Shadow, Verdict};
    let policy = |i: usize| PolicyRef {
        namespace: "shop".into(),
        name: format!("p{i}").into(),
    };
    let decision = |i: usize| Decision {
        verdict: if i.is_multiple_of(2) {
            Verdict::Allow
        } else {
            Verdict::Deny
        },
        reason: if i.is_multiple_of(2) {
            Reason::AllowMatch
        } else {
            Reason::ExplicitDeny
        },
        policy: (!i.is_multiple_of(5)).then(|| policy(i)),
        rule: Some(0),
        shadows: if i.is_multiple_of(7) {
            vec![Shadow {
                policy: policy(100 + i),
                rule: None,
                would: Verdict::Deny,
            }]
        } else {
            Vec::new()
        },
        audit: Vec::new(),
        would_verdict: Verdict::Allow,
    };
    let m = Metrics::new();
    let mut expected = std::collections::BTreeMap::<String, u64>::new();
    for round in 0..3 {
        for i in 0..40 {
            // Later rounds decide each policy once more per round, so counts differ by policy.
            for _ in 0..=(round * (i % 3)) {
                let d = decision(i);
                m.authz_decision(&d);
                let name = d
                    .policy
                    .as_ref()
                    .map_or_else(|| "none".to_owned(), ToString::to_string);
                *expected
                    .entry(format!(
                        "picket_authz_decisions_total{{verdict=\"{}\",policy=\"{name}\",reason=\"{}\",mode=\"enforce\"}}",
                        d.verdict.as_str(),
                        d.reason.as_str()
                    ))
                    .or_default() += 1;
                for s in &d.shadows {
                    *expected
                        .entry(format!(
                            "picket_authz_decisions_total{{verdict=\"deny\",policy=\"{}\",reason=\"dry-run\",mode=\"dry-run\"}}",
                            s.policy
                        ))
                        .or_default() += 1;
                }
            }
        }
    }
    let text = m.encode();
    let listed: std::collections::BTreeMap<String, u64> = text
        .lines()
        .filter(|l| l.starts_with("picket_authz_decisions_total{"))
        .map(|l| {
            let (series, count) = l.rsplit_once(' ').unwrap();
            (series.to_owned(), count.parse().unwrap())
        })
        .collect();
    assert_eq!(
        listed.len(),
        text.lines()
            .filter(|l| l.starts_with("picket_authz_decisions_total{"))
            .count(),
        "a series listed twice:\n{text}"
    );
    assert_eq!(listed, expected, "{text}");
    assert!(
        listed.len() > DecisionSeries::MAX,
        "the test passes the kept list"
    );
}
