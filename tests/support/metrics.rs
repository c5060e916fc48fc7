//! Metrics recorded by a scenario, read back from `metrics-util`'s debugging recorder.
//!
//! The recorder is local to this thread and the scenario runs on a current-thread
//! runtime on it, so no other test sees it.

use std::future::Future;

use metrics_util::debugging::{DebugValue, DebuggingRecorder};
use metrics_util::{CompositeKey, MetricKind};

pub(crate) type Metrics = Vec<(CompositeKey, DebugValue)>;

/// Runs `scenario` on a current-thread runtime with a recorder of its own, and
/// returns what it recorded.
pub(crate) fn recorded(scenario: impl Future<Output = ()>) -> Metrics {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    metrics::with_local_recorder(&recorder, || runtime.block_on(scenario));
    snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .map(|(key, _, _, value)| (key, value))
        .collect()
}

/// The value of the metric `name` of `kind` with exactly `labels`.
pub(crate) fn value<'m>(
    metrics: &'m Metrics,
    kind: MetricKind,
    name: &str,
    labels: &[(&str, &str)],
) -> &'m DebugValue {
    metrics
        .iter()
        .find(|(key, _)| {
            let key_labels: Vec<(&str, &str)> =
                key.key().labels().map(|l| (l.key(), l.value())).collect();
            key.kind() == kind && key.key().name() == name && key_labels == labels
        })
        .map(|(_, value)| value)
        .unwrap_or_else(|| panic!("no {kind:?} {name}{labels:?} in {metrics:#?}"))
}

/// The counter `name` with exactly `labels`.
pub(crate) fn counter(metrics: &Metrics, name: &str, labels: &[(&str, &str)]) -> u64 {
    match value(metrics, MetricKind::Counter, name, labels) {
        DebugValue::Counter(n) => *n,
        other => panic!("{name}: {other:?}"),
    }
}
