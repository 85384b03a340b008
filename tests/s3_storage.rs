//! S3 object storage against a real S3 API server on loopback (moto): the file pipeline and the
//! Kafka service write to `s3://bucket/prefix`, the server stops answering in the middle of the
//! run, and the stored tables still equal the truth exactly.

mod support;

use std::time::{Duration, Instant};

use jinryu::config::Config;
use jinryu::sink::store::Storage;
use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_and_service_write_to_s3_through_an_outage() {
    let s3 = S3Server::start("jinryu-test");
    for (k, v) in s3.env() {
        // SAFETY: set before anything in this test binary reads the environment (one test).
        unsafe { std::env::set_var(k, v) };
    }

    // 1. `jinryu ingest` (the binary) into s3://, the server frozen for 5 s while it writes.
    let tmp = tempfile::tempdir().unwrap();
    let (stream, truth) = simulated(2, true);
    let input = tmp.path().join("events.jsonl");
    std::fs::write(&input, &stream).unwrap();
    let url = "s3://jinryu-test/city/sapporo";
    let text = config_text(url, "127.0.0.1:1", "unused", "unused")
        .replace("roll_rows = 1000000", "roll_rows = 2000");
    let cfg_path = tmp.path().join("jinryu.toml");
    std::fs::write(&cfg_path, &text).unwrap();
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_jinryu"))
        .args(["ingest", "--json", "--config"])
        .arg(&cfg_path)
        .arg("--input")
        .arg(&input)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    s3.freeze();
    std::thread::sleep(Duration::from_secs(5));
    s3.thaw();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "ingest through the outage: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let cfg = Config::parse(&text, "test").unwrap();
    let storage = Storage::open(url).unwrap();
    let ctx = jinryu::jobs::context(&cfg, &storage).await.unwrap();
    let v = jinryu::demo::verify(&ctx, &cfg, &truth).await.unwrap();
    assert!(v.mismatches.is_empty(), "{:#?}", v.mismatches);
    assert!(v.live_windows > 1000);

    // 2. The service (mock Kafka cluster) into another prefix, the server frozen mid-run.
    let mock = rdkafka::mocking::MockCluster::new(1).unwrap();
    mock.create_topic("events", 4, 1).unwrap();
    let url = "s3://jinryu-test/city/service";
    let alert_log = tmp.path().join("alerts.jsonl");
    let cfg = Config::parse(
        &config_text(url, &mock.bootstrap_servers(), "events", "s3")
            .replace(
                "# log_file = \"/var/log/jinryu/alerts.jsonl\"",
                &format!("log_file = \"{}\"", alert_log.display()),
            )
            .replace("stall_after = \"1h\"", "stall_after = \"2s\""),
        "test",
    )
    .unwrap();
    assert_eq!(cfg.service.stall_after_ms, 2000);
    let settings = cfg.kafka.clone().unwrap();
    let n = records(&stream);
    let storage = Storage::open(url).unwrap();
    let metrics = jinryu::service::metrics_for(&cfg);
    let run = jinryu::service::spawn(
        cfg.clone(),
        storage.clone(),
        tokio::runtime::Handle::current(),
        metrics.clone(),
    )
    .unwrap();
    let watch = tokio::spawn(jinryu::service::watch(cfg.clone(), metrics.clone()));
    // Gateways publish while the service runs (15,000 records/s, ~6 s), through the outage.
    let publisher = tokio::task::spawn_blocking(move || {
        jinryu::simulate::publish::publish(&settings, std::io::Cursor::new(stream), Some(15_000.0))
    });
    let t0 = Instant::now();
    while metrics.commits.get() < 2 {
        assert!(t0.elapsed() < Duration::from_secs(60), "no commit");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    s3.freeze();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let during = metrics.commits.get();
    tokio::time::sleep(Duration::from_secs(6)).await;
    // Nothing can be committed while the objects cannot be stored.
    assert!(
        metrics.commits.get() <= during + 1,
        "commits while S3 was down"
    );
    s3.thaw();
    let published = publisher.await.unwrap().unwrap();
    assert_eq!((published.delivered, published.failed), (n, 0));
    wait_complete(&storage, n, Duration::from_secs(180)).await;
    tokio::task::spawn_blocking(move || run.stop_and_join())
        .await
        .unwrap()
        .expect("clean stop");
    let ctx = jinryu::jobs::context(&cfg, &storage).await.unwrap();
    let v = jinryu::demo::verify(&ctx, &cfg, &truth).await.unwrap();
    assert!(v.mismatches.is_empty(), "{:#?}", v.mismatches);

    // The outage raised one pipeline alert, resolved once commits resumed.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(!watch.is_finished(), "watch ended: {:?}", watch.await);
    watch.abort();
    let log = std::fs::read_to_string(&alert_log).expect("alert log written");
    let alerts: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .filter(|a: &serde_json::Value| a["kind"] == "pipeline_stalled")
        .collect();
    assert_eq!(alerts.len(), 2, "{log}");
    assert_eq!(alerts[0]["status"], "open");
    assert_eq!(alerts[1]["status"], "resolved");
    assert_eq!(
        alerts[0]["id"], alerts[1]["id"],
        "one alert, opened then resolved"
    );
}
