//! End-to-end throughput: `jinryu ingest` (the release binary) over a generated JSON-lines file of
//! 10 M events from 1,000 sensors into file:// Parquet, with the child's peak memory.
//!
//! Run: `cargo bench --bench ingest_e2e` (JINRYU_BENCH_EVENTS overrides the event count).
//! The input is generated once into $TMPDIR/jinryu-bench/ and reused. Results: BENCHMARKS.md.

#[path = "../tests/support/mod.rs"]
mod support;

use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use jinryu::simulate::load;

const START_MS: i64 = 1_793_545_200_000; // 2026-11-02T00:00:00+09:00

fn main() {
    // `cargo bench` passes --bench; `cargo test --benches` passes nothing useful: only run for real
    // when asked to bench.
    if !std::env::args().any(|a| a == "--bench") {
        println!("ingest_e2e: run with `cargo bench --bench ingest_e2e`");
        return;
    }
    let events: u64 = std::env::var("JINRYU_BENCH_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000_000);
    let dir = std::env::temp_dir().join("jinryu-bench");
    std::fs::create_dir_all(&dir).expect("bench dir");
    let data = dir.join("data");
    let _ = std::fs::remove_dir_all(&data);
    let cfg = load::config(1000, &format!("file://{}", data.display()));
    let input = dir.join(format!("events-{events}.jsonl"));
    if !input.exists() {
        let t = Instant::now();
        let tmp = dir.join("events.tmp");
        let f = std::io::BufWriter::with_capacity(
            1 << 20,
            std::fs::File::create(&tmp).expect("create"),
        );
        load::write_events(f, &cfg, events, START_MS).expect("generate");
        std::fs::rename(&tmp, &input).expect("rename");
        println!(
            "generated {} in {:.1}s",
            input.display(),
            t.elapsed().as_secs_f64()
        );
    }
    // The configuration the binary reads: the same sensors, storage under the bench dir.
    let mut toml = format!(
        "timezone = \"Asia/Tokyo\"\n[storage]\nurl = \"file://{}\"\n[facility]\nclosed = [\"00:46-05:44\"]\n",
        data.display()
    );
    for s in cfg.registry.sensors() {
        toml.push_str(&format!(
            "[[sensors]]\nid = \"{}\"\narray = \"{}\"\ndirections = [\"north\", \"south\"]\n",
            s.id, s.array
        ));
    }
    let cfg_path = dir.join("bench.toml");
    std::fs::write(&cfg_path, toml).expect("config");
    let bytes = std::fs::metadata(&input).expect("input").len();
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_jinryu"));
    let t = Instant::now();
    let out = Command::new(&bin)
        .args(["ingest", "--json", "--config"])
        .arg(&cfg_path)
        .arg("--input")
        .arg(&input)
        .env("JINRYU_LOG", "warn")
        .output()
        .expect("run jinryu");
    let secs = t.elapsed().as_secs_f64();
    assert!(
        out.status.success(),
        "ingest failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("report");
    assert_eq!(report["lines"].as_u64(), Some(events));
    assert_eq!(report["quarantined"].as_u64(), Some(0));
    println!(
        "ingest_e2e: {events} events ({:.0} MB) from 1000 sensors → the Delta tables in {secs:.2}s = {:.2} M events/s, \
         {:.0} MB/s, peak RSS {:.0} MB, {} rows written",
        bytes as f64 / 1e6,
        events as f64 / secs / 1e6,
        bytes as f64 / secs / 1e6,
        support::peak_child_rss_mb(),
        report["rows_written"]
    );
}
