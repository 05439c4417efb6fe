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
    // Holding stdout's lock stalls the writer at the first line it takes, so the queue of
    // four fills and stays full: every later line must be dropped, not waited for.
    let stdout = io::stdout().lock();
    let log = FlowLog::start_with_capacity(&cfg, metrics.clone(), 4).unwrap();
    let mut accepted = 0u64;
    for _ in 0..1000 {
        accepted += u64::from(log.write(&serde_json::json!({ "x": "y" })));
    }
    drop(stdout);
    let dropped = metrics.dropped_count(Sink::FlowLog, DropReason::QueueFull);
    assert_eq!(accepted + dropped, 1000);
    // The queue's four lines, and at most one more the writer took before it stalled.
    assert!((4..=5).contains(&accepted), "accepted {accepted}");
}

#[test]
fn an_unwritable_path_fails_at_start() {
    let cfg = file_cfg(Path::new("/nonexistent-dir/flows.jsonl"), 4096, 1);
    assert!(FlowLog::start(&cfg, TelemetryMetrics::default()).is_err());
}
