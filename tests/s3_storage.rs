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

    // 2. The service (mock Kafka cluster) into another prefix. The outage starts after the first
    // half of the stream is committed and holds the consumer in a commit while the rest — led by
    // gateway retries of messages from before the outage — piles up in Kafka for longer than
    // `idle_timeout`. Those retries must still count once: a consumer that was held up is not a
    // quiet partition, so wall-clock time must not close (and forget) the windows they belong to.
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
            .replace("stall_after = \"1h\"", "stall_after = \"2s\"")
            // Long enough that no partition legitimately goes quiet between the first half and
            // the trigger below; the outage then holds the consumer for longer than this.
            .replace("idle_timeout = \"2s\"", "idle_timeout = \"5s\""),
        "test",
    )
    .unwrap();
    assert_eq!(cfg.service.stall_after_ms, 2000);
    assert_eq!(cfg.service.idle_timeout_ms, 5000);
    let lines = lines(&stream);
    let half = lines.len() / 2;
    let retried: Vec<&[u8]> = lines[..half]
        .iter()
        .rev()
        .filter(|l| {
            let l = String::from_utf8_lossy(l);
            l.contains("\"count\":") && l.contains("\"seq\":")
        })
        .take(400)
        .copied()
        .collect();
    assert_eq!(retried.len(), 400);
    let before = join_lines(&lines[..half]);
    let trigger = join_lines(&lines[half..half + 2000]);
    let mut after = join_lines(&retried);
    after.extend(join_lines(&lines[half + 2000..]));
    let n = lines.len() as u64 + retried.len() as u64;

    let settings = cfg.kafka.clone().unwrap();
    let publish = |bytes: Vec<u8>| publish_stream(&settings, bytes);
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
    assert_eq!(publish(before).await.unwrap(), half as u64);
    let t0 = Instant::now();
    loop {
        let done = committed_records(&storage).await;
        if done == half as u64 {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(120),
            "first half not committed: {done} of {half}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    s3.freeze();
    let during = metrics.commits.get();
    // New records: the consumer takes them and blocks in the next commit (flush_interval 500 ms).
    assert_eq!(publish(trigger).await.unwrap(), 2000);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // Meanwhile the gateways re-send and go on; the consumer is stuck for > idle_timeout.
    let rest = publish(after).await.unwrap();
    tokio::time::sleep(Duration::from_secs(6)).await;
    // Nothing can be committed while the objects cannot be stored.
    assert!(
        metrics.commits.get() <= during + 1,
        "commits while S3 was down"
    );
    s3.thaw();
    assert_eq!(half as u64 + 2000 + rest, n);
    wait_complete(&storage, n, Duration::from_secs(180)).await;
    tokio::task::spawn_blocking(move || run.stop_and_join())
        .await
        .unwrap()
        .expect("clean stop");
    assert_eq!(
        metrics.duplicates.get(),
        truth.retries + retried.len() as u64,
        "every retry, before and across the outage, recognised as one"
    );
    // And the outage moved no event time: the only late events are the stream's late burst (a
    // consumer held up by storage is not a quiet partition).
    assert_eq!(
        metrics.late.get(),
        truth.late_messages,
        "events made late by the outage"
    );
    let ctx = jinryu::jobs::context(&cfg, &storage).await.unwrap();
    let v = jinryu::demo::verify(&ctx, &cfg, &truth).await.unwrap();
    assert!(v.mismatches.is_empty(), "{:#?}", v.mismatches);

    // The outage raised a pipeline alert, resolved once commits resumed.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(!watch.is_finished(), "watch ended: {:?}", watch.await);
    watch.abort();
    let log = std::fs::read_to_string(&alert_log).expect("alert log written");
    let alerts: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .filter(|a: &serde_json::Value| a["kind"] == "pipeline_stalled")
        .collect();
    // Each stall is one alert, opened once and resolved once with the same id. (While the
    // service catches up after the outage, a commit can again take longer than this test's 2 s
    // `stall_after`: that is a second, shorter episode, not a repeat of the first.)
    assert!(
        !alerts.is_empty() && alerts.len().is_multiple_of(2),
        "{log}"
    );
    for pair in alerts.chunks(2) {
        assert_eq!(pair[0]["status"], "open", "{log}");
        assert_eq!(pair[1]["status"], "resolved", "{log}");
        assert_eq!(
            pair[0]["id"], pair[1]["id"],
            "one alert, opened then resolved: {log}"
        );
    }

    // 3. Delta commits on S3 are conditional writes (If-None-Match: *): the server refuses to
    // replace an existing log entry, so concurrent writers cannot overwrite each other's commits.
    use object_store::{PutMode, PutOptions};
    let entry = object_store::path::Path::from("aggregates/_delta_log/00000000000000000000.json");
    let refused = storage
        .store()
        .put_opts(
            &entry,
            b"{}".to_vec().into(),
            PutOptions::from(PutMode::Create),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(refused, object_store::Error::AlreadyExists { .. }),
        "the S3 server overwrote a log entry: {refused}"
    );
    // Four runs committing to one table at once: every one lands, each exactly once.
    let race_url = "s3://jinryu-test/race";
    let race_cfg = Config::parse(
        &config_text(race_url, "127.0.0.1:1", "unused", "unused"),
        "race",
    )
    .unwrap();
    let race = Storage::open(race_url).unwrap();
    let (day, day_truth) = simulated(1, false);
    let runs: Vec<_> = (0..4)
        .map(|i| {
            let (cfg, storage, day) = (race_cfg.clone(), race.clone(), day.clone());
            tokio::spawn(async move {
                jinryu::ingest::ingest(
                    &cfg,
                    &storage,
                    Box::new(std::io::Cursor::new(day)),
                    &jinryu::ingest::IngestOptions::new(&format!("racer-{i}")),
                )
                .await
                .unwrap()
            })
        })
        .collect();
    for r in runs {
        assert_eq!(r.await.unwrap().people, day_truth.people);
    }
    let ctx = jinryu::jobs::context(&race_cfg, &race).await.unwrap();
    let total = scalar_i64(&ctx, "SELECT SUM(\"count\") FROM aggregates").await;
    assert_eq!(total as u64, 4 * day_truth.people);
}
