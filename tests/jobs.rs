//! Issue #10: `jinryu run` does the contract's work by itself. Two services of one group against
//! Apache Kafka, with `[jobs]` on and a 2-second interval, fed a month from four months back (a
//! backlog): its data-quality alerts appear without any other command, its deliverable is built
//! once into `deliverables/YYYY_MM/` (by one of the two), its CSV obligation is reported overdue
//! and the report whose handover was recorded is not; a dead webhook is logged and raises one
//! `job_failed`, not one per interval.

mod support;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use jinryu::config::Config;
use jinryu::sink::store::Storage;
use support::*;

/// `support::records`, for where the test's own `records` count shadows it.
fn records_of(stream: &[u8]) -> u64 {
    records(stream)
}

fn jinryu() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_jinryu"));
    c.env("JINRYU_LOG", "info,buoyant_kernel=warn,deltalake_core=warn");
    c
}

fn run(cfg: &Path, log: &Path) -> Proc {
    let log = std::fs::File::create(log).unwrap();
    Proc(
        jinryu()
            .args(["run", "--config"])
            .arg(cfg)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap(),
    )
}

fn sigterm(p: &mut Proc) {
    // SAFETY: plain kill(2) on our own child.
    unsafe { libc::kill(p.id() as i32, libc::SIGTERM) };
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(60) {
        if p.try_wait().unwrap().is_some() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_service_runs_the_contracts_jobs_once_per_group() {
    let tmp = tempfile::tempdir().unwrap();
    let broker = Broker::start(tmp.path());
    let topic = "jinryu.jobs";
    create_topic(&broker.brokers(), topic, 2);
    let data = tmp.path().join("data");
    let url = format!("file://{}", data.display());
    let alert_log = tmp.path().join("alerts.jsonl");
    let text = config_text(&url, &broker.brokers(), topic, "jobs")
        .replace("\nchecks = false ", "\nchecks = true ")
        .replace("\nmonthly = false ", "\nmonthly = true ")
        .replace("\nobligations = false ", "\nobligations = true ")
        .replace("check_interval = \"15m\"", "check_interval = \"2s\"")
        .replace(
            "# log_file = \"/var/log/jinryu/alerts.jsonl\"",
            &format!("log_file = \"{}\"", alert_log.display()),
        )
        // A webhook nobody answers: every alert stays queued for it, the service says so, and
        // the log file still gets each alert once.
        .replace(
            "# webhook_url = \"http://127.0.0.1:9000/jinryu\"",
            &format!("webhook_url = \"http://127.0.0.1:{}/hook\"", free_port()),
        )
        .replace("webhook_attempts = 3", "webhook_attempts = 1");
    assert!(text.contains("check_interval = \"2s\""));
    assert!(text.contains("log_file = \""));
    assert!(text.contains("webhook_url = \"http://127.0.0.1:"));
    let cfg_path = tmp.path().join("jinryu.toml");
    std::fs::write(&cfg_path, &text).unwrap();
    let cfg = Config::load(&cfg_path).unwrap();
    let storage = Storage::open(&url).unwrap();

    // Four months ago (by the wall clock, which the service's jobs read): closed, its CSV and
    // report long overdue whenever the test runs, and older than the two months the obligations
    // job always looks at: a backlog month is found through its deliverable.
    let (y, m) = {
        use chrono::Datelike;
        let today = chrono::Utc::now().date_naive();
        let back = today.with_day(1).unwrap() - chrono::Months::new(4);
        (back.year(), back.month())
    };
    let ym = format!("{y:04}-{m:02}");
    let y_m = format!("{y:04}_{m:02}");

    // The month's report was handed over already; its CSV was not.
    let out = jinryu()
        .args([
            "deliver", "--month", &ym, "--only", "report", "--by", "tester", "--config",
        ])
        .arg(&cfg_path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The first 14 days of that month, simulated with its faults (a sensor silent on the 12th).
    let (stream, _) = simulated_month(y, m, 14, true);
    let records = records(&stream);
    let published = publish_stream(cfg.kafka.as_ref().unwrap(), stream)
        .await
        .unwrap();
    assert_eq!(published, records);

    let mut a = run(&cfg_path, &tmp.path().join("a.log"));
    let mut b = run(&cfg_path, &tmp.path().join("b.log"));
    wait_complete(&storage, records, Duration::from_secs(300)).await;

    // Without any other command: the silent sensor's alert, the month's deliverable, the overdue
    // CSV obligation.
    let manifest_path = data.join(format!("deliverables/{y_m}/manifest.json"));
    let t0 = Instant::now();
    let alerts = loop {
        let log = std::fs::read_to_string(&alert_log).unwrap_or_default();
        // J2-3's five silent hours on the 12th: a day more than a month old, checked because it
        // received data (a backlog is checked like today).
        let silent_start =
            format!("\"sensor_id\":\"J2-3\",\"array\":\"J2\",\"start\":\"{ym}-12T09:00");
        let done = log
            .lines()
            .any(|l| l.contains("\"sensor_offline\"") && l.contains(&silent_start))
            && log.contains(&format!("\"obligation\":\"csv:{ym}\""))
            && manifest_path.exists();
        if done {
            break log;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(180),
            "jobs did not produce everything in time; alert log:\n{log}\nservice a:\n{}\nservice b:\n{}",
            std::fs::read_to_string(tmp.path().join("a.log")).unwrap_or_default(),
            std::fs::read_to_string(tmp.path().join("b.log")).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    // Let a few more intervals pass: nothing is built twice.
    tokio::time::sleep(Duration::from_secs(6)).await;

    // The gateway replays a morning of the 15th after the month was built: a revision is built
    // with it (rev-2, once) and announced; the first deliverable stays as it was.
    let first_manifest = std::fs::read(&manifest_path).unwrap();
    let mut replay = String::new();
    for (i, sensor) in ["J1-1", "J2-4"].iter().enumerate() {
        for minute in 0..10 {
            replay.push_str(&format!(
                "{{\"sensor_id\":\"{sensor}\",\"ts\":\"{ym}-15T08:{minute:02}:{:02}+09:00\",\"direction\":\"north\",\"count\":2}}\n",
                10 + i
            ));
        }
    }
    let extra = records_of(replay.as_bytes());
    publish_stream(cfg.kafka.as_ref().unwrap(), replay.into_bytes())
        .await
        .unwrap();
    wait_complete(&storage, records + extra, Duration::from_secs(120)).await;
    let revision = data.join(format!("deliverables/{y_m}/rev-2/manifest.json"));
    let t0 = Instant::now();
    while !(revision.exists()
        && std::fs::read_to_string(&alert_log)
            .unwrap_or_default()
            .contains("\"deliverable_revised\""))
    {
        assert!(
            t0.elapsed() < Duration::from_secs(120),
            "no revision; service a:\n{}\nservice b:\n{}",
            std::fs::read_to_string(tmp.path().join("a.log")).unwrap_or_default(),
            std::fs::read_to_string(tmp.path().join("b.log")).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert_eq!(std::fs::read(&manifest_path).unwrap(), first_manifest);
    assert!(
        !data.join(format!("deliverables/{y_m}/rev-3")).exists(),
        "one revision for one replay"
    );
    let csv = |dir: &str| {
        std::fs::read_to_string(data.join(format!("deliverables/{dir}/{y_m}.csv"))).unwrap()
    };
    let morning = format!("{ym}-15,08:00,J1-1,J1,north,");
    assert!(
        csv(&y_m).contains(&format!("{morning},missing")),
        "the first build had no 15th"
    );
    assert!(
        csv(&format!("{y_m}/rev-2")).contains(&format!("{morning}20,")),
        "the revision counts the replayed morning"
    );

    sigterm(&mut a);
    sigterm(&mut b);
    let logs = [
        std::fs::read_to_string(tmp.path().join("a.log")).unwrap(),
        std::fs::read_to_string(tmp.path().join("b.log")).unwrap(),
    ];
    let builds: usize = logs
        .iter()
        .map(|l| {
            l.matches(&format!("deliverable built into deliverables/{y_m}/ "))
                .count()
        })
        .sum();
    assert_eq!(
        builds, 1,
        "built once by one of the two:\n{}\n{}",
        logs[0], logs[1]
    );

    // The failing webhook: logged by the service, the checks job failed (and said so as an
    // alert, through the routes that work).
    assert!(
        logs.iter()
            .any(|l| l.contains("alert not delivered; it stays queued")),
        "the service logs failed deliveries:\n{}\n{}",
        logs[0],
        logs[1]
    );
    let final_log = std::fs::read_to_string(&alert_log).unwrap();
    let failed_checks: Vec<serde_json::Value> = final_log
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|a| a["kind"] == "job_failed" && a["evidence"]["job"] == "checks")
        .collect();
    // Raised once, not once per failing interval.
    assert_eq!(failed_checks.len(), 1, "{failed_checks:#?}");
    assert_eq!(failed_checks[0]["status"], "open");

    let overdue: Vec<serde_json::Value> = alerts
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|a| a["kind"] == "obligation_overdue")
        .collect();
    assert!(
        overdue
            .iter()
            .any(|a| a["evidence"]["obligation"] == format!("csv:{ym}").as_str()),
        "{overdue:#?}"
    );
    assert!(
        !overdue
            .iter()
            .any(|a| a["evidence"]["obligation"] == format!("report:{ym}").as_str()),
        "a delivered obligation is not reported: {overdue:#?}"
    );
    // Each version of an alert was logged once (one process delivered it; an alert that
    // changes — its end moves, it resolves — is sent again as the new version).
    let mut versions: Vec<&str> = alerts.lines().collect();
    let n = versions.len();
    versions.sort();
    versions.dedup();
    assert_eq!(versions.len(), n, "an alert was delivered twice:\n{alerts}");

    // The deliverable: every file the manifest lists, with its checksum.
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&manifest_path).unwrap()).unwrap();
    let names: Vec<&str> = manifest["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["name"].as_str().unwrap())
        .collect();
    for want in [
        format!("{y_m}.csv"),
        format!("{y_m}.csv.sha256"),
        format!("{y_m}.quality.md"),
        format!("faults_{y_m}.csv"),
    ] {
        assert!(
            names.contains(&want.as_str()),
            "{want} missing from {names:?}"
        );
    }
    for f in manifest["files"].as_array().unwrap() {
        use sha2::Digest;
        let bytes = std::fs::read(
            data.join(format!("deliverables/{y_m}"))
                .join(f["name"].as_str().unwrap()),
        )
        .unwrap();
        assert_eq!(
            format!("{:x}", sha2::Sha256::digest(&bytes)),
            f["sha256"].as_str().unwrap()
        );
    }

    // `jinryu obligations` shows the same: CSV overdue, report delivered.
    let out = jinryu()
        .args(["obligations", "--month", &ym, "--config"])
        .arg(&cfg_path)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let line = |id: &str| {
        text.lines()
            .find(|l| l.contains(id))
            .unwrap_or_else(|| panic!("{id} not listed:\n{text}"))
            .to_string()
    };
    assert!(
        line(&format!("monthly CSV {y_m}.csv")).contains("OVERDUE"),
        "{text}"
    );
    assert!(
        line(&format!("monthly report {ym}")).contains("delivered"),
        "{text}"
    );
    assert!(text.contains("fault report: sensor_offline"), "{text}");
    drop(broker);
}
