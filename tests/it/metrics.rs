//! The metrics a served app records, read back from `metrics-util`'s debugging
//! recorder: accepts, an abandonment with its reason and the cancelled handler, the
//! peer's FIN, the phase gauges and a drain that forces a connection at its deadline.
//!
//! The recorder is local to the test (`support::metrics::recorded`), so no other test
//! sees it.
#![cfg(all(feature = "metrics", feature = "axum"))]

use std::time::Duration;

use conn_hygiene::{HalfClose, Policy};
use metrics_util::MetricKind;
use metrics_util::debugging::DebugValue;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::support::metrics::{Metrics, counter, recorded, value};
use crate::support::server::{Mode, Server};

const GENEROUS: Duration = Duration::from_secs(10);
const STUCK: &[u8] = b"GET /stuck HTTP/1.1\r\nHost: test\r\n\r\n";

fn gauge(metrics: &Metrics, name: &str, labels: &[(&str, &str)]) -> f64 {
    match value(metrics, MetricKind::Gauge, name, labels) {
        DebugValue::Gauge(n) => n.into_inner(),
        other => panic!("{name}: {other:?}"),
    }
}

/// Waits until `check` holds, polling every 10 ms.
async fn eventually(what: &str, check: impl Fn() -> bool) {
    tokio::time::timeout(GENEROUS, async {
        while !check() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{what}: not within {GENEROUS:?}"));
}

#[test]
fn accepts_abandonments_peer_fins_phases_and_drains_are_recorded() {
    let metrics: Metrics = recorded(scenario());

    assert_eq!(
        counter(&metrics, "conn_hygiene_connections_accepted_total", &[]),
        2
    );
    // The first client's FIN under `HalfClose::Abort`: the connection is reset and its
    // busy handler cancelled (a 499).
    assert_eq!(
        counter(
            &metrics,
            "conn_hygiene_peer_closed_total",
            &[("event", "fin")]
        ),
        1
    );
    assert_eq!(
        counter(
            &metrics,
            "conn_hygiene_connections_abandoned_total",
            &[("reason", "peer_fin")]
        ),
        1
    );
    assert_eq!(
        counter(
            &metrics,
            "conn_hygiene_handlers_cancelled_total",
            &[("reason", "peer_fin")]
        ),
        1
    );
    // The second client's handler held the drain: reset at the deadline.
    assert_eq!(
        counter(
            &metrics,
            "conn_hygiene_connections_abandoned_total",
            &[("reason", "drain_deadline")]
        ),
        1
    );
    assert_eq!(counter(&metrics, "conn_hygiene_drains_total", &[]), 1);
    assert_eq!(
        counter(
            &metrics,
            "conn_hygiene_drain_connections_total",
            &[("outcome", "forced")]
        ),
        1
    );
    assert_eq!(
        counter(
            &metrics,
            "conn_hygiene_drain_connections_total",
            &[("outcome", "drained")]
        ),
        0
    );
    match value(
        &metrics,
        MetricKind::Histogram,
        "conn_hygiene_drain_duration_seconds",
        &[],
    ) {
        DebugValue::Histogram(samples) => {
            assert_eq!(samples.len(), 1);
            assert!(samples[0].into_inner() >= 0.2, "{samples:?}");
        }
        other => panic!("drain duration: {other:?}"),
    }
    // The gauges as `record` set them while the second handler was busy: every phase
    // is present, the empty ones at zero.
    assert_eq!(
        gauge(&metrics, "conn_hygiene_connections", &[("phase", "busy")]),
        1.0
    );
    assert_eq!(
        gauge(&metrics, "conn_hygiene_connections", &[("phase", "idle")]),
        0.0
    );
    assert!(
        gauge(
            &metrics,
            "conn_hygiene_connections_oldest_seconds",
            &[("phase", "busy")]
        ) > 0.0
    );
    assert_eq!(
        gauge(&metrics, "conn_hygiene_connections_half_closed_busy", &[]),
        0.0
    );
}

async fn scenario() {
    let policy = Policy::builder()
        .half_close(HalfClose::Abort)
        .drain_timeout(Duration::from_millis(200))
        .build()
        .unwrap();
    let server = Server::builder(Mode::Serve, policy).start().await;
    let (addr, registry) = (server.addr, server.registry.clone());

    // A client that asks, then leaves (FIN) while its handler runs.
    let mut leaving = TcpStream::connect(addr).await.unwrap();
    leaving.write_all(STUCK).await.unwrap();
    eventually("the first handler runs", || {
        registry.connections().iter().any(|c| c.in_flight() > 0)
    })
    .await;
    leaving.shutdown().await.unwrap();
    eventually("the first connection is gone", || registry.is_empty()).await;

    // A client whose handler never answers: it holds the drain.
    let mut staying = TcpStream::connect(addr).await.unwrap();
    staying.write_all(STUCK).await.unwrap();
    eventually("the second handler runs", || {
        registry.connections().iter().any(|c| c.in_flight() > 0)
    })
    .await;
    conn_hygiene::metrics::record(&registry.snapshot());

    let report = server.shutdown().await;
    assert_eq!(report.forced().len(), 1, "{report}");
    drop(staying);
}
