//! `jinryu run` (the binary) against Apache Kafka itself, started from docker/kafka/broker.sh:
//! kill -9 at random moments, two instances sharing a group, the broker killed mid-stream. Each
//! test compares the stored aggregates with the simulator's truth: exactly equal.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use std::time::{Duration, Instant};

use jinryu::config::Config;
use jinryu::sink::store::Storage;
use rand::{Rng, SeedableRng};
use support::*;

struct Case {
    dir: PathBuf,
    cfg_path: PathBuf,
    cfg: Config,
    storage: Storage,
    broker: Broker,
    records: u64,
    truth: jinryu::simulate::Truth,
}

/// A broker, a topic with 4 partitions and `days` of simulated traffic published to it through
/// `jinryu simulate --kafka`.
fn setup(dir: &Path, days: u32) -> Case {
    let case = setup_unpublished(dir, days);
    let out = case.publish(None).wait_with_output().unwrap();
    case.check_published(&out);
    case
}

/// Like [`setup`] without publishing: the test starts [`Case::publish`] itself.
fn setup_unpublished(dir: &Path, days: u32) -> Case {
    let broker = Broker::start(dir);
    create_topic(&broker.brokers(), "events", 4);
    let url = format!("file://{}/data", dir.display());
    let mut text = config_text(&url, &broker.brokers(), "events", "jinryu-test");
    text = text.replace(
        "[kafka.properties]\n",
        "[kafka.properties]\n\"session.timeout.ms\" = 6000\n\"heartbeat.interval.ms\" = 1000\n\
         \"max.partition.fetch.bytes\" = 131072\n",
    );
    let cfg_path = dir.join("jinryu.toml");
    std::fs::write(&cfg_path, &text).unwrap();
    let cfg = Config::parse(&text, "test").unwrap();
    let (stream, truth) = simulated(days, true);
    let input = dir.join("events.jsonl");
    std::fs::write(&input, &stream).unwrap();
    let records = records(&stream);
    Case {
        storage: Storage::open(&url).unwrap(),
        dir: dir.to_path_buf(),
        cfg_path,
        cfg,
        broker,
        records,
        truth,
    }
}

fn jinryu() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_jinryu"));
    c.env("JINRYU_LOG", "info");
    c
}

impl Case {
    /// Starts `jinryu simulate --kafka` publishing the stream (`rate` records/s, or at once).
    fn publish(&self, rate: Option<u32>) -> Child {
        self.publish_file(&self.dir.join("events.jsonl"), rate)
    }

    /// Starts `jinryu simulate --kafka` publishing `input`.
    fn publish_file(&self, input: &Path, rate: Option<u32>) -> Child {
        let mut c = jinryu();
        c.args(["simulate", "--kafka", "--config"])
            .arg(&self.cfg_path)
            .arg("--input")
            .arg(input)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(r) = rate {
            c.args(["--rate", &r.to_string()]);
        }
        c.spawn().unwrap()
    }

    fn check_published(&self, out: &std::process::Output) {
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            String::from_utf8_lossy(&out.stdout)
                .contains(&format!("published {} records", self.records)),
            "{}",
            String::from_utf8_lossy(&out.stdout)
        );
    }

    /// Starts `jinryu run`; stderr goes to `<dir>/run-<name>.log`.
    fn run(&self, name: &str) -> Proc {
        let log = std::fs::File::create(self.dir.join(format!("run-{name}.log"))).unwrap();
        Proc(
            jinryu()
                .arg("run")
                .arg("--config")
                .arg(&self.cfg_path)
                .stdin(Stdio::null())
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .unwrap(),
        )
    }

    fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.join(format!("run-{name}.log"))).unwrap_or_default()
    }

    async fn committed(&self) -> u64 {
        committed_records(&self.storage).await
    }

    /// Waits for the end, then checks accounting and every window against the truth.
    async fn verify(&self) {
        let cps = wait_complete(&self.storage, self.records, Duration::from_secs(300)).await;
        let accepted: u64 = cps.iter().map(|c| c.totals.accepted).sum();
        let quarantined: u64 = cps.iter().map(|c| c.totals.quarantined).sum();
        assert_eq!(accepted + quarantined, self.records);
        assert_eq!(quarantined, self.truth.malformed);
        let dups: u64 = cps.iter().map(|c| c.state.stats.duplicates).sum();
        assert_eq!(dups, self.truth.retries);
        let ctx = jinryu::jobs::context(&self.cfg, &self.storage)
            .await
            .unwrap();
        let v = jinryu::demo::verify(&ctx, &self.cfg, &self.truth)
            .await
            .unwrap();
        assert!(v.mismatches.is_empty(), "{:#?}", v.mismatches);
        assert!(v.live_windows > 1000);
        let q = jinryu::jobs::query(&ctx, "SELECT count(*) AS n FROM quarantine")
            .await
            .unwrap();
        let n = q[0]
            .column(0)
            .as_any()
            .downcast_ref::<arrow::array::Int64Array>()
            .unwrap()
            .value(0);
        assert_eq!(
            n as u64, self.truth.malformed,
            "one quarantine row per bad record"
        );
    }
}

fn kill9(c: &mut Child) {
    c.kill().unwrap();
    c.wait().unwrap();
}

fn sigterm_and_wait(c: &mut Child) -> std::process::ExitStatus {
    // SAFETY: sending a signal to our own child.
    unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
    let t0 = Instant::now();
    loop {
        if let Some(st) = c.try_wait().unwrap() {
            return st;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "no exit 60 s after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The metrics address the service printed.
fn metrics_addr(log: &str) -> Option<String> {
    let at = log.find("/metrics on http://")? + "/metrics on http://".len();
    Some(log[at..].split_whitespace().next()?.to_string())
}

fn http_get(addr: &str, path: &str) -> (u16, String) {
    try_http_get(addr, path).unwrap_or_else(|| panic!("no HTTP answer at {addr}{path}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_at_random_moments_loses_and_doubles_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    // The gateways keep publishing (at 25,000 records/s) while the service is killed.
    let case = setup_unpublished(tmp.path(), 6);
    let publisher = case.publish(Some(25_000));
    let mut rng = rand::rngs::SmallRng::seed_from_u64(0x6a696e7279);
    let mut kills = 0;
    let mut progress_between_kills = 0;
    for i in 0..4 {
        let before = case.committed().await;
        let name = format!("crash{i}");
        let mut child = case.run(&name);
        let t0 = Instant::now();
        while !case.log(&name).contains("partition assigned") {
            assert!(
                t0.elapsed() < Duration::from_secs(60),
                "{}",
                case.log(&name)
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // Every other round lets an epoch land first, so that services with progress are killed
        // too however slow the machine is (random delays alone could all fall before the first
        // commit on a loaded CI machine).
        if i % 2 == 1 {
            let t1 = Instant::now();
            while case.committed().await <= before && t1.elapsed() < Duration::from_secs(60) {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        // Killed at a random moment while consuming or writing an epoch.
        tokio::time::sleep(Duration::from_millis(rng.random_range(200..2500))).await;
        kill9(&mut child);
        kills += 1;
        if case.committed().await > before {
            progress_between_kills += 1;
        }
    }
    let out = tokio::task::spawn_blocking(move || publisher.wait_with_output().unwrap())
        .await
        .unwrap();
    case.check_published(&out);
    assert!(
        progress_between_kills >= 2,
        "{kills} kills, {progress_between_kills} after some progress"
    );
    let mut last = case.run("final");
    let cps = wait_complete(&case.storage, case.records, Duration::from_secs(300)).await;
    assert_eq!(cps.len(), 4, "one checkpoint per partition");

    // Self-monitoring while it runs: /healthz, and /metrics parsed as Prometheus text.
    let addr = metrics_addr(&case.log("final")).expect("metrics address in the log");
    let (status, body) = http_get(&addr, "/healthz");
    assert_eq!((status, body.trim()), (200, "ok"));
    let (status, body) = http_get(&addr, "/metrics");
    assert_eq!(status, 200);
    let parsed = Command::new("python3")
        .args([
            "-c",
            "import sys; from prometheus_client.openmetrics.parser import text_string_to_metric_families as p\n\
             for f in p(sys.stdin.read()):\n  for s in f.samples: print(s.name, s.value)",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin.take().unwrap().write_all(body.as_bytes())?;
            c.wait_with_output()
        })
        .unwrap();
    assert!(
        parsed.status.success(),
        "not valid exposition text:\n{body}"
    );
    let samples = String::from_utf8(parsed.stdout).unwrap();
    // Always present (the partition and reason families may have no sample yet in this process).
    for name in [
        "jinryu_accepted_total",
        "jinryu_assigned_partitions",
        "jinryu_seconds_since_last_commit",
        "jinryu_commits_total",
    ] {
        assert!(samples.contains(name), "{name} missing:\n{samples}");
    }
    assert!(
        !samples.contains("people"),
        "metrics never carry people counts"
    );

    let st = sigterm_and_wait(&mut last);
    assert!(
        st.success(),
        "exit after SIGTERM: {st}\n{}",
        case.log("final")
    );
    case.verify().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_share_a_group_and_one_crashes() {
    let tmp = tempfile::tempdir().unwrap();
    let case = setup(tmp.path(), 3);
    let mut a = case.run("a");
    let mut b = case.run("b");
    let t0 = Instant::now();
    while !(case.log("a").contains("partition assigned")
        && case.log("b").contains("partition assigned"))
    {
        assert!(
            t0.elapsed() < Duration::from_secs(90),
            "both instances should own partitions:\n{}\n{}",
            case.log("a"),
            case.log("b")
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    kill9(&mut a);
    let mut c = case.run("c");
    case.verify().await;
    for p in [&mut b, &mut c] {
        let st = sigterm_and_wait(p);
        assert!(st.success(), "{st}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_killed_mid_stream_then_back() {
    let tmp = tempfile::tempdir().unwrap();
    let mut case = setup(tmp.path(), 3);
    let mut run = case.run("svc");
    let t0 = Instant::now();
    while case.committed().await == 0 {
        assert!(
            t0.elapsed() < Duration::from_secs(90),
            "{}",
            case.log("svc")
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    case.broker.kill();
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(
        run.try_wait().unwrap().is_none(),
        "the service must survive the broker's absence"
    );
    case.broker.restart();
    case.verify().await;
    let st = sigterm_and_wait(&mut run);
    assert!(st.success(), "{st}\n{}", case.log("svc"));
}

/// Moves the group's committed offsets, as an operator's reset tool does while no member runs.
fn set_group_offsets(brokers: &str, group: &str, topic: &str, to_end: bool) {
    use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
    use rdkafka::{Offset, TopicPartitionList};
    let c: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in 0..4 {
        let (low, high) = c
            .fetch_watermarks(topic, p, Duration::from_secs(10))
            .unwrap();
        let o = if to_end { high } else { low };
        tpl.add_partition_offset(topic, p, Offset::Offset(o))
            .unwrap();
    }
    c.assign(&tpl).unwrap();
    c.commit(&tpl, CommitMode::Sync).unwrap();
}

/// The metric `name` as the service at `addr` reports it.
fn metric(addr: &str, name: &str) -> f64 {
    let (_, body) = http_get(addr, "/metrics");
    body.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_checkpoint_wins_over_the_groups_committed_offsets() {
    let tmp = tempfile::tempdir().unwrap();
    let case = setup_unpublished(tmp.path(), 3);
    let brokers = case.broker.brokers();
    // The stream in two halves: the first is consumed (in part or whole) by a first run, the
    // second published while no member runs.
    let text = std::fs::read_to_string(case.dir.join("events.jsonl")).unwrap();
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let half = lines.len() / 2;
    let (first, second) = (case.dir.join("first.jsonl"), case.dir.join("second.jsonl"));
    std::fs::write(&first, lines[..half].join("\n") + "\n").unwrap();
    std::fs::write(&second, lines[half..].join("\n") + "\n").unwrap();
    let published = |path: &Path, n: usize| {
        let out = case.publish_file(path, None).wait_with_output().unwrap();
        assert!(
            out.status.success()
                && String::from_utf8_lossy(&out.stdout).contains(&format!("published {n} records")),
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    };
    published(&first, half);

    // Part of the stream, then the group's offsets jump to the end (ahead of the checkpoints):
    // the next run must go back to its checkpoints and miss nothing.
    // (A partition without a checkpoint starts where the group's offset says: that is how an
    // operator skips old data on a new deployment. So every partition gets one first.)
    let mut run = case.run("part");
    let t0 = Instant::now();
    while checkpoints(&case.storage)
        .await
        .iter()
        .filter(|c| c.next_offset > 0)
        .count()
        < 4
    {
        assert!(
            t0.elapsed() < Duration::from_secs(90),
            "{}",
            case.log("part")
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(sigterm_and_wait(&mut run).success());
    assert!(case.committed().await <= half as u64);
    published(&second, lines.len() - half);
    set_group_offsets(&brokers, "jinryu-test", "events", true);
    let mut run = case.run("ahead");
    case.verify().await;
    assert!(sigterm_and_wait(&mut run).success());

    // Now the offsets go back to the beginning (behind the checkpoints), as after a crash between
    // a checkpoint and its Kafka commit: nothing is consumed again.
    set_group_offsets(&brokers, "jinryu-test", "events", false);
    let mut run = case.run("behind");
    let t0 = Instant::now();
    while case.log("behind").matches("partition assigned").count() < 4 {
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "{}",
            case.log("behind")
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let addr = metrics_addr(&case.log("behind")).unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(metric(&addr, "jinryu_accepted_total"), 0.0);
    assert!(sigterm_and_wait(&mut run).success());
    case.verify().await;
}

fn signal(c: &Child, sig: i32) {
    // SAFETY: sending a signal to our own child.
    unsafe { libc::kill(c.id() as i32, sig) };
}

/// A `jinryu run` paused (SIGSTOP) past its session timeout while it holds consumed records: the
/// group gives its partitions to another process, which commits more. When the paused one wakes
/// up it must not commit its stale epoch (it is fenced, or sees its assignment lost) — every
/// window still equals the truth.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_owner_is_fenced_when_it_wakes_up() {
    let tmp = tempfile::tempdir().unwrap();
    let case = setup_unpublished(tmp.path(), 4);
    let publisher = case.publish(Some(20_000));
    let mut zombie = case.run("zombie");
    let t0 = Instant::now();
    while case.committed().await == 0 {
        assert!(
            t0.elapsed() < Duration::from_secs(90),
            "{}",
            case.log("zombie")
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Paused mid-stream, with records consumed and not yet committed.
    tokio::time::sleep(Duration::from_millis(700)).await;
    signal(&zombie, libc::SIGSTOP);
    let at_pause = case.committed().await;
    let mut owner = case.run("owner");
    let t0 = Instant::now();
    while !(case.log("owner").contains("partition assigned") && case.committed().await > at_pause) {
        assert!(
            t0.elapsed() < Duration::from_secs(90),
            "the new owner never committed:\n{}",
            case.log("owner")
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    signal(&zombie, libc::SIGCONT);
    let out = tokio::task::spawn_blocking(move || publisher.wait_with_output().unwrap())
        .await
        .unwrap();
    case.check_published(&out);
    case.verify().await;
    let log = case.log("zombie");
    for l in log
        .lines()
        .filter(|l| l.contains("FENCED") || l.contains("without committing"))
    {
        eprintln!("zombie: {l}");
    }
    assert!(
        log.contains("FENCED") || log.contains("released without committing"),
        "the woken owner neither was fenced nor saw its assignment lost:\n{log}"
    );
    kill9(&mut zombie);
    let st = sigterm_and_wait(&mut owner);
    assert!(st.success(), "{st}\n{}", case.log("owner"));
}

/// Two services with different consumer groups on one storage both read every partition: the
/// second writer of a partition is fenced (refused, /healthz 503), never a double count.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_groups_on_one_storage_are_fenced_not_doubled() {
    let tmp = tempfile::tempdir().unwrap();
    let case = setup(tmp.path(), 2);
    let other_cfg = tmp.path().join("other-group.toml");
    std::fs::write(
        &other_cfg,
        std::fs::read_to_string(&case.cfg_path)
            .unwrap()
            .replace("group = \"jinryu-test\"", "group = \"another-group\""),
    )
    .unwrap();
    let mut a = case.run("a");
    let log = std::fs::File::create(tmp.path().join("run-b.log")).unwrap();
    let mut b = jinryu()
        .arg("run")
        .arg("--config")
        .arg(&other_cfg)
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    case.verify().await;
    let (la, lb) = (case.log("a"), case.log("b"));
    assert!(
        la.contains("FENCED") || lb.contains("FENCED"),
        "neither service was fenced:\n{la}\n{lb}"
    );
    // The fenced one says so on /healthz.
    let fenced_log = if lb.contains("FENCED") { &lb } else { &la };
    let addr = metrics_addr(fenced_log).expect("metrics address");
    let (status, body) = http_get(&addr, "/healthz");
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("fenced"), "{body}");
    kill9(&mut a);
    kill9(&mut b);
}
