//! End-to-end throughput of the service: records already in an Apache Kafka topic (4 partitions,
//! a local broker from docker/kafka/broker.sh) → `jinryu run` (release binary) → the Delta tables
//! on file:// storage, measured until the service's commits account for every record (its
//! /metrics). Also reports how fast `jinryu simulate --kafka` published them, and the Delta log's
//! commits and size.
//!
//! Run: `cargo bench --bench kafka_e2e` (JINRYU_BENCH_EVENTS overrides the 5 M default).
//! Results: BENCHMARKS.md.

#[path = "../tests/support/mod.rs"]
mod support;

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use jinryu::simulate::load;

const START_MS: i64 = 1_793_545_200_000; // 2026-11-02T00:00:00+09:00

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        println!("kafka_e2e: run with `cargo bench --bench kafka_e2e`");
        return;
    }
    let events: u64 = std::env::var("JINRYU_BENCH_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5_000_000);
    let dir = std::env::temp_dir().join("jinryu-kafka-bench");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let broker = support::Broker::start(&dir);
    support::create_topic(&broker.brokers(), "bench", 4);
    let data = dir.join("data");
    let url = format!("file://{}", data.display());
    let cfg = load::config(1000, &url);
    let input = dir.join("events.jsonl");
    load::write_events(
        std::io::BufWriter::new(std::fs::File::create(&input).unwrap()),
        &cfg,
        events,
        START_MS,
    )
    .unwrap();
    let metrics_port = support::free_port();
    let mut toml = format!(
        "timezone = \"Asia/Tokyo\"\n[storage]\nurl = \"{url}\"\n[facility]\nclosed = [\"00:46-05:44\"]\n\
         [kafka]\nbrokers = \"{}\"\ntopic = \"bench\"\ngroup = \"bench\"\n\
         [kafka.properties]\n{}\n\
         [service]\nlisten = \"127.0.0.1:{metrics_port}\"\ncheckpoint_interval = \"2s\"\n",
        broker.brokers(),
        std::env::var("JINRYU_BENCH_KAFKA_PROPS")
            .unwrap_or_default()
            .replace(';', "\n")
    );
    for s in cfg.registry.sensors() {
        toml.push_str(&format!(
            "[[sensors]]\nid = \"{}\"\narray = \"{}\"\ndirections = [\"north\", \"south\"]\n",
            s.id, s.array
        ));
    }
    let cfg_path = dir.join("bench.toml");
    std::fs::write(&cfg_path, toml).unwrap();
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_jinryu"));

    let t = Instant::now();
    let out = Command::new(&bin)
        .args(["simulate", "--kafka", "--config"])
        .arg(&cfg_path)
        .arg("--input")
        .arg(&input)
        .env("JINRYU_LOG", "warn")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let publish_secs = t.elapsed().as_secs_f64();

    let t = Instant::now();
    let mut child = Command::new(&bin)
        .args(["run", "--config"])
        .arg(&cfg_path)
        .env("JINRYU_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // The steady rate runs from the first record the service takes (its /metrics counter) to
    // the last commit: it leaves out starting up and joining the group (the first consumer of a
    // fresh broker also waits for Kafka to create its offsets topic).
    let start = loop {
        if records_taken(metrics_port) > 0 {
            break t.elapsed().as_secs_f64();
        }
        assert!(t.elapsed() < Duration::from_secs(120), "no record taken");
        std::thread::sleep(Duration::from_millis(10));
    };
    let mut first: Option<(f64, u64)> = None;
    let mut all_taken: Option<f64> = None;
    let secs = loop {
        if all_taken.is_none() && records_taken(metrics_port) == events {
            all_taken = Some(t.elapsed().as_secs_f64());
        }
        // From /metrics: reading the tables every 20 ms would load the machine being measured.
        let done = metric(metrics_port, "jinryu_committed_records_total");
        if done > 0 && first.is_none() {
            first = Some((t.elapsed().as_secs_f64(), done));
        }
        if done == events {
            break t.elapsed().as_secs_f64();
        }
        assert!(
            t.elapsed() < Duration::from_secs(1800),
            "{done} of {events}"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    assert!(child.wait().unwrap().success());
    let (t1, d1) = first.expect("a first commit");
    let (commits, log_bytes) = log_stats(&data, "aggregates");
    let (q_commits, q_bytes) = log_stats(&data, "quarantine");
    let per_commit = log_bytes as f64 / commits.max(1) as f64;
    println!(
        "kafka_e2e: Delta log: aggregates {commits} commits ({:.1} commits/s over the run), \
         {:.1} KB, {per_commit:.0} bytes per commit; quarantine {q_commits} commits, {:.1} KB. \
         At checkpoint_interval 30 s a partition makes 2,880 commits a day: ≈ {:.1} MB of log \
         per partition and day before log checkpoints and the 30-day log cleanup",
        commits as f64 / (secs - start),
        log_bytes as f64 / 1e3,
        q_bytes as f64 / 1e3,
        2880.0 * per_commit / 1e6,
    );
    let taken = all_taken.unwrap_or(secs);
    println!(
        "kafka_e2e: {events} events from 1000 sensors, 4 partitions: published in {publish_secs:.1}s \
         ({:.2} M/s); Kafka → Delta: first record taken {start:.2}s after the start, all taken \
         at {taken:.2}s, all committed at {secs:.2}s: **{:.2} M events/s taken** (first to last \
         record), {:.2} M events/s to the last commit, {:.2} M events/s including start-up; first \
         commit at {t1:.1}s ({d1} records); peak RSS of the largest jinryu process {:.0} MB",
        events as f64 / publish_secs / 1e6,
        events as f64 / (taken - start) / 1e6,
        events as f64 / (secs - start) / 1e6,
        events as f64 / secs / 1e6,
        support::peak_child_rss_mb()
    );
}

/// Records the service has taken so far, from its /metrics (0 until it answers).
fn records_taken(port: u16) -> u64 {
    metric(port, "jinryu_records_total")
}

/// The sum of a metric's samples in the service's /metrics (0 until it answers).
fn metric(port: u16, name: &str) -> u64 {
    let Some((_, body)) = support::try_http_get(&format!("127.0.0.1:{port}"), "/metrics") else {
        return 0;
    };
    body.lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// Commits in a table's log and the log's size in bytes (JSON commits and checkpoints).
fn log_stats(dir: &std::path::Path, table: &str) -> (u64, u64) {
    let log = dir.join(table).join("_delta_log");
    let (mut commits, mut bytes) = (0, 0);
    for e in std::fs::read_dir(log).into_iter().flatten().flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        if name.ends_with(".json") && name.len() == 25 {
            commits += 1;
        }
        bytes += e.metadata().map(|m| m.len()).unwrap_or(0);
    }
    (commits, bytes)
}
