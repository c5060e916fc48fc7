//! The demo app served through conn-hygiene, with its metrics at `GET /metrics` in
//! Prometheus's text format. Ctrl-C shuts it down and prints the report.
//!
//! ```text
//! cargo run --example metrics_server --features axum,metrics -- [ADDR]   # default 127.0.0.1:3000
//! curl -s 127.0.0.1:3000/metrics | grep conn_hygiene_
//! ```
//!
//! The exporter is `metrics-exporter-prometheus` without its HTTP listener: the
//! route renders the handle itself, after setting the phase gauges from the
//! listener's registry.

mod common;

use std::time::Duration;

use axum::routing::get;
use common::app;
use conn_hygiene::{HalfClose, Listener, Policy, SocketOptions};
use metrics_exporter_prometheus::PrometheusBuilder;

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let handle = PrometheusBuilder::new()
        .install_recorder()
        .expect("no other metrics recorder is installed");
    conn_hygiene::metrics::describe();

    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:3000".into());
    let policy = Policy::builder()
        .idle_timeout(Some(Duration::from_secs(30)))
        .half_close(HalfClose::AllowFor(Duration::from_secs(2)))
        .drain_timeout(Duration::from_secs(5))
        .build()
        .expect("valid policy");
    let listener = Listener::bind(addr.as_str(), SocketOptions::new().nodelay(true), policy)?;
    let registry = listener.registry().clone();
    let scrape = get(move || {
        let (handle, registry) = (handle.clone(), registry.clone());
        async move {
            // The phase gauges are read from the registry at scrape time: exact, and
            // free between scrapes.
            conn_hygiene::metrics::record(&registry.snapshot());
            // Without the exporter's own listener, its upkeep (histogram buckets) is ours.
            handle.run_upkeep();
            handle.render()
        }
    });
    println!("listening on {}", listener.local_addr()?);
    let report = conn_hygiene::serve(listener, app().route("/metrics", scrape))
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    println!("shutdown: {report}");
    Ok(())
}
