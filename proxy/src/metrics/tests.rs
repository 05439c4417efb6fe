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
