//! Helpers shared by the Kafka and S3 tests: configurations, a real Apache Kafka broker, an S3 API
//! server (moto), and reading the service's checkpoints; and by the SQL plan tests: a statement's
//! text, its sorted rows and plan, a metric of `EXPLAIN ANALYZE`.
#![allow(dead_code)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use jinryu::sink::checkpoint::Checkpoint;
use jinryu::sink::store::Storage;

/// Runs python3 with `args` and returns its standard output; a failure shows `what` (what could
/// not be done, with the hint to fix it) and python's standard error.
pub fn python(args: &[&std::ffi::OsStr], what: &str) -> String {
    let out = Command::new("python3")
        .args(args)
        .output()
        .expect("python3 runs");
    assert!(
        out.status.success(),
        "{what}:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("python prints UTF-8")
}

/// A free TCP port on loopback (and the next one, for Kafka's controller).
pub fn free_port() -> u16 {
    loop {
        let a = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = a.local_addr().unwrap().port();
        if port < 65000 && TcpListener::bind(("127.0.0.1", port + 1)).is_ok() {
            return port;
        }
    }
}

/// The Chi-Ka-Ho configuration with storage, Kafka and fast service clocks for tests.
pub fn config_text(storage_url: &str, brokers: &str, topic: &str, group: &str) -> String {
    // The jobs of `jinryu run` ([jobs]) are off here: tests/jobs.rs turns them on.
    let base = jinryu::config::CHIKAHO_TOML
        .split("[kafka]")
        .next()
        .unwrap()
        .replace("file:///var/lib/jinryu", storage_url)
        .replace("\nchecks = true ", "\nchecks = false ")
        .replace("\nmonthly = true ", "\nmonthly = false ")
        .replace("\nobligations = true ", "\nobligations = false ");
    format!(
        "{base}\n[kafka]\nbrokers = \"{brokers}\"\ntopic = \"{topic}\"\ngroup = \"{group}\"\n\
         [kafka.properties]\n\"topic.metadata.refresh.interval.ms\" = 1000\n\
         [service]\nlisten = \"127.0.0.1:0\"\nidle_timeout = \"2s\"\nflush_interval = \"500ms\"\n\
         checkpoint_interval = \"1s\"\nstall_after = \"1h\"\n"
    )
}

/// Every Kafka partition's committed state (the state objects the aggregates table's progress
/// names).
pub async fn checkpoints(storage: &Storage) -> Vec<Checkpoint> {
    jinryu::sink::checkpoint::committed(storage)
        .await
        .expect("the committed states can be read")
}

/// Waits until the checkpoints account for `records` records with no open window left.
pub async fn wait_complete(storage: &Storage, records: u64, within: Duration) -> Vec<Checkpoint> {
    let t0 = Instant::now();
    loop {
        let cps = checkpoints(storage).await;
        let done: u64 = cps.iter().map(|c| c.totals.records).sum();
        let open: usize = cps.iter().map(|c| c.state.pending()).sum();
        if done == records && open == 0 {
            return cps;
        }
        assert!(
            t0.elapsed() < within,
            "the service did not finish in {within:?}: {done} of {records} records committed, {open} windows open"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// A child process that is killed when dropped (a failing test leaves no service running).
pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl std::ops::Deref for Proc {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for Proc {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

/// A single-node Apache Kafka broker (docker/kafka/broker.sh), killed when dropped.
pub struct Broker {
    pub port: u16,
    pub dir: PathBuf,
    child: Option<Child>,
}

impl Broker {
    pub fn start(dir: &Path) -> Broker {
        let mut b = Broker {
            port: free_port(),
            dir: dir.to_path_buf(),
            child: None,
        };
        b.restart();
        b
    }

    pub fn brokers(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// (Re)starts the broker on the same directory and port and waits until it serves metadata.
    pub fn restart(&mut self) {
        let log = std::fs::File::create(self.dir.join("broker.log")).unwrap();
        let child = Command::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/docker/kafka/broker.sh"
        ))
        .arg("start")
        .arg(self.dir.join("kafka"))
        .arg(self.port.to_string())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .stdin(Stdio::null())
        .spawn()
        .expect("docker/kafka/broker.sh");
        self.child = Some(child);
        let t0 = Instant::now();
        loop {
            if metadata_ok(&self.brokers()) {
                return;
            }
            if let Some(st) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!(
                    "the Kafka broker exited ({st}): {}",
                    std::fs::read_to_string(self.dir.join("broker.log")).unwrap_or_default()
                );
            }
            assert!(
                t0.elapsed() < Duration::from_secs(120),
                "Kafka did not start in 120 s"
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// kill -9.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.kill();
    }
}

fn metadata_ok(brokers: &str) -> bool {
    use rdkafka::ClientConfig;
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let Ok(c) = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("log_level", "0")
        .create::<BaseConsumer>()
    else {
        return false;
    };
    c.fetch_metadata(None, Duration::from_secs(2)).is_ok()
}

/// Creates a topic with `partitions` partitions (and waits until it exists).
pub fn create_topic(brokers: &str, topic: &str, partitions: i32) {
    use rdkafka::ClientConfig;
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    use rdkafka::client::DefaultClientContext;
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .unwrap();
    // On a thread of its own: callers may be inside a tokio runtime.
    let r = std::thread::scope(|s| {
        s.spawn(|| {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(admin.create_topics(
                &[NewTopic::new(topic, partitions, TopicReplication::Fixed(1))],
                &AdminOptions::new().operation_timeout(Some(Duration::from_secs(20))),
            ))
        })
        .join()
        .unwrap()
    })
    .unwrap();
    for x in r {
        x.unwrap();
    }
}

/// The simulated stream of the first `days` days of October 2026, as JSON lines, with its truth.
pub fn simulated(days: u32, faults: bool) -> (Vec<u8>, jinryu::simulate::Truth) {
    simulated_month(2026, 10, days, faults)
}

/// [`simulated`] for another month.
pub fn simulated_month(
    year: i32,
    month: u32,
    days: u32,
    faults: bool,
) -> (Vec<u8>, jinryu::simulate::Truth) {
    use std::io::Read;
    let cfg = jinryu::config::Config::chikaho("memory://");
    let mut opts = jinryu::simulate::options(year, month);
    opts.days = Some(days);
    opts.faults = faults;
    let mut sim = jinryu::simulate::Simulator::new(&cfg, opts);
    let truth = sim.truth();
    let mut buf = Vec::new();
    sim.read_to_end(&mut buf).unwrap();
    let t = truth.lock().unwrap().clone();
    (buf, t)
}

/// The lines of a JSON-lines stream that are not blank.
pub fn lines(stream: &[u8]) -> Vec<&[u8]> {
    stream
        .split(|b| *b == b'\n')
        .filter(|l| !l.iter().all(u8::is_ascii_whitespace))
        .collect()
}

/// Lines joined back into a stream.
pub fn join_lines(lines: &[&[u8]]) -> Vec<u8> {
    lines
        .iter()
        .flat_map(|l| l.iter().chain(b"\n"))
        .copied()
        .collect()
}

/// Lines that are not blank.
pub fn records(stream: &[u8]) -> u64 {
    lines(stream).len() as u64
}

/// Records the service has committed: the sum over its checkpoints.
pub async fn committed_records(storage: &Storage) -> u64 {
    checkpoints(storage)
        .await
        .iter()
        .map(|c| c.totals.records)
        .sum()
}

/// Publishes a JSON-lines stream to Kafka at once (`jinryu::simulate::publish`, on a blocking
/// thread); resolves to the number delivered, asserting that none failed.
pub fn publish_stream(
    settings: &jinryu::config::KafkaSettings,
    stream: Vec<u8>,
) -> tokio::task::JoinHandle<u64> {
    let settings = settings.clone();
    tokio::task::spawn_blocking(move || {
        let p = jinryu::simulate::publish::publish(&settings, std::io::Cursor::new(stream), None)
            .unwrap();
        assert_eq!(p.failed, 0);
        p.delivered
    })
}

/// An HTTP GET on loopback: (status, body), or `None` when nothing answers at `addr`.
pub fn try_http_get(addr: &str, path: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let status = text.get(9..12)?.parse().ok()?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|x| x.1)
        .unwrap_or("")
        .to_string();
    Some((status, body))
}

/// An S3 API server on loopback (moto, installed from PyPI by .ci/run), killed when dropped.
pub struct S3Server {
    pub port: u16,
    child: Child,
}

impl S3Server {
    /// Starts the server and creates `bucket`.
    pub fn start(bucket: &str) -> S3Server {
        let port = free_port();
        let child = Command::new("moto_server")
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("moto_server (pip install 'moto[server]')");
        let s = S3Server { port, child };
        let t0 = Instant::now();
        loop {
            if let Ok(status) = s.request("PUT", &format!("/{bucket}")) {
                assert_eq!(status, 200, "creating the bucket");
                return s;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(30),
                "moto_server did not start"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn request(&self, method: &str, path: &str) -> std::io::Result<u16> {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(("127.0.0.1", self.port))?;
        write!(
            s,
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        )?;
        let mut text = String::new();
        s.read_to_string(&mut text)?;
        text.get(9..12)
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| std::io::Error::other(format!("no HTTP status in {text:?}")))
    }

    /// The standard AWS environment pointing at this server.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            (
                "AWS_ENDPOINT_URL",
                format!("http://127.0.0.1:{}", self.port),
            ),
            ("AWS_ACCESS_KEY_ID", "jinryu-test".into()),
            ("AWS_SECRET_ACCESS_KEY", "jinryu-test-secret".into()),
            ("AWS_REGION", "us-east-1".into()),
            ("AWS_TIMEOUT", "2s".into()),
        ]
    }

    /// The server stops answering (SIGSTOP) — requests time out — until [`S3Server::thaw`].
    pub fn freeze(&self) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGSTOP) };
    }

    pub fn thaw(&self) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGCONT) };
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        self.thaw();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Peak RSS (MB) of the largest child process waited for so far (benches).
pub fn peak_child_rss_mb() -> f64 {
    // SAFETY: getrusage only writes into the struct we pass.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut usage) };
    usage.ru_maxrss as f64 / 1024.0
}

/// The single value of a query that returns one number (cast to BIGINT).
pub async fn scalar_i64(ctx: &datafusion::prelude::SessionContext, sql: &str) -> i64 {
    let b = jinryu::jobs::query(ctx, sql).await.unwrap();
    let c = arrow::compute::cast(b[0].column(0), &arrow::datatypes::DataType::Int64).unwrap();
    let a = c
        .as_any()
        .downcast_ref::<arrow::array::Int64Array>()
        .unwrap();
    if arrow::array::Array::is_null(a, 0) {
        0
    } else {
        a.value(0)
    }
}

/// A statement's result as a text table.
pub async fn sql_text(ctx: &datafusion::prelude::SessionContext, sql: &str) -> String {
    let batches = ctx.sql(sql).await.unwrap().collect().await.unwrap();
    arrow::util::pretty::pretty_format_batches(&batches)
        .unwrap()
        .to_string()
}

/// The query's rows, sorted, as text; and its physical plan.
pub async fn rows_and_plan(
    ctx: &datafusion::prelude::SessionContext,
    sql: &str,
) -> (Vec<String>, String) {
    let mut rows: Vec<String> = sql_text(ctx, sql)
        .await
        .lines()
        .filter(|l| l.starts_with("| "))
        .skip(1)
        .map(str::to_owned)
        .collect();
    rows.sort();
    (rows, sql_text(ctx, &format!("EXPLAIN {sql}")).await)
}

/// Runs `sql` in `ours` and in `plain` (a session without the rule under test) and asserts equal
/// rows; returns `ours`'s rows and plan, for assertions on them.
pub async fn same_rows(
    ours: &datafusion::prelude::SessionContext,
    plain: &datafusion::prelude::SessionContext,
    sql: &str,
) -> (Vec<String>, String) {
    let (got, plan) = rows_and_plan(ours, sql).await;
    let (want, _) = rows_and_plan(plain, sql).await;
    assert_eq!(got, want, "{sql}\n{plan}");
    (got, plan)
}

/// The sum over a plan's lines naming `node` of one metric in `EXPLAIN ANALYZE` text ("590.00 K",
/// "1.20 M" or a plain count).
pub fn analyzed_metric(analyzed: &str, node: &str, metric: &str) -> u64 {
    analyzed
        .lines()
        .filter(|l| l.contains(node))
        .filter_map(|l| l.split(&format!("{metric}=")).nth(1))
        .filter_map(|v| v.split([',', ']']).next())
        .map(|v| {
            let mut parts = v.split_whitespace();
            let n: f64 = parts.next().and_then(|n| n.parse().ok()).unwrap_or(0.0);
            let scale = match parts.next() {
                Some("K") => 1e3,
                Some("M") => 1e6,
                _ => 1.0,
            };
            (n * scale) as u64
        })
        .sum()
}

/// Registers `name` as an in-memory table of `rows` in three partitions of `batches` batches each
/// (as a scan of several files gives), `batch` turning a slice of rows into a batch of `schema`.
/// Always three partitions, empty ones when there are fewer than three rows: with one partition
/// DataFusion plans a single-stage aggregate and there is no partial aggregate to test.
pub fn register_in_parts<R>(
    ctx: &datafusion::prelude::SessionContext,
    name: &str,
    schema: arrow::datatypes::SchemaRef,
    rows: &[R],
    batches: usize,
    batch: impl Fn(&[R]) -> arrow::array::RecordBatch,
) {
    let mut parts: Vec<Vec<arrow::array::RecordBatch>> = rows
        .chunks(rows.len().div_ceil(3).max(1))
        .map(|part| {
            part.chunks(part.len().div_ceil(batches).max(1))
                .map(&batch)
                .collect()
        })
        .collect();
    parts.resize_with(3, Vec::new);
    ctx.deregister_table(name).unwrap();
    let table = datafusion::datasource::MemTable::try_new(schema, parts).unwrap();
    ctx.register_table(name, std::sync::Arc::new(table))
        .unwrap();
}
