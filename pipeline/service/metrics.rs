//! Self-monitoring of `jinryu run`: `GET /healthz` and `GET /metrics` (Prometheus text format) on
//! `service.listen` (127.0.0.1 by default). The figures are operational — records, rejections,
//! lag, ages — never people counts.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use bytes::Bytes;
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// Seconds after which a consumer loop that has not gone round counts as hung.
const LOOP_HUNG_SECS: i64 = 60;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PartitionLabel {
    pub partition: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct JobLabel {
    pub job: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SensorLabel {
    pub sensor_id: String,
}

/// The service's figures. Counters are updated by the consumer thread; ages are computed when
/// scraped.
pub struct Metrics {
    registry: Registry,
    pub records: Family<PartitionLabel, Counter>,
    pub accepted: Counter,
    pub quarantined: Family<ReasonLabel, Counter>,
    pub late: Counter,
    pub duplicates: Counter,
    pub skipped_replayed: Counter,
    pub commits: Counter,
    pub committed_records: Counter,
    pub storage_errors: Counter,
    pub kafka_errors: Counter,
    pub lag: Family<PartitionLabel, Gauge>,
    pub assigned: Gauge,
    last_heard_age: Family<SensorLabel, Gauge<f64, AtomicU64>>,
    commit_age: Gauge<f64, AtomicU64>,
    /// Wall ms each sensor was last heard (index = registry index; 0 = never).
    last_heard_ms: Vec<AtomicI64>,
    sensor_ids: Vec<String>,
    last_commit_ms: AtomicI64,
    /// Records consumed and not yet committed, over all partitions.
    uncommitted: AtomicI64,
    /// Sum of the partitions' consumer lag (librdkafka statistics), and when it was measured.
    total_lag: AtomicI64,
    lag_at_ms: AtomicI64,
    loop_ms: AtomicI64,
    started_ms: i64,
    /// Set when the consumer thread ended with an error.
    failed: std::sync::Mutex<Option<String>>,
    /// Partitions stopped by a permanent error (fenced, damaged state), with the reason.
    stopped: std::sync::Mutex<std::collections::BTreeMap<i32, String>>,
    pub fenced: Counter,
    pub stopped_partitions: Gauge,
    /// The jobs of `jinryu run` ([jobs]): unix seconds of each one's last start, success and
    /// failure, and the jobs whose last run failed (with the error, for /healthz).
    pub job_last_start: Family<JobLabel, Gauge>,
    pub job_last_success: Family<JobLabel, Gauge>,
    pub job_last_failure: Family<JobLabel, Gauge>,
    failing_jobs: std::sync::Mutex<std::collections::BTreeMap<String, String>>,
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

impl Metrics {
    pub fn new(sensor_ids: Vec<String>) -> Arc<Metrics> {
        let mut registry = Registry::with_prefix("jinryu");
        let m = Metrics {
            records: Family::default(),
            accepted: Counter::default(),
            quarantined: Family::default(),
            late: Counter::default(),
            duplicates: Counter::default(),
            skipped_replayed: Counter::default(),
            commits: Counter::default(),
            committed_records: Counter::default(),
            storage_errors: Counter::default(),
            kafka_errors: Counter::default(),
            lag: Family::default(),
            assigned: Gauge::default(),
            last_heard_age: Family::default(),
            commit_age: Gauge::default(),
            last_heard_ms: sensor_ids.iter().map(|_| AtomicI64::new(0)).collect(),
            sensor_ids,
            last_commit_ms: AtomicI64::new(0),
            uncommitted: AtomicI64::new(0),
            total_lag: AtomicI64::new(0),
            lag_at_ms: AtomicI64::new(0),
            loop_ms: AtomicI64::new(now_ms()),
            started_ms: now_ms(),
            failed: std::sync::Mutex::new(None),
            stopped: Default::default(),
            fenced: Counter::default(),
            stopped_partitions: Gauge::default(),
            job_last_start: Family::default(),
            job_last_success: Family::default(),
            job_last_failure: Family::default(),
            failing_jobs: Default::default(),
            registry: Registry::default(),
        };
        registry.register(
            "job_last_start_seconds",
            "Unix time a job of jinryu run last started",
            m.job_last_start.clone(),
        );
        registry.register(
            "job_last_success_seconds",
            "Unix time a job of jinryu run last succeeded",
            m.job_last_success.clone(),
        );
        registry.register(
            "job_last_failure_seconds",
            "Unix time a job of jinryu run last failed",
            m.job_last_failure.clone(),
        );
        registry.register(
            "records",
            "Kafka records consumed, by partition",
            m.records.clone(),
        );
        registry.register("accepted", "Valid events accepted", m.accepted.clone());
        registry.register(
            "quarantined",
            "Records quarantined, by reason",
            m.quarantined.clone(),
        );
        registry.register(
            "late",
            "Events counted after their window was written (late rows)",
            m.late.clone(),
        );
        registry.register(
            "duplicates",
            "Retries of an event already counted",
            m.duplicates.clone(),
        );
        registry.register(
            "replayed_skipped",
            "Records delivered again below the checkpoint (already committed) and skipped",
            m.skipped_replayed.clone(),
        );
        registry.register(
            "commits",
            "Checkpoints committed (epochs)",
            m.commits.clone(),
        );
        registry.register(
            "committed_records",
            "Records whose epoch this process committed to the tables",
            m.committed_records.clone(),
        );
        registry.register(
            "storage_errors",
            "Failed storage writes (each is retried)",
            m.storage_errors.clone(),
        );
        registry.register(
            "kafka_errors",
            "Errors reported by the Kafka client",
            m.kafka_errors.clone(),
        );
        registry.register(
            "consumer_lag_records",
            "Records in the partition not yet consumed (from librdkafka statistics)",
            m.lag.clone(),
        );
        registry.register(
            "assigned_partitions",
            "Partitions this process owns",
            m.assigned.clone(),
        );
        registry.register(
            "sensor_last_heard_seconds",
            "Seconds since an event or heartbeat of the sensor was consumed by this process",
            m.last_heard_age.clone(),
        );
        registry.register(
            "seconds_since_last_commit",
            "Seconds since the last checkpoint (objects + offsets) was committed",
            m.commit_age.clone(),
        );
        registry.register(
            "fenced",
            "Commits refused because a newer writer owns the partition's progress (the partition stopped here)",
            m.fenced.clone(),
        );
        registry.register(
            "stopped_partitions",
            "Partitions stopped by a permanent error (fenced, damaged state); /healthz is 503 while any is",
            m.stopped_partitions.clone(),
        );
        Arc::new(Metrics { registry, ..m })
    }

    /// A sensor was heard at wall time `now_ms`.
    pub fn heard(&self, sensor: u32, now_ms: i64) {
        if let Some(a) = self.last_heard_ms.get(sensor as usize) {
            a.store(now_ms, Ordering::Relaxed);
        }
    }

    pub fn committed(&self) {
        self.last_commit_ms.store(now_ms(), Ordering::Relaxed);
        self.commits.inc();
    }

    /// Records consumed (positive) or committed / handed to another owner (negative).
    pub fn uncommitted_add(&self, n: i64) {
        self.uncommitted.fetch_add(n, Ordering::Relaxed);
    }

    pub fn set_total_lag(&self, lag: i64) {
        self.total_lag.store(lag, Ordering::Relaxed);
        self.lag_at_ms.store(now_ms(), Ordering::Relaxed);
    }

    pub fn total_lag(&self) -> i64 {
        self.total_lag.load(Ordering::Relaxed)
    }

    /// Whether records wait to be committed: consumed and not committed, or lag in Kafka
    /// measured after the last commit (an older figure may be stale: statistics come every 5 s).
    pub fn waiting(&self) -> bool {
        let commit = self.last_commit_ms.load(Ordering::Relaxed);
        self.uncommitted.load(Ordering::Relaxed) > 0
            || (self.total_lag() > 0 && self.lag_at_ms.load(Ordering::Relaxed) > commit)
    }

    /// Wall ms of the last commit (the start time before the first).
    pub fn last_commit_ms(&self) -> i64 {
        match self.last_commit_ms.load(Ordering::Relaxed) {
            0 => self.started_ms,
            t => t,
        }
    }

    /// The consumer loop went round.
    pub fn alive(&self) {
        self.loop_ms.store(now_ms(), Ordering::Relaxed);
    }

    /// A partition stopped for good (until it is assigned and opened again).
    pub fn stop_partition(&self, partition: i32, why: &super::Failure) {
        if why.fenced {
            self.fenced.inc();
            tracing::error!(partition, error = %why.message, "partition FENCED: another writer committed its progress; this process stops writing it");
        } else {
            tracing::error!(partition, error = %why.message, "partition STOPPED by a permanent error; /healthz is 503 until it is fixed");
        }
        let mut stopped = self.stopped.lock().expect("metrics lock");
        stopped.insert(partition, why.message.clone());
        self.stopped_partitions.set(stopped.len() as i64);
    }

    /// A partition opened cleanly again.
    pub fn resume_partition(&self, partition: i32) {
        let mut stopped = self.stopped.lock().expect("metrics lock");
        stopped.remove(&partition);
        self.stopped_partitions.set(stopped.len() as i64);
    }

    /// Partitions stopped by a permanent error, with the reason.
    pub fn stopped(&self) -> std::collections::BTreeMap<i32, String> {
        self.stopped.lock().expect("metrics lock").clone()
    }

    pub fn fail(&self, why: String) {
        *self.failed.lock().expect("metrics lock") = Some(why);
    }

    /// The Prometheus text exposition.
    pub fn encode(&self) -> String {
        let now = now_ms();
        for (i, id) in self.sensor_ids.iter().enumerate() {
            let t = self.last_heard_ms[i].load(Ordering::Relaxed);
            if t > 0 {
                self.last_heard_age
                    .get_or_create(&SensorLabel {
                        sensor_id: id.clone(),
                    })
                    .set((now - t) as f64 / 1000.0);
            }
        }
        self.commit_age
            .set((now - self.last_commit_ms()) as f64 / 1000.0);
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("encoding to a String");
        out
    }

    /// `/healthz`: 200 while the consumer loop runs, 503 with the reason otherwise.
    /// A job started.
    pub fn job_started(&self, job: &str) {
        self.job_last_start
            .get_or_create(&JobLabel { job: job.into() })
            .set(now_ms() / 1000);
    }

    /// A job ended: `Err` keeps it failing (in /healthz) until it next succeeds.
    pub fn job_ended(&self, job: &str, result: Result<(), String>) {
        let label = JobLabel { job: job.into() };
        let mut failing = self.failing_jobs.lock().expect("metrics lock");
        match result {
            Ok(()) => {
                self.job_last_success
                    .get_or_create(&label)
                    .set(now_ms() / 1000);
                failing.remove(job);
            }
            Err(e) => {
                self.job_last_failure
                    .get_or_create(&label)
                    .set(now_ms() / 1000);
                failing.insert(job.to_string(), e);
            }
        }
    }

    /// Jobs whose last run failed, with the error.
    pub fn failing_jobs(&self) -> std::collections::BTreeMap<String, String> {
        self.failing_jobs.lock().expect("metrics lock").clone()
    }

    pub fn health(&self) -> (StatusCode, String) {
        if let Some(why) = self.failed.lock().expect("metrics lock").clone() {
            return (StatusCode::SERVICE_UNAVAILABLE, format!("failed: {why}\n"));
        }
        let stopped = self.stopped();
        if !stopped.is_empty() {
            let list: Vec<String> = stopped
                .iter()
                .map(|(p, why)| format!("partition {p} stopped: {why}"))
                .collect();
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                format!("{}\n", list.join("\n")),
            );
        }
        let failing = self.failing_jobs();
        if !failing.is_empty() {
            let list: Vec<String> = failing
                .iter()
                .map(|(job, why)| format!("job {job} failed: {why}"))
                .collect();
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                format!("{}\n", list.join("\n")),
            );
        }
        let age = (now_ms() - self.loop_ms.load(Ordering::Relaxed)) / 1000;
        if age > LOOP_HUNG_SECS {
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                format!("the consumer loop has not run for {age} s (storage or broker blocked?)\n"),
            );
        }
        (StatusCode::OK, "ok\n".to_string())
    }

    fn respond(&self, path: &str) -> Response<Full<Bytes>> {
        let (status, body, ctype) = match path {
            "/metrics" => (
                StatusCode::OK,
                self.encode(),
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            ),
            "/healthz" => {
                let (s, b) = self.health();
                (s, b, "text/plain; charset=utf-8")
            }
            _ => (
                StatusCode::NOT_FOUND,
                "try /healthz or /metrics\n".to_string(),
                "text/plain; charset=utf-8",
            ),
        };
        Response::builder()
            .status(status)
            .header("content-type", ctype)
            .body(Full::new(Bytes::from(body)))
            .expect("response")
    }
}

/// Limits of the `/healthz` `/metrics` listener. A scraper or a load balancer's probe needs one
/// short connection; anything slower or more numerous is closed, so that a slow-header client,
/// a connection flood or a file-descriptor shortage cannot take the endpoint (or the process's
/// descriptors, which Kafka and storage sockets share) away.
#[derive(Debug, Clone, Copy)]
pub struct ListenerLimits {
    /// Connections served at once; one more is closed as soon as it is accepted.
    pub max_connections: usize,
    /// Time a client has to send a request's headers.
    pub header_read_timeout: std::time::Duration,
    /// Longest life of one connection (keep-alive included).
    pub connection_lifetime: std::time::Duration,
}

impl Default for ListenerLimits {
    fn default() -> Self {
        ListenerLimits {
            max_connections: 64,
            header_read_timeout: std::time::Duration::from_secs(5),
            connection_lifetime: std::time::Duration::from_secs(30),
        }
    }
}

/// Binds `addr` now (so a busy port is reported at start) and serves until the runtime ends.
pub async fn serve(
    metrics: Arc<Metrics>,
    addr: SocketAddr,
    limits: ListenerLimits,
) -> anyhow::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| {
        anyhow::anyhow!(
            "cannot listen on {addr} for /healthz and /metrics: {e}; set service.listen to a free address"
        )
    })?;
    let local = listener.local_addr()?;
    let slots = Arc::new(tokio::sync::Semaphore::new(limits.max_connections));
    tokio::spawn(async move {
        let mut backoff = std::time::Duration::from_millis(10);
        loop {
            let stream = match listener.accept().await {
                Ok((stream, _)) => {
                    backoff = std::time::Duration::from_millis(10);
                    stream
                }
                Err(e) => {
                    // Typically EMFILE: out of file descriptors. Retrying at once would spin a
                    // core; wait (up to 1 s) for connections to close.
                    tracing::warn!(error = %e, retry_in = ?backoff, "cannot accept a /healthz or /metrics connection");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(std::time::Duration::from_secs(1));
                    continue;
                }
            };
            let Ok(slot) = slots.clone().try_acquire_owned() else {
                drop(stream); // over the cap: closed at once
                continue;
            };
            let m = metrics.clone();
            tokio::spawn(async move {
                // A client that connects and sends nothing holds a slot for the header timeout
                // at most (hyper's own timer starts with the first request line).
                let first = tokio::time::timeout(limits.header_read_timeout, stream.readable());
                if !matches!(first.await, Ok(Ok(()))) {
                    return;
                }
                let svc = service_fn(move |req: Request<hyper::body::Incoming>| {
                    let m = m.clone();
                    async move { Ok::<_, Infallible>(m.respond(req.uri().path())) }
                });
                let conn = http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(limits.header_read_timeout)
                    .serve_connection(TokioIo::new(stream), svc);
                let _ = tokio::time::timeout(limits.connection_lifetime, conn).await;
                drop(slot);
            });
        }
    });
    Ok(local)
}
