//! The pipeline run for one input: source → decode → window → sink, with the run's accounting.
//!
//! `jinryu ingest` and `jinryu demo` call [`ingest`]. Every input line ends up in exactly one of:
//! blank (skipped), quarantined (with a reason), duplicate (a retry, counted once already) or counted
//! (in a window row, possibly a late one). The [`Report`] shows that
//! `lines = blank + quarantined + accepted` and `accepted = counted + duplicates`.

use std::io::Read;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::config::Config;
use crate::driver::Driver;
use crate::event::Decoder;
use crate::quarantine::QuarantineRecord;
use crate::sink::store::Storage;
use crate::sink::writer::{SinkError, SourceWriter};
use crate::source::file::{self, Decoded};
use crate::window::{AggRow, WindowStage};

/// What one ingest run did.
#[derive(Debug, Default, Clone, Serialize, PartialEq, Eq)]
pub struct Report {
    pub source: String,
    pub lines: u64,
    pub blank: u64,
    /// Valid messages: counted + duplicates.
    pub accepted: u64,
    /// Valid messages counted in a window (late ones included).
    pub counted: u64,
    /// Counted after their window was final (in rows marked `late`).
    pub late: u64,
    /// Retries of an already counted message.
    pub duplicates: u64,
    /// Ranges of retry memory forgotten (sequence numbers scattered beyond the bound per window).
    pub retry_memory_forgotten: u64,
    pub quarantined: u64,
    pub quarantine_reasons: std::collections::BTreeMap<&'static str, u64>,
    /// People in the counted messages.
    pub people: u64,
    pub rows_written: u64,
    pub objects_written: u64,
    /// Files of the same source's earlier run removed by this run's commit (a re-run replaces).
    pub stale_objects_removed: u64,
    pub bytes: u64,
    /// The aggregates table's version after this run's commit.
    pub table_version: u64,
}

impl Report {
    /// Whether every line is accounted for.
    pub fn balanced(&self) -> bool {
        self.lines == self.blank + self.quarantined + self.accepted
            && self.accepted == self.counted + self.duplicates
    }
}

/// Options of one run.
#[derive(Debug, Clone)]
pub struct IngestOptions {
    /// The input's application id in the tables: a re-run under the same id replaces the earlier
    /// run's rows. With [`IngestOptions::content_id`], the prefix of an id derived from the input.
    pub source_id: String,
    /// Derive the id from the input's content (`<source_id>-<sha256 prefix>`): stdin without an
    /// explicit id, so that re-running the same input replaces instead of adding.
    pub content_id: bool,
    /// Decoder threads.
    pub workers: usize,
    /// Log progress this often.
    pub progress_every: Duration,
}

impl IngestOptions {
    pub fn new(source_id: &str) -> Self {
        IngestOptions {
            source_id: source_id.to_string(),
            content_id: false,
            workers: std::thread::available_parallelism().map_or(2, |n| n.get()),
            progress_every: Duration::from_secs(5),
        }
    }
}

/// Makes a string safe as a source id (it appears in object names).
pub fn sanitize_source_id(s: &str) -> String {
    let id: String = s
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .take(80)
        .collect();
    if id.is_empty() { "input".into() } else { id }
}

/// A reader that hashes what passes through it (the content-derived source id).
struct Hashing<R> {
    inner: R,
    hasher: Arc<std::sync::Mutex<sha2::Sha256>>,
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        use sha2::Digest;
        let n = self.inner.read(buf)?;
        self.hasher.lock().expect("hasher lock").update(&buf[..n]);
        Ok(n)
    }
}

/// The table writer, one epoch behind the window stage: an epoch's files are encoded and stored by
/// a task of its own while the next one is windowed (one at a time, so memory holds at most the
/// epoch being written and the one being built). Any failure surfaces at the next hand-over.
struct Behind {
    idle: Option<SourceWriter>,
    busy: Option<tokio::task::JoinHandle<Result<(SourceWriter, usize), SinkError>>>,
    rows_written: u64,
}

impl Behind {
    fn new(writer: SourceWriter) -> Self {
        Behind {
            idle: Some(writer),
            busy: None,
            rows_written: 0,
        }
    }

    /// Waits for the epoch being written; the writer is idle afterwards.
    async fn settle(&mut self) -> anyhow::Result<()> {
        if let Some(task) = self.busy.take() {
            let (writer, rows) = task
                .await
                .map_err(|e| anyhow::anyhow!("internal error: the table writer stopped: {e}"))??;
            self.rows_written += rows as u64;
            self.idle = Some(writer);
        }
        Ok(())
    }

    /// Hands one epoch to the writer once the previous one is stored. The epoch is taken from
    /// the buffers only then, so that two are never waiting at once.
    async fn write(
        &mut self,
        take: impl FnOnce() -> (Vec<AggRow>, Vec<QuarantineRecord>),
    ) -> anyhow::Result<()> {
        self.settle().await?;
        let (mut rows, mut quarantine) = take();
        let mut writer = self.idle.take().expect("settled");
        self.busy = Some(tokio::spawn(async move {
            let w = writer.write_epoch(&mut rows, &mut quarantine).await?;
            Ok((writer, w.agg_rows))
        }));
        Ok(())
    }

    /// Waits for the last epoch: the writer and the aggregate rows written in all.
    async fn done(mut self) -> anyhow::Result<(SourceWriter, u64)> {
        self.settle().await?;
        Ok((self.idle.take().expect("settled"), self.rows_written))
    }
}

/// Runs the pipeline over JSON lines from `input`, writing to `storage`. Nothing is visible in
/// the tables until the run's commits at the end: a failed run can be re-run as it is.
pub async fn ingest(
    cfg: &Config,
    storage: &Storage,
    input: Box<dyn Read + Send>,
    opts: &IngestOptions,
) -> anyhow::Result<Report> {
    let registry = Arc::new(cfg.registry.clone());
    let decoder = Decoder::new(registry.clone(), cfg.limits.clone());
    let started_ms = chrono::Utc::now().timestamp_millis();
    let mut writer = Behind::new(
        SourceWriter::start(
            storage.clone(),
            registry.clone(),
            cfg.window.clone(),
            started_ms,
        )
        .await?,
    );
    let hasher = Arc::new(std::sync::Mutex::new(<sha2::Sha256 as sha2::Digest>::new()));
    let input: Box<dyn Read + Send> = if opts.content_id {
        Box::new(Hashing {
            inner: input,
            hasher: hasher.clone(),
        })
    } else {
        input
    };
    let mut driver = Driver::new(WindowStage::new(cfg.window.clone(), registry), cfg.roll);
    let mut rx = file::spawn(input, decoder, opts.workers);

    let mut report = Report {
        source: opts.source_id.clone(),
        ..Report::default()
    };
    let t0 = Instant::now();
    let mut last_progress = Instant::now();

    while let Some(chunk) = rx.recv().await {
        let chunk = chunk.map_err(|e| {
            anyhow::anyhow!("reading the input failed after line {}: {e}", report.lines)
        })?;
        report.bytes += chunk.bytes;
        for (line, item) in chunk.items {
            report.lines += 1;
            match item {
                Decoded::Blank => report.blank += 1,
                Decoded::Rejected {
                    rejection,
                    payload,
                    len,
                } => driver.reject(QuarantineRecord::new(
                    &opts.source_id,
                    None,
                    line,
                    rejection,
                    &payload,
                    len,
                    started_ms,
                )),
                Decoded::Event(ev) => {
                    report.accepted += 1;
                    driver.admit(&ev);
                }
            }
            if driver.roll_due() {
                driver.seal();
                writer.write(|| driver.take_epoch()).await?;
            }
        }
        let whole = driver.whole_days(&cfg.window);
        if whole > 0 {
            writer
                .write(|| (driver.take_rows(whole), Vec::new()))
                .await?;
        }
        if last_progress.elapsed() >= opts.progress_every {
            last_progress = Instant::now();
            let secs = t0.elapsed().as_secs_f64();
            tracing::info!(
                lines = report.lines,
                quarantined = driver.reasons().total(),
                rate = format!("{:.2} M lines/s", report.lines as f64 / secs / 1e6),
                "ingest progress"
            );
        }
    }
    driver.seal_all();
    writer.write(|| driver.take_epoch()).await?;
    let (writer, rows_written) = writer.done().await?;
    report.rows_written = rows_written;

    let stats = driver.stage().stats();
    report.counted = stats.counted;
    report.late = stats.late;
    report.duplicates = stats.duplicates;
    report.retry_memory_forgotten = stats.retry_memory_forgotten;
    report.people = stats.people;
    report.quarantined = driver.reasons().total();
    report.quarantine_reasons = driver.reasons().0.clone();
    if opts.content_id {
        use sha2::Digest;
        let digest = hasher.lock().expect("hasher lock").clone().finalize();
        let hex: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
        report.source = sanitize_source_id(&format!("{}-{hex}", opts.source_id));
    }
    anyhow::ensure!(
        report.balanced(),
        "internal error: the run's accounting does not balance ({report:?}); please report this bug"
    );
    let done = writer
        .finish(&report.source, report.lines, serde_json::to_value(&report)?)
        .await?;
    report.objects_written = done.files_written as u64;
    report.stale_objects_removed = done.files_replaced as u64;
    report.table_version = done.aggregates_version;
    Ok(report)
}
