//! Prometheus metrics of the server (the text exposition format, served
//! as `/metrics` on the admin listener), kept with `prometheus-client`.
//!
//! Most figures come from the download records themselves: one task
//! subscribes to the log's broadcast ([`Metrics::follow`]), so the serving
//! path pays nothing for them. Fault rules applied are counted where a rule
//! is chosen ([`FaultCounter`], handed to the rule set), package validation
//! time where a package is validated
//! ([`crate::catalog::ValidationTimer`], process-wide: one histogram shared
//! by every server of the process). The rest
//! (connections open, packages valid, the log writer's queue and drops) are
//! read when scraped ([`Scrape`]).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use crate::catalog::validation_seconds;
use crate::dlog::{DownloadRecord, LogHealth, Outcome};

/// A fault rule label (the rule as written, `drop-after=50%,times=1`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RuleLabel {
    rule: String,
}

/// Counts fault rules applied, by rule; cheap to clone (clones share the
/// counters). The rule set holds one ([`crate::serve::fault::FaultSet`]).
#[derive(Clone, Debug, Default)]
pub struct FaultCounter(Family<RuleLabel, Counter>);

impl FaultCounter {
    /// One more attempt hit by `rule` (its text).
    pub fn inc(&self, rule: &str) {
        self.0
            .get_or_create(&RuleLabel {
                rule: rule.to_string(),
            })
            .inc();
    }
}

/// What is read when `/metrics` is scraped.
#[derive(Debug, Clone, Default)]
pub struct Scrape {
    /// Connections open on the package listeners.
    pub connections_open: usize,
    /// Packages in the catalog: `(valid, invalid)`.
    pub packages: (usize, usize),
    /// The download log writer's queue, drops and error state.
    pub log: LogHealth,
    /// Whether the package source (a folder, an object store) was read at
    /// the last scan.
    pub source_up: bool,
}

/// Labels of a download counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DownloadLabels {
    protocol: String,
    outcome: String,
}

/// A protocol label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProtocolLabel {
    protocol: String,
}

/// A package state label (`valid`, `invalid`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabel {
    state: String,
}

/// The server's metrics.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    downloads: Family<DownloadLabels, Counter>,
    bytes_sent: Family<ProtocolLabel, Counter>,
    bytes_acked: Family<ProtocolLabel, Counter>,
    duration: Family<ProtocolLabel, Histogram>,
    failed_logins: Counter,
    refused_connections: Counter,
    connections_open: Gauge,
    packages: Family<StateLabel, Gauge>,
    records_missed: Counter,
    faults_applied: FaultCounter,
    log_queued: Gauge,
    log_dropped: Counter,
    /// `log_dropped` as of the last scrape (the writer counts absolutes).
    log_dropped_seen: AtomicU64,
    log_writable: Gauge,
    source_up: Gauge,
}

impl Metrics {
    /// A registry with every metric at zero.
    pub fn new() -> Arc<Self> {
        let mut registry = Registry::with_prefix("qfota");
        let downloads = Family::<DownloadLabels, Counter>::default();
        registry.register(
            "downloads",
            "Download attempts by protocol and outcome (one per record)",
            downloads.clone(),
        );
        let bytes_sent = Family::<ProtocolLabel, Counter>::default();
        registry.register(
            "body_bytes_sent",
            "Package bytes written to connections",
            bytes_sent.clone(),
        );
        let bytes_acked = Family::<ProtocolLabel, Counter>::default();
        registry.register(
            "body_bytes_acked",
            "Package bytes the peers' TCP stacks acknowledged",
            bytes_acked.clone(),
        );
        let duration = Family::<ProtocolLabel, Histogram>::new_with_constructor(|| {
            // 50 ms to about 3.6 h: cellular downloads take minutes.
            Histogram::new(exponential_buckets(0.05, 2.0, 18))
        });
        registry.register(
            "download_duration_seconds",
            "Duration of downloads with a body, to the last acknowledgement",
            duration.clone(),
        );
        let failed_logins = Counter::default();
        registry.register("failed_logins", "Failed FTP logins", failed_logins.clone());
        let refused_connections = Counter::default();
        registry.register(
            "connections_refused",
            "Connections refused over --max-connections or --max-connections-per-ip",
            refused_connections.clone(),
        );
        let connections_open = Gauge::default();
        registry.register(
            "connections_open",
            "Connections open on the package listeners",
            connections_open.clone(),
        );
        let packages = Family::<StateLabel, Gauge>::default();
        registry.register(
            "packages",
            "Packages in the catalog by validity",
            packages.clone(),
        );
        let records_missed = Counter::default();
        registry.register(
            "records_missed",
            "Download records the metrics task fell behind on (not counted above)",
            records_missed.clone(),
        );
        registry.register(
            "package_validation_seconds",
            "Time to validate one package (SHA-256, zip check, family verdicts), every server of the process",
            validation_seconds(),
        );
        let faults_applied = FaultCounter::default();
        registry.register(
            "fault_rules_applied",
            "Attempts a server fault rule was applied to, by rule",
            faults_applied.0.clone(),
        );
        let log_queued = Gauge::default();
        registry.register(
            "log_records_queued",
            "Download records waiting for the log file (not yet written)",
            log_queued.clone(),
        );
        let log_dropped = Counter::default();
        registry.register(
            "log_records_dropped",
            "Download records dropped before reaching the log file (queue full)",
            log_dropped.clone(),
        );
        let log_writable = Gauge::default();
        registry.register(
            "log_writable",
            "1 while the download log takes writes, 0 after a failed write or reopen",
            log_writable.clone(),
        );
        let source_up = Gauge::default();
        registry.register(
            "package_source_up",
            "1 while the package source (folder or object store) was read at the last scan, 0 while it cannot be (cached packages are still served)",
            source_up.clone(),
        );
        Arc::new(Metrics {
            registry,
            downloads,
            bytes_sent,
            bytes_acked,
            duration,
            failed_logins,
            refused_connections,
            connections_open,
            packages,
            records_missed,
            faults_applied,
            log_queued,
            log_dropped,
            log_dropped_seen: AtomicU64::new(0),
            log_writable,
            source_up,
        })
    }

    /// The counter of fault rules applied, for the rule set to count into.
    pub fn fault_counter(&self) -> FaultCounter {
        self.faults_applied.clone()
    }

    /// Counts one download record: the attempts it stands for
    /// ([`DownloadRecord::attempts`]: a `refused` record over a connection
    /// limit can stand for several).
    pub fn observe(&self, record: &DownloadRecord) {
        let protocol = record.protocol.as_str().to_string();
        self.downloads
            .get_or_create(&DownloadLabels {
                protocol: protocol.clone(),
                outcome: record.outcome.as_str().to_string(),
            })
            .inc_by(record.attempts());
        if record.outcome == Outcome::AuthFailed {
            self.failed_logins.inc();
        }
        if record.bytes_sent > 0 {
            let label = ProtocolLabel { protocol };
            self.bytes_sent
                .get_or_create(&label)
                .inc_by(record.bytes_sent);
            self.bytes_acked
                .get_or_create(&label)
                .inc_by(record.bytes_acked);
            self.duration
                .get_or_create(&label)
                .observe(record.duration_ms as f64 / 1000.0);
        }
    }

    /// Counts a connection refused over a limit.
    pub fn refused_connection(&self) {
        self.refused_connections.inc();
    }

    /// Counts every record from `records` until `cancel` fires.
    pub async fn follow(
        self: Arc<Self>,
        mut records: broadcast::Receiver<DownloadRecord>,
        cancel: CancellationToken,
    ) {
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                next = records.recv() => match next {
                    Ok(record) => self.observe(&record),
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        self.records_missed.inc_by(n);
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                },
            }
        }
    }

    /// The text exposition, with the scrape-time figures set from `now`.
    pub fn render(&self, now: &Scrape) -> String {
        let gauge = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
        self.connections_open
            .set(gauge(now.connections_open as u64));
        self.log_queued.set(gauge(now.log.queued));
        self.log_writable.set(i64::from(now.log.error.is_none()));
        self.source_up.set(i64::from(now.source_up));
        let seen = self
            .log_dropped_seen
            .swap(now.log.dropped, Ordering::Relaxed);
        self.log_dropped
            .inc_by(now.log.dropped.saturating_sub(seen));
        let packages = now.packages;
        for (state, n) in [("valid", packages.0), ("invalid", packages.1)] {
            self.packages
                .get_or_create(&StateLabel {
                    state: state.into(),
                })
                .set(i64::try_from(n).unwrap_or(i64::MAX));
        }
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dlog::{Attempt, Protocol};

    #[test]
    fn records_become_counters_and_a_histogram() {
        let metrics = Metrics::new();
        let mut a = Attempt::start(Protocol::Http, "127.0.0.1:1".parse().unwrap(), "p.zip");
        a.bytes_sent = 1000;
        a.bytes_acked = 600;
        metrics.observe(&a.record(200, Outcome::Aborted, "cut"));
        let login = Attempt::start(Protocol::Ftp, "127.0.0.1:2".parse().unwrap(), "");
        metrics.observe(&login.record(530, Outcome::AuthFailed, "wrong password"));
        metrics.refused_connection();
        metrics.fault_counter().inc("status=503,times=1");
        drop(crate::catalog::ValidationTimer::start());
        let scrape = Scrape {
            connections_open: 3,
            packages: (2, 1),
            log: LogHealth {
                queued: 4,
                dropped: 5,
                error: Some("full".into()),
            },
            source_up: false,
        };
        let text = metrics.render(&scrape);
        for line in [
            "qfota_downloads_total{protocol=\"http\",outcome=\"aborted\"} 1",
            "qfota_body_bytes_sent_total{protocol=\"http\"} 1000",
            "qfota_body_bytes_acked_total{protocol=\"http\"} 600",
            "qfota_failed_logins_total 1",
            "qfota_connections_refused_total 1",
            "qfota_connections_open 3",
            "qfota_packages{state=\"invalid\"} 1",
            "qfota_download_duration_seconds_count{protocol=\"http\"} 1",
            "qfota_fault_rules_applied_total{rule=\"status=503,times=1\"} 1",
            "qfota_log_records_queued 4",
            "qfota_log_records_dropped_total 5",
            "qfota_log_writable 0",
            "qfota_package_source_up 0",
        ] {
            assert!(text.contains(line), "{line} missing from\n{text}");
        }
        assert!(
            text.contains("qfota_package_validation_seconds_count "),
            "{text}"
        );
        // Drops are counted once however often scraped.
        let again = metrics.render(&scrape);
        assert!(
            again.contains("qfota_log_records_dropped_total 5"),
            "{again}"
        );
    }
}
