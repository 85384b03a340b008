//! `jinryu run` — the Kafka service: a consumer-group member that feeds each assigned partition
//! through the same decode → window → sink stages as file input, and commits per partition.
//!
//! ## Exactly once
//! Each partition has its own [`WindowStage`] (so its own watermark) and is its own writer of the
//! Delta tables ([`crate::sink::checkpoint`]), application id `jinryu-<topic>-<partition>`. An
//! *epoch* is committed by writing its data files and its state object (open windows, late
//! accumulators, retry memory), then one Delta commit per table that adds the files together with
//! the partition's progress (`txn` = next offset to consume). The Kafka offset is committed after
//! that. After a crash the partition's next owner reads the table's progress, loads the state
//! object it names and starts consuming at that offset (set in the assignment itself: the group's
//! committed offset may trail it, or have been moved by an operator). Files of an epoch that
//! never committed are invisible. Nothing is counted twice and nothing is lost; rows that were
//! open at the crash are rebuilt exactly from the stored state plus the records after it.
//!
//! ## Fencing and errors
//! A commit only lands if the partition's progress in the table is still the one this process
//! started from; a process that lost its partition while paused is refused (fenced), as is a
//! second service with another group on the same storage. A revocation librdkafka reports as
//! *lost* is released without a commit. Storage errors are retried with backoff; permanent ones
//! (fenced, a damaged state object, an encoding bug) stop that partition at once: it is logged,
//! counted in `/metrics`, named by `/healthz` (503) and raised as a `partition_stopped` alert.
//!
//! ## Clocks
//! Heartbeats and events move a partition's watermark. A partition that has been quiet for
//! `service.idle_timeout` moves it by wall clock (`now − idle_timeout`), so the last windows of a
//! quiet night are written without traffic. "Quiet" means consumed to the partition's end (as
//! last seen by the client) with nothing arriving for that long *while the service was
//! listening*: a consumer held up by a storage outage or working through a backlog never turns
//! the records waiting for it into late ones (nor forgets their retries). Final rows wait at most `service.flush_interval`;
//! a consuming partition is checkpointed at least every `service.checkpoint_interval`.
//!
//! ## Threads
//! Two stages. The polling thread (`jinryu-consumer`) calls librdkafka's `poll`, which also runs
//! the rebalance callbacks, and copies records out in batches of up to 32,768 records or 16 MiB.
//! The window thread (`jinryu-window`) decodes each batch (large ones on two threads), counts it
//! in its partitions' window stages, runs the clocks and commits. At most four batches wait between the two; beyond
//! that the polling thread waits too (a commit blocked on storage stops consumption).
//! All partition state sits behind one mutex, held by the window thread per batch and per tick
//! and by the rebalance callbacks: a revoked partition is committed inside the callback, after
//! the batch in progress and before it goes to another member, so no write is ever in flight
//! while the group rebalances. Records polled before their partition's revocation are never
//! counted (batches carry the polling thread's revocation count): its next owner — this process
//! again, maybe — reads them from the table's progress. Storage calls run on
//! the tokio runtime (`block_on`), which also serves `/healthz` and `/metrics`.

pub mod metrics;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::{Offset, TopicPartitionList};

use crate::config::{Config, SensorRegistry};
use crate::driver::{Clocks, Driver, Timing, epoch_due, quiet_advance};
use crate::event::{Decoder, Event, Rejection};
use crate::quarantine::{QuarantineRecord, kept};
use crate::sink::checkpoint::{PartitionLog, PartitionTotals};
use crate::sink::store::Storage;
use crate::sink::writer::SinkError;
use crate::source::kafka;
use crate::source::kafka::batch::{Batch, RawRecord};
use crate::window::time::partition_value;
use crate::window::{Admit, WindowStage};
use metrics::{Metrics, PartitionLabel, ReasonLabel};

/// How often the consumer loop runs the clocks when records keep arriving.
const TICK: Duration = Duration::from_millis(250);

/// Batches on their way from the polling thread to the window thread (backpressure beyond).
const IN_FLIGHT: usize = 4;

/// Batches at least this large are decoded on two threads.
const PARALLEL_DECODE_MIN: usize = 1024;

/// One assigned partition.
struct Partition {
    id: i32,
    log: PartitionLog,
    /// The partition's window stage and the rows and quarantine records of the open epoch.
    driver: Driver,
    /// Offset after the last record consumed (the checkpoint's before the first; -1 = none yet).
    next: i64,
    totals: PartitionTotals,
    /// Start of the current quiet period (no record), in time the service was listening.
    last_input: Instant,
    last_commit: Instant,
    /// Consumed anything since the last commit.
    dirty: bool,
    /// Records consumed since the last commit.
    uncommitted: i64,
    /// This partition's record counter in /metrics (looked up once).
    records_metric: prometheus_client::metrics::counter::Counter,
}

/// What every part of the service shares.
struct Shared {
    cfg: Config,
    registry: Arc<SensorRegistry>,
    decoder: Decoder,
    storage: Storage,
    topic: String,
    rt: tokio::runtime::Handle,
    metrics: Arc<Metrics>,
    stop: Arc<AtomicBool>,
    parts: Mutex<BTreeMap<i32, Partition>>,
    /// Revocations so far (changed only by the polling thread, in the rebalance callback).
    generation: AtomicU64,
    /// The generation at which each partition was last revoked: records of a partition polled
    /// before that are never counted (they may trail its checkpoint if the revocation could not
    /// commit; its next owner, maybe this process again, reads them from the checkpoint).
    revoked_at: Mutex<BTreeMap<i32, u64>>,
    /// Milliseconds storage calls spent failing and retrying, not yet taken off the quiet clocks.
    held_up_ms: AtomicU64,
}

/// The service's consumer: librdkafka's callbacks go to [`Shared`].
type GroupConsumer = BaseConsumer<kafka::consumer::Ctx<Shared>>;

impl kafka::consumer::Partitions for Shared {
    fn topic(&self) -> &str {
        &self.topic
    }

    /// Assigned partitions start at the table's progress, whatever the group's committed offset
    /// says.
    fn assign(&self, tpl: &mut TopicPartitionList) {
        Shared::assign(self, tpl)
    }

    /// Revoked partitions are committed before they go (unless lost).
    fn revoke(&self, consumer: &GroupConsumer, tpl: &TopicPartitionList) {
        Shared::revoke(self, consumer, tpl)
    }

    fn lag(&self, per_partition: &[(i32, i64)], total: i64) {
        for (p, lag) in per_partition {
            self.metrics
                .lag
                .get_or_create(&PartitionLabel {
                    partition: p.to_string(),
                })
                .set(*lag);
        }
        self.metrics.set_total_lag(total);
    }

    fn client_error(&self, error: &rdkafka::error::KafkaError, reason: &str) {
        self.metrics.kafka_errors.inc();
        tracing::warn!(%error, reason, "kafka: {reason} (the client retries with backoff; check kafka.brokers and the network)");
    }
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

impl Shared {
    /// Retries a storage call with backoff until it succeeds — or, once the service is stopping,
    /// gives up after `attempts_when_stopping` attempts. A permanent error (fenced, damaged
    /// state, an encoding bug) is never retried: it is returned at once.
    fn retry<T>(
        &self,
        what: &str,
        attempts_when_stopping: u32,
        mut f: impl FnMut() -> Result<T, SinkError>,
    ) -> Result<T, Failure> {
        let mut wait = Duration::from_millis(500);
        let mut attempt = 0;
        let started = Instant::now();
        loop {
            attempt += 1;
            match f() {
                Ok(v) => {
                    if attempt > 1 {
                        // Time lost to failing storage: not time the partitions were quiet.
                        self.held_up_ms
                            .fetch_add(started.elapsed().as_millis() as u64, Ordering::SeqCst);
                    }
                    return Ok(v);
                }
                Err(e) if e.is_permanent() => {
                    return Err(Failure {
                        permanent: true,
                        fenced: e.is_fenced(),
                        message: format!("{what}: {e}"),
                    });
                }
                Err(e) => {
                    self.metrics.storage_errors.inc();
                    if self.stop.load(Ordering::Relaxed) && attempt >= attempts_when_stopping {
                        return Err(Failure {
                            permanent: false,
                            fenced: false,
                            message: format!("{what}: {e}"),
                        });
                    }
                    tracing::error!(error = %e, attempt, retry_in = ?wait, "{what} failed; nothing is committed until it succeeds");
                    std::thread::sleep(wait);
                    self.metrics.alive();
                    wait = (wait * 2).min(Duration::from_secs(30));
                }
            }
        }
    }

    /// Opens newly assigned partitions and sets each one's start to its checkpoint.
    fn assign(&self, tpl: &mut TopicPartitionList) {
        let Ok(mut parts) = self.parts.lock() else {
            tracing::error!("partitions assigned after the window thread failed; not consuming");
            return;
        };
        let ids: Vec<i32> = tpl
            .elements_for_topic(&self.topic)
            .iter()
            .map(|e| e.partition())
            .collect();
        for id in ids {
            if let std::collections::btree_map::Entry::Vacant(slot) = parts.entry(id) {
                match self.open(id) {
                    Ok(p) => {
                        tracing::info!(
                            partition = id,
                            next_offset = p.next,
                            open_windows = p.driver.stage().open_windows(),
                            "partition assigned"
                        );
                        slot.insert(p);
                    }
                    Err(err) => {
                        // Permanent (damaged state), or storage failing while stopping. The
                        // partition's records are left alone: nothing is counted or committed.
                        tracing::error!(partition = id, error = %err.message, "cannot open the partition; it is not consumed by this process");
                        if err.permanent {
                            self.metrics.stop_partition(id, &err);
                        }
                        continue;
                    }
                }
            }
            let next = parts[&id].next;
            if next >= 0
                && let Err(e) = tpl.set_partition_offset(&self.topic, id, Offset::Offset(next))
            {
                tracing::error!(partition = id, error = %e, "cannot start at the checkpoint");
            }
        }
        self.metrics.assigned.set(parts.len() as i64);
    }

    /// Commits and releases revoked partitions.
    fn revoke(&self, consumer: &GroupConsumer, tpl: &TopicPartitionList) {
        let Ok(mut parts) = self.parts.lock() else {
            // The window thread panicked holding the state: commit nothing; the next owner
            // reads every partition from its checkpoint.
            tracing::error!("partitions revoked after the window thread failed; nothing committed");
            return;
        };
        let generation = self.generation.fetch_add(1, Ordering::SeqCst) + 1;
        let mut revoked_at = self.revoked_at.lock().expect("revocation lock");
        for e in tpl.elements_for_topic(&self.topic) {
            revoked_at.insert(e.partition(), generation);
            if let Some(mut p) = parts.remove(&e.partition()) {
                if consumer.assignment_lost() {
                    // Another member may own it already: committing now could overwrite its
                    // progress. Fencing would refuse it anyway; not trying is cleaner.
                    self.metrics.uncommitted_add(-p.uncommitted);
                    tracing::warn!(
                        partition = p.id,
                        "partition lost (session timed out): released without committing; its \
                         next owner re-reads it from the table's progress"
                    );
                    continue;
                }
                let result = self.commit(consumer, &mut p, 5);
                // Whatever was not committed is the next owner's now.
                self.metrics.uncommitted_add(-p.uncommitted);
                match result {
                    Ok(()) => tracing::info!(
                        partition = p.id,
                        next_offset = p.next,
                        "partition revoked: committed and released"
                    ),
                    Err(err) => {
                        if err.permanent {
                            self.metrics.stop_partition(p.id, &err);
                        }
                        tracing::warn!(partition = p.id, error = %err.message, "partition revoked before its last epoch could be stored; its next owner re-reads it from the table's progress")
                    }
                }
            }
        }
        self.metrics.assigned.set(parts.len() as i64);
    }

    fn open(&self, id: i32) -> Result<Partition, Failure> {
        let log = self.retry("reading the partition's progress", 3, || {
            self.rt
                .block_on(PartitionLog::open(self.storage.clone(), &self.topic, id))
        })?;
        let cp = log.committed();
        let stage = WindowStage::restore(self.cfg.window.clone(), self.registry.clone(), &cp.state)
            .map_err(|e| Failure {
                permanent: true,
                fenced: false,
                message: format!("partition {id}: the stored window state cannot be restored: {e}"),
            })?;
        self.metrics.resume_partition(id);
        Ok(Partition {
            id,
            next: cp.next_offset,
            totals: cp.totals.clone(),
            log,
            driver: Driver::new(stage, self.cfg.roll),
            last_input: Instant::now(),
            last_commit: Instant::now(),
            dirty: false,
            uncommitted: 0,
            records_metric: self
                .metrics
                .records
                .get_or_create(&PartitionLabel {
                    partition: id.to_string(),
                })
                .clone(),
        })
    }

    /// Commits everything the partition has emitted, its window state and offset, then the Kafka
    /// offset. On failure nothing changes and the call may be repeated.
    fn commit(
        &self,
        consumer: &GroupConsumer,
        p: &mut Partition,
        attempts_when_stopping: u32,
    ) -> Result<(), Failure> {
        if p.next < 0 && !p.driver.has_output() {
            return Ok(()); // nothing consumed ever
        }
        p.driver.seal();
        let state = p.driver.stage().snapshot();
        let (spec, reg) = (&self.cfg.window, &*self.registry);
        let (rows, quarantine) = p.driver.epoch();
        let (totals, next) = (&p.totals, p.next);
        let log = &mut p.log;
        let written = self.retry("storing an epoch", attempts_when_stopping, || {
            self.rt
                .block_on(log.commit(spec, reg, next, rows, quarantine, state.clone(), totals))
        })?;
        p.totals = p.log.committed().totals.clone();
        p.driver.committed();
        p.dirty = false;
        self.metrics.uncommitted_add(-p.uncommitted);
        self.metrics
            .committed_records
            .inc_by(p.uncommitted.max(0) as u64);
        p.uncommitted = 0;
        p.last_commit = Instant::now();
        self.metrics.committed();
        tracing::debug!(
            partition = p.id,
            next_offset = next,
            rows = written.agg_rows,
            objects = written.objects.len(),
            "epoch committed"
        );
        let mut tpl = TopicPartitionList::new();
        if tpl
            .add_partition_offset(&self.topic, p.id, Offset::Offset(next))
            .is_ok()
            && let Err(e) = consumer.commit(&tpl, CommitMode::Async)
        {
            // The checkpoint is the truth; Kafka's offset only trails it.
            tracing::debug!(partition = p.id, error = %e, "kafka offset commit deferred");
        }
        Ok(())
    }

    /// Counts one record of an assigned partition.
    /// Decodes a batch of records, on two threads when the batch is large (decoding is the
    /// costly part; the window stage then takes the results in offset order).
    fn decode_batch(&self, batch: &Batch, now: i64) -> Vec<Result<Event, Rejection>> {
        let raw: Vec<RawRecord<'_>> = batch.records.iter().map(|r| batch.raw(r)).collect();
        let decode = |part: &[RawRecord<'_>]| -> Vec<_> {
            part.iter()
                .map(|(k, v)| kafka::decode_record(&self.decoder, *k, *v, now))
                .collect()
        };
        if raw.len() < PARALLEL_DECODE_MIN {
            return decode(&raw);
        }
        let (a, b) = raw.split_at(raw.len() / 2);
        std::thread::scope(|s| {
            let first = s.spawn(|| decode(a));
            let second = decode(b);
            let mut out = first.join().expect("decoder thread");
            out.extend(second);
            out
        })
    }

    /// Counts one record of an assigned partition, decoded as `decoded`.
    fn consume(
        &self,
        p: &mut Partition,
        offset: i64,
        payload: Option<&[u8]>,
        decoded: Result<Event, Rejection>,
        taken: &Taken<'_>,
    ) {
        let Taken { now, date, at } = *taken;
        // Assignment starts at the checkpoint, so this only guards against a record delivered
        // twice by the client; it is never counted again.
        if p.next >= 0 && offset < p.next {
            self.metrics.skipped_replayed.inc();
            return;
        }
        p.next = offset + 1;
        p.dirty = true;
        p.last_input = at;
        p.totals.records += 1;
        p.uncommitted += 1;
        self.metrics.uncommitted_add(1);
        p.records_metric.inc();
        p.totals.received(date, decoded.is_err());
        match decoded {
            Ok(ev) => {
                p.totals.accepted += 1;
                self.metrics.accepted.inc();
                self.metrics.heard(ev.sensor, now);
                match p.driver.admit(&ev) {
                    Admit::Late => self.metrics.late.inc(),
                    Admit::Duplicate => self.metrics.duplicates.inc(),
                    Admit::Counted => 0,
                };
            }
            Err(rejection) => {
                p.totals.quarantined += 1;
                *p.totals
                    .reasons
                    .entry(rejection.reason.code().to_string())
                    .or_default() += 1;
                self.metrics
                    .quarantined
                    .get_or_create(&ReasonLabel {
                        reason: rejection.reason.code().to_string(),
                    })
                    .inc();
                let bytes = payload.unwrap_or_default();
                p.driver.reject(QuarantineRecord::new(
                    &self.topic,
                    Some(i64::from(p.id)),
                    offset as u64,
                    rejection,
                    kept(bytes, self.decoder.limits().max_message_bytes),
                    bytes.len() as u64,
                    now,
                ));
            }
        }
    }

    /// Decodes a batch and counts each record in its partition (records of partitions no longer
    /// assigned here are left to their next owner, who reads them from its checkpoint).
    /// Returns whether some partition's buffers reached their roll size.
    fn process(&self, batch: &Batch) -> bool {
        // One clock reading per batch (reading it per record was ~10 % of the CPU profile).
        let now = now_ms();
        let date = partition_value(self.cfg.window.local_date(now));
        let taken = Taken {
            now,
            date: &date,
            at: Instant::now(),
        };
        let decoded = self.decode_batch(batch, now);
        let mut parts = self.parts.lock().expect("partition lock");
        let stale: BTreeMap<i32, u64> = if batch.generation < self.generation.load(Ordering::SeqCst)
        {
            self.revoked_at.lock().expect("revocation lock").clone()
        } else {
            BTreeMap::new()
        };
        for (r, d) in batch.records.iter().zip(decoded) {
            let revoked_since = stale
                .get(&r.partition)
                .is_some_and(|&g| batch.generation < g);
            match parts.get_mut(&r.partition) {
                Some(p) if !revoked_since => self.consume(p, r.offset, batch.value(r), d, &taken),
                _ => tracing::debug!(
                    partition = r.partition,
                    offset = r.offset,
                    "record polled before its partition was revoked; left to its owner"
                ),
            }
        }
        parts.values().any(|p| p.driver.roll_due())
    }

    /// The window thread: takes batches from the polling thread until it stops, and runs the
    /// clocks and commits.
    fn work(&self, consumer: &GroupConsumer, batches: std::sync::mpsc::Receiver<Batch>) {
        use std::sync::mpsc::RecvTimeoutError;
        let mut last_tick = Instant::now();
        loop {
            // Quiet input is measured in time spent listening: time a commit lost retrying
            // against failing storage moves every quiet period's start forward.
            let away = Duration::from_millis(self.held_up_ms.swap(0, Ordering::SeqCst));
            if !away.is_zero() {
                let now = Instant::now();
                for p in self.parts.lock().expect("partition lock").values_mut() {
                    p.last_input = (p.last_input + away).min(now);
                }
            }
            let mut roll_due = false;
            match batches.recv_timeout(TICK) {
                Ok(batch) => roll_due = self.process(&batch),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return,
            }
            // A partition whose buffers are full (rows, or bytes of quarantined messages) is
            // committed now, not at the next tick: the bound holds batch by batch.
            if roll_due || last_tick.elapsed() >= TICK {
                last_tick = Instant::now();
                let mut parts = self.parts.lock().expect("partition lock");
                self.tick(consumer, &mut parts);
            }
        }
    }

    /// Clocks: idle partitions move by wall clock; due partitions are committed.
    fn tick(&self, consumer: &GroupConsumer, parts: &mut BTreeMap<i32, Partition>) {
        let s = &self.cfg.service;
        let now = now_ms();
        let mut stopped: Vec<(i32, Failure)> = Vec::new();
        // All clocks first: a commit below may block on storage, and that time is not quiet input.
        let timing = Timing {
            idle_timeout_ms: s.idle_timeout_ms,
            flush_interval_ms: s.flush_interval_ms,
            checkpoint_interval_ms: s.checkpoint_interval_ms,
        };
        let clocks = |p: &Partition| Clocks {
            now_ms: now,
            quiet_ms: p.last_input.elapsed().as_millis() as i64,
            since_commit_ms: p.last_commit.elapsed().as_millis() as i64,
            dirty: p.dirty,
        };
        for p in parts.values_mut() {
            // The clock rule is `driver::quiet_advance` (unit-tested there).
            let caught_up = || {
                kafka::cached_high_watermark(consumer.client(), &self.topic, p.id)
                    .is_some_and(|end| p.next >= end)
            };
            if let Some(t) = quiet_advance(clocks(p), timing, caught_up) {
                p.driver.advance_to(t);
            }
        }
        for p in parts.values_mut() {
            p.driver.emit_final();
            let due = epoch_due(clocks(p), timing, &p.driver);
            if due && let Err(e) = self.commit(consumer, p, 3) {
                if e.permanent {
                    stopped.push((p.id, e));
                } else {
                    tracing::error!(partition = p.id, error = %e.message, "giving up a commit while stopping");
                }
            }
        }
        for (id, e) in stopped {
            if let Some(p) = parts.remove(&id) {
                self.metrics.uncommitted_add(-p.uncommitted);
            }
            self.metrics.stop_partition(id, &e);
        }
        self.metrics.assigned.set(parts.len() as i64);
    }
}

/// Why a partition's storage call gave up.
#[derive(Debug)]
pub struct Failure {
    /// Retrying cannot help (fenced, damaged state, an encoding bug): the partition stops.
    pub permanent: bool,
    /// A newer writer owns the partition's progress.
    pub fenced: bool,
    pub message: String,
}

/// When a batch was taken: wall clock (ms), its local date, and the monotonic instant.
#[derive(Clone, Copy)]
struct Taken<'a> {
    now: i64,
    date: &'a str,
    at: Instant,
}

/// What a run did, for the exit message.
#[derive(Debug, Default)]
pub struct RunSummary {
    pub partitions_committed: usize,
}

/// A service running on its own thread (see [`spawn`]).
pub struct Running {
    pub metrics: Arc<Metrics>,
    /// Set to stop: every partition is committed, then the thread ends.
    pub stop: Arc<AtomicBool>,
    handle: std::thread::JoinHandle<anyhow::Result<RunSummary>>,
}

impl Running {
    /// Waits for the thread (blocking); a panic becomes an error.
    pub fn join(self) -> anyhow::Result<RunSummary> {
        self.handle
            .join()
            .map_err(|_| anyhow::anyhow!("the consumer thread panicked"))?
    }

    /// Asks the service to stop and waits for it.
    pub fn stop_and_join(self) -> anyhow::Result<RunSummary> {
        self.stop.store(true, Ordering::Relaxed);
        self.join()
    }
}

/// Starts [`run`] on a thread of its own (`jinryu-consumer`); a failure is also recorded in
/// `metrics` so that `/healthz` reports it. `rt` runs the storage calls.
pub fn spawn(
    cfg: Config,
    storage: Storage,
    rt: tokio::runtime::Handle,
    metrics: Arc<Metrics>,
) -> std::io::Result<Running> {
    let stop = Arc::new(AtomicBool::new(false));
    let (m, st) = (metrics.clone(), stop.clone());
    let handle = std::thread::Builder::new()
        .name("jinryu-consumer".into())
        .spawn(move || {
            let r = run(cfg, storage, rt, m.clone(), st);
            if let Err(e) = &r {
                m.fail(format!("{e:#}"));
            }
            r
        })?;
    Ok(Running {
        metrics,
        stop,
        handle,
    })
}

/// The metrics of a configuration's sensors.
pub fn metrics_for(cfg: &Config) -> Arc<Metrics> {
    Metrics::new(
        cfg.registry
            .sensors()
            .iter()
            .map(|s| s.id.clone())
            .collect(),
    )
}

/// Runs the service until `stop` is set (SIGTERM / SIGINT), then commits every partition and
/// leaves the group. Call from a thread outside the runtime behind `rt`.
pub fn run(
    cfg: Config,
    storage: Storage,
    rt: tokio::runtime::Handle,
    metrics: Arc<Metrics>,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<RunSummary> {
    let settings = cfg.kafka.clone().ok_or_else(|| {
        anyhow::anyhow!(
            "the configuration has no [kafka] section; add brokers, topic and group (see docker/jinryu.toml)"
        )
    })?;
    let registry = Arc::new(cfg.registry.clone());
    let shared = Arc::new(Shared {
        decoder: Decoder::new(registry.clone(), cfg.limits.clone()),
        registry,
        storage,
        topic: settings.topic.clone(),
        rt,
        metrics: metrics.clone(),
        stop: stop.clone(),
        parts: Mutex::new(BTreeMap::new()),
        generation: AtomicU64::new(0),
        revoked_at: Mutex::new(BTreeMap::new()),
        held_up_ms: AtomicU64::new(0),
        cfg,
    });
    let client = kafka::client_config(
        &settings,
        &[
            ("group.id", &settings.group),
            ("enable.auto.commit", "false"),
            ("enable.auto.offset.store", "false"),
            ("auto.offset.reset", "earliest"),
            ("enable.partition.eof", "false"),
            ("statistics.interval.ms", "5000"),
            ("max.poll.interval.ms", "600000"),
            // Larger fetches than librdkafka's 1 MB per partition: the bench went from 0.15 to
            // 0.4 M records/s with these (BENCHMARKS.md). Overridable in [kafka.properties].
            ("max.partition.fetch.bytes", "4194304"),
            ("fetch.max.bytes", "67108864"),
            // librdkafka pauses fetching for this long once its local queue is full (default 1 s):
            // the consumer emptied the queue and then sat idle. 0.46 → 0.8 M records/s.
            ("fetch.queue.backoff.ms", "20"),
            ("session.timeout.ms", "30000"),
        ],
    )
    .map_err(anyhow::Error::msg)?;
    let consumer: GroupConsumer = client
        .create_with_context(kafka::consumer::Ctx(shared.clone()))
        .map_err(|e| anyhow::anyhow!(kafka::client_error("consumer", &settings, &e)))?;
    consumer
        .subscribe(&[&settings.topic])
        .map_err(|e| anyhow::anyhow!("cannot subscribe to {}: {e}", settings.topic))?;
    tracing::info!(kafka = %kafka::describe(&settings), storage = %shared.storage.url, "jinryu run: consuming");

    let mut last_poll_error: Option<(String, Instant)> = None;
    let mut poll_error = |e: rdkafka::error::KafkaError| {
        metrics.kafka_errors.inc();
        let text = e.to_string();
        let repeat = last_poll_error
            .as_ref()
            .is_some_and(|(t, at)| *t == text && at.elapsed() < Duration::from_secs(30));
        if !repeat {
            tracing::warn!(error = %text, "kafka: consumer error (retrying; the service catches up when the broker is back)");
            last_poll_error = Some((text, Instant::now()));
        }
    };
    // Two stages on two threads: this one polls librdkafka (and serves its callbacks, rebalances
    // included) and copies records out; the window thread decodes, counts and commits them.
    let (to_window, batches) = std::sync::mpsc::sync_channel::<Batch>(IN_FLIGHT);
    let worker_result = std::thread::scope(|scope| {
        let worker = std::thread::Builder::new()
            .name("jinryu-window".into())
            .spawn_scoped(scope, || shared.work(&consumer, batches))
            .map_err(|e| anyhow::anyhow!("cannot start the window thread: {e}"))?;
        kafka::batch::poll_batches(
            &consumer,
            || !stop.load(Ordering::Relaxed) && !worker.is_finished(),
            || shared.generation.load(Ordering::SeqCst),
            // Fails only when the window thread ended (it only does when it panics).
            |batch| to_window.send(batch).is_ok(),
            &mut poll_error,
            || metrics.alive(),
        );
        drop(to_window);
        worker
            .join()
            .map_err(|_| anyhow::anyhow!("the window thread panicked"))
    });
    worker_result?;

    tracing::info!("stopping: committing every partition");
    let mut summary = RunSummary::default();
    let mut failures = Vec::new();
    {
        let mut parts = shared.parts.lock().expect("partition lock");
        for p in parts.values_mut() {
            match shared.commit(&consumer, p, 3) {
                Ok(()) => summary.partitions_committed += 1,
                Err(e) => failures.push(format!("partition {}: {}", p.id, e.message)),
            }
        }
        let mut tpl = TopicPartitionList::new();
        for p in parts.values().filter(|p| p.next >= 0) {
            let _ = tpl.add_partition_offset(&shared.topic, p.id, Offset::Offset(p.next));
        }
        if tpl.count() > 0
            && let Err(e) = consumer.commit(&tpl, CommitMode::Sync)
        {
            tracing::warn!(error = %e, "kafka offsets not committed at exit; the checkpoints hold them (records below them are skipped on restart)");
        }
        parts.clear();
    }
    consumer.unsubscribe();
    anyhow::ensure!(
        failures.is_empty(),
        "could not store the last epoch of {} partition(s) ({}); nothing of it was committed and it \
         will be read again from Kafka at the next start",
        failures.len(),
        failures.join("; ")
    );
    Ok(summary)
}

/// How often [`maintain`] looks for closed dates to compact.
const MAINTAIN_EVERY: Duration = Duration::from_secs(3600);

/// The tables' upkeep while the service runs: every hour, each closed date with more than one
/// file is compacted (both tables); once a day, quarantine rows past `[retention] quarantine`
/// are expired. Failures are logged and retried at the next round; they never stop consuming.
/// Several processes in one group may both try: one compaction wins, the other's commit
/// conflicts and is skipped.
pub async fn maintain(cfg: Config, storage: Storage, first_after: Duration) {
    use crate::sink::delta::Table;
    use crate::sink::lifecycle;
    tokio::time::sleep(first_after).await;
    let mut last_expiry: Option<Instant> = None;
    loop {
        let now = now_ms();
        for table in Table::ALL {
            let dates = match lifecycle::compactable_dates(&cfg, &storage, table, now).await {
                Ok(d) => d,
                Err(e) => {
                    tracing::warn!(table = table.name(), error = %e, "compaction: cannot list the table's dates; trying again in an hour");
                    continue;
                }
            };
            for d in dates {
                match lifecycle::compact_date(&storage, table, &d).await {
                    Ok(c) => tracing::info!(
                        table = c.table,
                        date = %c.date,
                        files_removed = c.files_removed,
                        files_added = c.files_added,
                        "compacted a closed date"
                    ),
                    Err(e) => {
                        tracing::warn!(table = table.name(), date = %d, error = %e, "compaction failed; trying again in an hour")
                    }
                }
            }
        }
        if last_expiry.is_none_or(|t| t.elapsed() >= Duration::from_secs(86_400)) {
            match lifecycle::expire_quarantine(&cfg, &storage, now).await {
                Ok(dates) if !dates.is_empty() => {
                    tracing::info!(dates = dates.len(), "expired old quarantine dates")
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "quarantine expiry failed; trying again tomorrow")
                }
            }
            last_expiry = Some(Instant::now());
        }
        tokio::time::sleep(MAINTAIN_EVERY).await;
    }
}

/// One condition of [`watch`]: raised once when it starts, resolved once when it ends.
struct Condition {
    kind: &'static str,
    /// What the operator should do while it holds.
    action: &'static str,
    /// What the resolution says.
    cleared: &'static str,
    /// When the current episode started.
    since: Option<i64>,
}

impl Condition {
    /// The alert to route if the condition just started (`holds`, since `start`, with
    /// `evidence`) or just ended.
    fn update(
        &mut self,
        cfg: &Config,
        holds: bool,
        start: i64,
        now: i64,
        evidence: serde_json::Value,
        lag: i64,
    ) -> Option<crate::alerts::Alert> {
        let (start, open, evidence, action) = match (holds, self.since) {
            (true, None) => (start, true, evidence, self.action),
            (false, Some(since)) => (
                since,
                false,
                serde_json::json!({"consumer_lag": lag}),
                self.cleared,
            ),
            _ => return None,
        };
        self.since = open.then_some(start);
        Some(crate::alerts::pipeline_alert(
            cfg, self.kind, start, now, open, evidence, action,
        ))
    }
}

/// Pipeline-level alerts of the running service, evaluated every second on the runtime (so a
/// consumer thread blocked on storage is still noticed):
///
/// * `pipeline_stalled` — records wait (consumed but not committed, or lag in Kafka) and nothing
///   has been committed for `service.stall_after`;
/// * `consumer_lag_growing` — the consumer lag has been above zero and higher than
///   `service.stall_after` ago for that whole time.
///
/// Each is raised once when it starts and resolved once when it ends, through the `[alerts]`
/// routes (stdout, log file, webhook).
pub async fn watch(cfg: Config, metrics: Arc<Metrics>) {
    let stall = cfg.service.stall_after_ms;
    let mut stalled = Condition {
        kind: "pipeline_stalled",
        action: "Records are waiting but nothing has been stored: check the storage (credentials, \
                 space, S3 reachability) and the service log for the failing write.",
        cleared: "Commits resumed; nothing to do.",
        since: None,
    };
    let mut growing = Condition {
        kind: "consumer_lag_growing",
        action: "The service falls behind the gateways: check its CPU and storage latency, or \
                 start another `jinryu run` in the same group to share the partitions.",
        cleared: "The lag stopped growing; nothing to do.",
        since: None,
    };
    let mut stopped = Condition {
        kind: "partition_stopped",
        action: "A partition stopped on a permanent error (fenced by another writer, or a damaged \
                 state object): /healthz names it and the reason. Fenced: make sure only one \
                 service (one group) writes this storage, then restart. Damaged: restore the \
                 state object from object-store versioning or a backup; nothing was deleted.",
        cleared: "Every partition is consuming again; nothing to do.",
        since: None,
    };
    let mut lag_samples: std::collections::VecDeque<(i64, i64)> = Default::default();
    let (outbox, queued) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(deliver_pipeline_alerts(cfg.clone(), queued));
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        let now = now_ms();
        let since_commit = now - metrics.last_commit_ms();
        let is_stalled = metrics.waiting() && since_commit >= stall;
        let lag = metrics.total_lag();
        lag_samples.push_back((now, lag));
        while lag_samples.len() > 1 && lag_samples[1].0 <= now - stall {
            lag_samples.pop_front();
        }
        let old = lag_samples.front().copied();
        let is_growing = old.is_some_and(|(t, l)| {
            t <= now - stall && lag > l && lag_samples.iter().all(|&(_, x)| x > 0)
        });
        let raised: Vec<crate::alerts::Alert> = [
            stalled.update(
                &cfg,
                is_stalled,
                metrics.last_commit_ms(),
                now,
                serde_json::json!({"seconds_since_last_commit": since_commit / 1000, "consumer_lag": lag}),
                lag,
            ),
            growing.update(
                &cfg,
                is_growing,
                old.map_or(now, |o| o.0),
                now,
                serde_json::json!({"consumer_lag": lag, "lag_before": old.map(|o| o.1)}),
                lag,
            ),
            {
                let list = metrics.stopped();
                stopped.update(
                    &cfg,
                    !list.is_empty(),
                    now,
                    now,
                    serde_json::json!({"partitions": list}),
                    lag,
                )
            },
        ]
        .into_iter()
        .flatten()
        .collect();
        for a in raised {
            let _ = outbox.send(a);
        }
    }
}

/// How often undelivered pipeline alerts are tried again.
const REDELIVER_EVERY: Duration = Duration::from_secs(60);

/// Sends the service's pipeline alerts: stdout at once, then the log file, webhook and e-mail; an
/// alert a route did not take is kept and tried again every minute until it is delivered (a
/// newer state of the same alert replaces it). Every failed attempt is logged, once per alert
/// and route per minute at most.
async fn deliver_pipeline_alerts(
    cfg: Config,
    mut queued: tokio::sync::mpsc::UnboundedReceiver<crate::alerts::Alert>,
) {
    use crate::alerts::route::send;
    let routes = cfg.alerts;
    // alert id → (latest content, routes that still need it)
    let mut waiting: BTreeMap<String, (crate::alerts::Alert, Vec<&'static str>)> = BTreeMap::new();
    loop {
        let got = tokio::time::timeout(REDELIVER_EVERY, queued.recv()).await;
        match got {
            Ok(Some(a)) => {
                send("stdout", std::slice::from_ref(&a), &routes);
                let need = crate::alerts::route::configured(&routes);
                if !need.is_empty() {
                    waiting.insert(a.id.clone(), (a, need));
                }
            }
            Ok(None) => return,
            Err(_) => {} // a minute passed: try the waiting ones again
        }
        if waiting.is_empty() {
            continue;
        }
        let batch: Vec<_> = waiting.values().cloned().collect();
        let r = routes.clone();
        let results = tokio::task::spawn_blocking(move || {
            batch
                .into_iter()
                .map(|(a, need)| {
                    let mut d = crate::alerts::route::Delivery::default();
                    for route in need {
                        d.absorb(send(route, std::slice::from_ref(&a), &r));
                    }
                    (a.id.clone(), d)
                })
                .collect::<Vec<_>>()
        })
        .await;
        let Ok(results) = results else { continue };
        for (id, d) in results {
            for e in &d.errors {
                tracing::warn!(alert = %id, error = %e, "pipeline alert not delivered; retrying every minute");
            }
            if let Some((_, need)) = waiting.get_mut(&id) {
                need.retain(|r| !d.delivered.iter().any(|(_, got)| got == r));
                if need.is_empty() {
                    waiting.remove(&id);
                }
            }
        }
    }
}
