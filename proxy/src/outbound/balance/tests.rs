#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use super::*;
use crate::config::BalancerSettings;
use crate::discover::{Destination, Endpoint as Listed, Resolution};
use crate::metrics::Metrics;

const TAU: Duration = Duration::from_secs(10);

fn addr(i: u8) -> SocketAddr {
    SocketAddr::from(([10, 0, 0, i], 8080))
}

/// A destination of `n` endpoints without sidecars: the pick logic without TLS contexts.
fn destination(n: u8) -> Destination {
    Destination {
        service: Some("shop/orders".into()),
        endpoints: (1..=n)
            .map(|i| Listed {
                address: addr(i),
                identity: None,
            })
            .collect(),
    }
}

fn no_tls(_: SocketAddr, _: SpiffeId) -> Option<UpstreamCtx> {
    None
}

fn known(d: Destination) -> (watch::Sender<Resolution>, Balanced, Arc<EndpointSet>) {
    let (tx, rx) = watch::channel(Resolution::Known(Arc::new(d)));
    let b = Balanced::new("10.96.0.10:80".parse().unwrap(), rx);
    let Current::Known(set) = b.current(&no_tls) else {
        panic!("not known")
    };
    (tx, b, set)
}

/// The answer once the follower has seen the source's new one (it runs as its own task).
async fn followed(b: &Balanced, done: impl Fn(&Current) -> bool) -> Current {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let c = b.current(&no_tls);
        if done(&c) {
            return c;
        }
        assert!(Instant::now() < deadline, "the new answer was not followed");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

fn tuning(failures: u32, backoff: Duration) -> (Arc<Metrics>, Arc<Tuning>) {
    let metrics = Arc::new(Metrics::new());
    let settings = BalancerSettings {
        failures,
        backoff,
        backoff_max: backoff,
        ..BalancerSettings::default()
    };
    (
        Arc::clone(&metrics),
        Arc::new(Tuning::new(settings, metrics)),
    )
}

fn counted(metrics: &Metrics, decision: &str) -> u64 {
    let line = format!("picket_balancer_decisions_total{{decision=\"{decision}\"}} ");
    metrics
        .encode()
        .lines()
        .find_map(|l| l.strip_prefix(&line)?.parse().ok())
        .unwrap_or(0)
}

fn observe(e: &Endpoint, ms: u64) {
    e.latency
        .lock()
        .unwrap()
        .observe(Duration::from_millis(ms), Instant::now(), TAU);
}

#[tokio::test]
async fn a_slow_endpoint_loses_every_draw_it_is_in() {
    let (_tx, _b, set) = known(destination(3));
    let (_, tuning) = tuning(5, Duration::from_secs(1));
    observe(&set.unmeshed[0], 1);
    observe(&set.unmeshed[1], 1);
    observe(&set.unmeshed[2], 20);
    let mut counts = [0u32; 3];
    for _ in 0..300 {
        let lease = set.pick(Pool::All, &tuning).expect("an endpoint");
        let i = set
            .unmeshed
            .iter()
            .position(|e| Arc::ptr_eq(e, &lease.endpoint))
            .unwrap();
        counts[i] += 1;
        lease.finish(Outcome::Neutral);
    }
    assert_eq!(counts[2], 0, "{counts:?}");
    // Between the two fast ones the one with the lower estimate wins: 2/3 and 1/3 of 300.
    assert!(counts[0] > 50 && counts[1] > 50, "{counts:?}");
    // Meshed endpoints only: none here.
    assert!(set.pick(Pool::Meshed, &tuning).is_none());
}

#[tokio::test]
async fn requests_in_flight_spread_picks_over_equal_endpoints() {
    let (_tx, _b, set) = known(destination(3));
    let (metrics, tuning) = tuning(5, Duration::from_secs(1));
    for e in &set.unmeshed {
        observe(e, 2);
    }
    // Leases held: each pick raises the load of the endpoint it chose.
    let leases: Vec<Lease> = (0..30)
        .map(|_| set.pick(Pool::All, &tuning).unwrap())
        .collect();
    for e in &set.unmeshed {
        let n = leases
            .iter()
            .filter(|l| Arc::ptr_eq(&l.endpoint, e))
            .count();
        assert!((7..=13).contains(&n), "{} took {n} of 30", e.addr);
        assert_eq!(e.pending.load(Ordering::Relaxed) as usize, n);
    }
    drop(leases);
    assert!(
        set.unmeshed
            .iter()
            .all(|e| e.pending.load(Ordering::Relaxed) == 0)
    );
    assert_eq!(counted(&metrics, "chosen"), 30);
}

#[tokio::test]
async fn failures_in_a_row_set_an_endpoint_aside_until_a_probe_succeeds() {
    let (_tx, _b, set) = known(destination(1));
    let (metrics, tuning) = tuning(3, Duration::from_millis(40));
    // A success between failures resets the count.
    for outcome in [Outcome::Failed, Outcome::Failed, Outcome::Answered] {
        set.pick(Pool::All, &tuning).unwrap().finish(outcome);
    }
    for _ in 0..2 {
        set.pick(Pool::All, &tuning)
            .unwrap()
            .finish(Outcome::Failed);
    }
    assert!(set.unmeshed[0].health.ready());
    set.pick(Pool::All, &tuning)
        .unwrap()
        .finish(Outcome::Failed);
    assert!(
        !set.unmeshed[0].health.ready(),
        "set aside after 3 in a row"
    );
    assert_eq!(counted(&metrics, "set_aside"), 1);
    // Once due, one probe goes; while it is in flight no other pick gets the endpoint.
    let deadline = Instant::now() + Duration::from_secs(5);
    let probe = loop {
        if let Some(l) = set.pick(Pool::All, &tuning) {
            break l;
        }
        assert!(Instant::now() < deadline, "no probe within the backoff");
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    assert!(probe.probe);
    assert!(set.pick(Pool::All, &tuning).is_none());
    // A failed probe sets it aside again; an abandoned one is handed back.
    probe.finish(Outcome::Failed);
    assert_eq!(counted(&metrics, "set_aside"), 2);
    let probe = loop {
        if let Some(l) = set.pick(Pool::All, &tuning) {
            break l;
        }
        assert!(Instant::now() < deadline, "no second probe");
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    drop(probe);
    let probe = set
        .pick(Pool::All, &tuning)
        .expect("the abandoned probe is due again");
    probe.finish(Outcome::Answered);
    assert!(set.unmeshed[0].health.ready());
    assert_eq!(counted(&metrics, "probed_back"), 1);
}

#[tokio::test]
async fn peak_ewma_takes_peaks_at_once_and_lower_samples_gradually() {
    let start = Instant::now();
    let mut e = PeakEwma::new(start);
    assert!((e.estimate(start, TAU) - 30e6).abs() < 1.0, "default rtt");
    // The first answer replaces the default, even when lower.
    e.observe(Duration::from_millis(2), start, TAU);
    assert!((e.estimate(start, TAU) - 2e6).abs() < 1.0);
    // A peak replaces the estimate at once.
    e.observe(
        Duration::from_millis(50),
        start + Duration::from_millis(1),
        TAU,
    );
    let at = start + Duration::from_millis(1);
    assert!((e.estimate(at, TAU) - 50e6).abs() < 1.0);
    // One low sample a second later pulls it down by 1 - e^(-1/10) only.
    let later = at + Duration::from_secs(1);
    e.observe(Duration::from_millis(2), later, TAU);
    let expected = 50e6 * (-0.1f64).exp() + 2e6 * (1.0 - (-0.1f64).exp());
    assert!(
        (e.estimate(later, TAU) - expected).abs() < 1e3,
        "{}",
        e.estimate(later, TAU)
    );
    // Idle, it fades towards zero (an endpoint avoided is tried again).
    assert!(e.estimate(later + Duration::from_secs(120), TAU) < 1e5);
}

#[tokio::test]
async fn a_new_answer_keeps_the_endpoints_that_stay() {
    let (tx, b, set) = known(destination(2));
    let kept = Arc::clone(&set.unmeshed[1]);
    let mut next = destination(3);
    next.endpoints.remove(0);
    tx.send(Resolution::Known(Arc::new(next))).unwrap();
    let newer = followed(
        &b,
        |c| matches!(c, Current::Known(s) if s.unmeshed.iter().any(|e| e.addr == addr(3))),
    )
    .await;
    let Current::Known(newer) = newer else {
        panic!("not known")
    };
    assert_eq!(newer.unmeshed.len(), 2);
    assert!(Arc::ptr_eq(&newer.unmeshed[0], &kept));
    assert_eq!(newer.unmeshed[1].addr, addr(3));
    // The same answer again is the same set, not a rebuild.
    let Current::Known(same) = b.current(&no_tls) else {
        panic!("not known")
    };
    assert!(Arc::ptr_eq(&same, &newer));
    tx.send(Resolution::Unknown).unwrap();
    followed(&b, |c| matches!(c, Current::Unknown)).await;
}

#[tokio::test]
async fn an_endpoint_whose_identity_is_no_spiffe_id_is_left_out() {
    let mut d = destination(1);
    d.endpoints.push(Listed {
        address: addr(9),
        identity: Some("not-an-id".into()),
    });
    let (_tx, _b, set) = known(d);
    assert_eq!(set.unmeshed.len(), 1);
    assert!(set.meshed.is_empty());
}

#[tokio::test]
async fn pending_answers_are_waited_for_briefly() {
    let (tx, rx) = watch::channel(Resolution::Pending);
    let b = Balanced::new("10.96.0.10:80".parse().unwrap(), rx);
    assert!(!b.settle(Duration::from_millis(20)).await);
    let answer = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(20)).await;
        tx.send(Resolution::Unknown).unwrap();
        tx
    });
    assert!(b.settle(Duration::from_secs(10)).await);
    drop(answer.await.unwrap());
}

#[test]
fn log_lines_are_rate_limited_and_count_what_they_left_out() {
    let limit = LogLimit::default();
    assert_eq!(limit.allow(), Some(0));
    assert_eq!(limit.allow(), None);
    assert_eq!(limit.allow(), None);
    assert_eq!(limit.state.lock().unwrap().1, 2);
}
