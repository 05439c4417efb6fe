#![allow(clippy::unwrap_used)]
use super::*;

fn file_cfg(path: &Path, max_bytes: u64, max_files: u32) -> FlowLogConfig {
    FlowLogConfig {
        target: FlowLogTarget::File(path.to_owned()),
        max_bytes,
        max_files,
    }
}

fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .map(|s| s.lines().map(str::to_owned).collect())
        .unwrap_or_default()
}

#[tokio::test]
async fn rotates_by_size_and_keeps_max_files() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("flows.jsonl");
    let log = FlowLog::start(&file_cfg(&path, 100, 2), TelemetryMetrics::default()).unwrap();
    // Each line is 28 bytes with its newline: three fit in 100 bytes.
    for i in 0..10u32 {
        assert!(log.write(&serde_json::json!({ "n": format!("{i:019}") })));
    }
    assert!(log.flush(Duration::from_secs(10)).await);
    let current = lines(&path);
    let one = lines(&path.with_extension("jsonl.1"));
    let two = lines(&path.with_extension("jsonl.2"));
    assert!(!path.with_extension("jsonl.3").exists());
    // 10 lines: [0,1,2] [3,4,5] [6,7,8] [9]; the oldest file fell off the end.
    assert_eq!(current.len(), 1, "{current:?}");
    assert_eq!(one.len(), 3, "{one:?}");
    assert_eq!(two.len(), 3, "{two:?}");
    assert!(current[0].contains("0000000000000000009"));
    assert!(one[0].contains("0000000000000000006"));
    assert!(two[0].contains("0000000000000000003"));
    for f in [&path, &path.with_extension("jsonl.1")] {
        assert!(std::fs::metadata(f).unwrap().len() <= 100);
    }
}

#[tokio::test]
async fn appends_to_an_existing_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("flows.jsonl");
    std::fs::write(&path, "{\"old\":1}\n").unwrap();
    let log = FlowLog::start(&file_cfg(&path, 1 << 20, 1), TelemetryMetrics::default()).unwrap();
    log.write(&serde_json::json!({ "new": 2 }));
    assert!(log.flush(Duration::from_secs(10)).await);
    assert_eq!(lines(&path), vec!["{\"old\":1}", "{\"new\":2}"]);
}

#[test]
fn a_full_queue_drops_and_counts_without_blocking() {
    let metrics = TelemetryMetrics::default();
    let cfg = FlowLogConfig {
        target: FlowLogTarget::Stdout,
        max_bytes: 1 << 30,
        max_files: 1,
    };
    // Holding stdout's lock stalls the writer at the first lines it takes, so a buffer of 40
    // bytes (four lines of 10) fills and stays full: every later line must be dropped, not
    // waited for.
    let stdout = io::stdout().lock();
    let log = FlowLog::start_with_capacity(&cfg, metrics.clone(), 40, Sink::FlowLog).unwrap();
    let mut accepted = 0u64;
    for _ in 0..1000 {
        accepted += u64::from(log.write(&serde_json::json!({ "x": "y" })));
    }
    drop(stdout);
    let dropped = metrics.dropped_count(Sink::FlowLog, DropReason::QueueFull);
    assert_eq!(accepted + dropped, 1000);
    // The buffer's four lines, and at most one buffer more the writer took before it stalled.
    assert!((4..=8).contains(&accepted), "accepted {accepted}");
}

/// A record that serializes and one that does not (a timestamp without an RFC 3339 form).
fn records() -> (FlowRecord<'static>, FlowRecord<'static>) {
    use crate::direction::Direction;
    use crate::telemetry::flow::FlowProtocol;
    let ts = time::OffsetDateTime::UNIX_EPOCH;
    let mut good = FlowRecord::new(ts, Direction::Inbound, FlowProtocol::Http1);
    good.path = Some("/a\"b".into());
    let mut bad = good.clone();
    bad.ts = ts.to_offset(time::UtcOffset::from_hms(1, 0, 30).unwrap());
    (good, bad)
}

#[tokio::test]
async fn records_and_lines_keep_their_order_and_a_bad_one_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("flows.jsonl");
    let log = FlowLog::start(&file_cfg(&path, 1 << 20, 1), TelemetryMetrics::default()).unwrap();
    let (good, bad) = records();
    let mut want = Vec::new();
    for i in 0..300u32 {
        if i % 3 == 0 {
            assert!(log.write(&serde_json::json!({ "alert": i })));
            want.push(format!("{{\"alert\":{i}}}"));
        } else {
            let mut r = good.clone();
            r.bytes_in = u64::from(i);
            assert!(log.write_record(&r));
            let mut line = Vec::new();
            r.write_json(&mut line).unwrap();
            want.push(String::from_utf8(line).unwrap());
        }
        // A record or a line that cannot be written is refused whole, between good lines
        // (serde_json writes the map's `{` before it finds the key is not a string).
        assert!(!log.write_record(&bad));
        assert!(!log.write(&std::collections::BTreeMap::from([((1u8, 2u8), 3u8)])));
    }
    assert!(log.flush(Duration::from_secs(10)).await);
    assert_eq!(lines(&path), want);
}

#[tokio::test]
async fn lines_written_before_the_log_is_dropped_reach_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("flows.jsonl");
    let log = FlowLog::start(&file_cfg(&path, 1 << 20, 1), TelemetryMetrics::default()).unwrap();
    for i in 0..50u32 {
        assert!(log.write(&serde_json::json!({ "n": i })));
    }
    drop(log);
    // The writer thread writes what was queued, then exits; wait for it with a deadline.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while lines(&path).len() < 50 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let got = lines(&path);
    assert_eq!(got.len(), 50, "{got:?}");
    assert_eq!(got[49], "{\"n\":49}");
}

#[tokio::test]
async fn a_line_longer_than_the_file_limit_goes_alone_into_a_new_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("flows.jsonl");
    let log = FlowLog::start(&file_cfg(&path, 30, 3), TelemetryMetrics::default()).unwrap();
    let long = "x".repeat(40);
    assert!(log.write(&serde_json::json!({ "a": 1 })));
    assert!(log.write(&serde_json::json!({ "long": long })));
    assert!(log.write(&serde_json::json!({ "b": 2 })));
    assert!(log.write(&serde_json::json!({ "c": 3 })));
    assert!(log.flush(Duration::from_secs(10)).await);
    assert_eq!(lines(&path.with_extension("jsonl.2")), vec!["{\"a\":1}"]);
    assert_eq!(
        lines(&path.with_extension("jsonl.1")),
        vec![format!("{{\"long\":\"{long}\"}}")]
    );
    assert_eq!(lines(&path), vec!["{\"b\":2}", "{\"c\":3}"]);
}

#[test]
fn an_unwritable_path_fails_at_start() {
    let cfg = file_cfg(Path::new("/nonexistent-dir/flows.jsonl"), 4096, 1);
    assert!(FlowLog::start(&cfg, TelemetryMetrics::default()).is_err());
}
