//! End-to-end throughput of the service: records already in an Apache Kafka topic (4 partitions,
//! a local broker from docker/kafka/broker.sh) → `jinryu run` (release binary) → Parquet on
//! file:// storage, measured until the checkpoints account for every record. Also reports how
//! fast `jinryu simulate --kafka` published them.
//!
//! Run: `cargo bench --bench kafka_e2e` (JINRYU_BENCH_EVENTS overrides the 5 M default).
//! Results: BENCHMARKS.md.

#[path = "../tests/support/mod.rs"]
mod support;

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use jinryu::simulate::load;
use jinryu::sink::store::Storage;

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
    let mut toml = format!(
        "timezone = \"Asia/Tokyo\"\n[storage]\nurl = \"{url}\"\n[facility]\nclosed = [\"00:46-05:44\"]\n\
         [kafka]\nbrokers = \"{}\"\ntopic = \"bench\"\ngroup = \"bench\"\n\
         [kafka.properties]\n{}\n\
         [service]\nlisten = \"127.0.0.1:0\"\ncheckpoint_interval = \"2s\"\n",
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

    let rt = tokio::runtime::Runtime::new().unwrap();
    let storage = Storage::open(&url).unwrap();
    let t = Instant::now();
    let mut child = Command::new(&bin)
        .args(["run", "--config"])
        .arg(&cfg_path)
        .env("JINRYU_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // The first commit marks the end of joining the group; the steady rate is measured from it.
    let mut first: Option<(f64, u64)> = None;
    let secs = loop {
        let done: u64 = rt
            .block_on(support::checkpoints(&storage))
            .iter()
            .map(|c| c.totals.records)
            .sum();
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
        std::thread::sleep(Duration::from_millis(100));
    };
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    assert!(child.wait().unwrap().success());
    let (t1, d1) = first.expect("a first commit");
    println!(
        "kafka_e2e: {events} events from 1000 sensors, 4 partitions: published in {publish_secs:.1}s \
         ({:.2} M/s); Kafka → Parquet all committed after {secs:.2}s = {:.2} M events/s overall \
         (joining the group included), {:.2} M events/s from the first commit ({t1:.1}s, {d1} \
         records) to the last; peak RSS of the largest jinryu process {:.0} MB",
        events as f64 / publish_secs / 1e6,
        events as f64 / secs / 1e6,
        (events - d1) as f64 / (secs - t1) / 1e6,
        support::peak_child_rss_mb()
    );
}
