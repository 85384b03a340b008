//! The `jinryu` binary as a user runs it: ingest (file and stdin), replays that replace instead of
//! duplicating, the monthly CSV, `sql`, configuration errors and `--help`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

fn jinryu() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_jinryu"));
    c.env("JINRYU_LOG", "warn");
    c
}

fn ok(out: Output) -> String {
    assert!(
        out.status.success(),
        "jinryu failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The Chi-Ka-Ho config with storage in `dir`.
fn config(dir: &Path) -> PathBuf {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docker/jinryu.toml"))
        .unwrap()
        .replace(
            "file:///var/lib/jinryu",
            &format!("file://{}/data", dir.display()),
        );
    let p = dir.join("jinryu.toml");
    std::fs::write(&p, text).unwrap();
    p
}

fn sql(cfg: &Path, q: &str) -> String {
    ok(jinryu()
        .args(["sql", "--format", "csv", "--config"])
        .arg(cfg)
        .arg(q)
        .output()
        .unwrap())
}

/// A small day: J1-1 counts, J1-2 only heartbeats (live, zero), the rest silent (missing).
fn day_lines(extra_hours: u32) -> String {
    let mut s = String::new();
    let mut seq = 0;
    for h in 8..(10 + extra_hours) {
        for m in (0..60).step_by(5) {
            seq += 1;
            s.push_str(&format!(
                "{{\"sensor_id\":\"J1-1\",\"ts\":\"2026-11-02T{h:02}:{m:02}:10+09:00\",\"direction\":\"north\",\"count\":3,\"seq\":{seq}}}\n"
            ));
            s.push_str(&format!(
                "{{\"sensor_id\":\"J1-2\",\"ts\":\"2026-11-02T{h:02}:{m:02}:00+09:00\",\"kind\":\"heartbeat\",\"status\":\"ok\"}}\n"
            ));
        }
    }
    s.push_str("{\"sensor_id\":\"J1-1\",\"ts\":\"2026-11-02T08:00:00\",\"direction\":\"north\"}\n");
    s
}

#[test]
fn replaying_an_input_replaces_its_output() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    let input = dir.path().join("events.jsonl");
    std::fs::write(&input, day_lines(0)).unwrap();
    let ingest = || {
        ok(jinryu()
            .args(["ingest", "--json", "--config"])
            .arg(&cfg)
            .arg("--input")
            .arg(&input)
            .output()
            .unwrap())
    };
    let r1: serde_json::Value = serde_json::from_str(&ingest()).unwrap();
    assert_eq!(r1["lines"], 49);
    assert_eq!(r1["quarantined"], 1);
    assert_eq!(r1["people"], 72);
    let total = || {
        sql(
            &cfg,
            "SELECT SUM(\"count\") AS people, COUNT(*) AS n FROM aggregates",
        )
    };
    assert_eq!(total(), "people,n\n72,32\n");

    // Same input again: its files replace the first run's in one commit, nothing added.
    let r2: serde_json::Value = serde_json::from_str(&ingest()).unwrap();
    assert_eq!(r2["stale_objects_removed"], r1["objects_written"]);
    assert_eq!(total(), "people,n\n72,32\n");

    // The file grew: its output is replaced, not added to.
    std::fs::write(&input, day_lines(2)).unwrap();
    let r3: serde_json::Value = serde_json::from_str(&ingest()).unwrap();
    assert_eq!(r3["people"], 144);
    assert_eq!(total(), "people,n\n144,64\n");
    let q = sql(&cfg, "SELECT reason, position FROM quarantine");
    assert_eq!(q, "reason,position\ntimestamp_without_offset,97\n");
}

/// Every file under `dir` with its length and modification time.
fn tree(dir: &Path) -> Vec<(String, u64, std::time::SystemTime)> {
    let mut v = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let m = e.metadata().unwrap();
            if m.is_dir() {
                stack.push(e.path());
            } else {
                v.push((
                    e.path().display().to_string(),
                    m.len(),
                    m.modified().unwrap(),
                ));
            }
        }
    }
    v.sort();
    v
}

/// Ingests `input` through stdin; `kill_after` bytes written, the process is killed (-9) instead.
fn ingest_stdin(cfg: &Path, input: &[u8], kill_after: Option<usize>) -> Option<serde_json::Value> {
    use std::io::Write;
    let mut child = jinryu()
        .args(["ingest", "--json", "--workers", "1", "--config"])
        .arg(cfg)
        .args(["--input", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    match kill_after {
        Some(n) => {
            stdin.write_all(&input[..n]).unwrap();
            stdin.flush().unwrap();
            std::thread::sleep(std::time::Duration::from_millis(1500));
            child.kill().unwrap();
            child.wait().unwrap();
            None
        }
        None => {
            stdin.write_all(input).unwrap();
            drop(stdin);
            let out = ok(child.wait_with_output().unwrap());
            Some(serde_json::from_str(&out).unwrap())
        }
    }
}

/// A stdin run killed half-way shows nothing; re-running the same input (its id comes from the
/// content) gives exact totals, and a second re-run replaces rather than adds.
#[test]
fn stdin_rerun_after_a_failed_run_is_exact() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    let mut input = String::new();
    for day in 2..=4 {
        input.push_str(&day_lines(0).replace("2026-11-02", &format!("2026-11-0{day}")));
    }
    let input = input.into_bytes();
    let people = "SELECT COALESCE(SUM(\"count\"), 0) AS people FROM aggregates";

    assert!(ingest_stdin(&cfg, &input, Some(input.len() / 2)).is_none());
    assert_eq!(
        sql(&cfg, people),
        "people\n0\n",
        "a killed run left rows behind"
    );

    let r1 = ingest_stdin(&cfg, &input, None).unwrap();
    assert_eq!(r1["people"], 216);
    assert!(r1["source"].as_str().unwrap().starts_with("stdin-"), "{r1}");
    assert_eq!(sql(&cfg, people), "people\n216\n");

    let r2 = ingest_stdin(&cfg, &input, None).unwrap();
    assert_eq!(r2["source"], r1["source"]);
    assert_eq!(r2["stale_objects_removed"], r1["objects_written"]);
    assert_eq!(sql(&cfg, people), "people\n216\n");
    assert_eq!(
        sql(&cfg, "SELECT COUNT(*) AS n FROM quarantine"),
        "n\n3\n",
        "quarantine rows replaced, not added"
    );
}

/// `jinryu sql` is read-only: writes through SQL are refused and nothing on disk changes.
#[test]
fn sql_refuses_every_write_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    let input = dir.path().join("events.jsonl");
    std::fs::write(&input, day_lines(0)).unwrap();
    ok(jinryu()
        .args(["ingest", "--config"])
        .arg(&cfg)
        .arg("--input")
        .arg(&input)
        .output()
        .unwrap());
    let before = tree(dir.path());
    let target = dir.path().join("data/aggregates/stolen");
    for q in [
        format!(
            "COPY (SELECT * FROM aggregates) TO '{}' STORED AS PARQUET",
            target.display()
        ),
        "COPY aggregates TO '/tmp/jinryu-copy-test.csv'".to_string(),
        "INSERT INTO aggregates SELECT * FROM aggregates".to_string(),
        format!(
            "CREATE EXTERNAL TABLE x STORED AS PARQUET LOCATION '{}/data/aggregates/'",
            dir.path().display()
        ),
        "CREATE TABLE y AS SELECT 1".to_string(),
        "DROP VIEW flow_15min".to_string(),
        "SET datafusion.execution.batch_size = 1".to_string(),
    ] {
        let out = jinryu()
            .args(["sql", "--config"])
            .arg(&cfg)
            .arg(&q)
            .output()
            .unwrap();
        assert!(!out.status.success(), "accepted: {q}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("not supported") || err.contains("refused"),
            "{q}: {err}"
        );
    }
    assert_eq!(
        tree(dir.path()),
        before,
        "a refused statement changed the storage"
    );
    assert!(!std::path::Path::new("/tmp/jinryu-copy-test.csv").exists());
    assert_eq!(
        sql(&cfg, "SELECT SUM(\"count\") AS people FROM aggregates"),
        "people\n72\n"
    );
}

#[test]
fn monthly_csv_marks_zero_missing_and_closed() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    let mut child = jinryu()
        .args(["ingest", "--source-id", "piped", "--input", "-", "--config"])
        .arg(&cfg)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(day_lines(0).as_bytes())
        .unwrap();
    ok(child.wait_with_output().unwrap());

    let out = dir.path().join("out");
    let printed = ok(jinryu()
        .args(["monthly", "--month", "2026-11", "--config"])
        .arg(&cfg)
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap());
    assert!(printed.contains("2026_11.csv"), "{printed}");
    let bytes = std::fs::read(out.join("2026_11.csv")).unwrap();
    let text = String::from_utf8(bytes.clone()).unwrap();
    assert!(text.starts_with("date,time,sensor_id,array,direction,count,status\r\n"));
    assert_eq!(text.matches("\r\n").count(), text.lines().count());
    let rows: Vec<&str> = text.lines().skip(1).collect();
    assert_eq!(rows.len(), 30 * 96 * 16);
    let find = |prefix: &str| {
        rows.iter()
            .find(|r| r.starts_with(prefix))
            .copied()
            .unwrap()
    };
    assert_eq!(
        find("2026-11-02,08:15,J1-1,J1,north"),
        "2026-11-02,08:15,J1-1,J1,north,9,ok"
    );
    assert_eq!(
        find("2026-11-02,08:15,J1-1,J1,south"),
        "2026-11-02,08:15,J1-1,J1,south,0,ok"
    );
    assert_eq!(
        find("2026-11-02,08:15,J1-2,J1,north"),
        "2026-11-02,08:15,J1-2,J1,north,0,ok"
    );
    assert_eq!(
        find("2026-11-02,08:15,J2-1,J2,north"),
        "2026-11-02,08:15,J2-1,J2,north,,missing"
    );
    assert_eq!(
        find("2026-11-02,03:00,J1-1,J1,north"),
        "2026-11-02,03:00,J1-1,J1,north,,closed"
    );
    assert_eq!(
        find("2026-11-02,05:30,J1-1,J1,north"),
        "2026-11-02,05:30,J1-1,J1,north,,missing"
    );
    assert_eq!(
        rows.iter().filter(|r| r.ends_with(",closed")).count(),
        30 * 18 * 16
    );
    assert_eq!(
        rows.iter().filter(|r| r.ends_with(",ok")).count(),
        8 * 2 * 2
    );
    // Checksum file in sha256sum format.
    use sha2::Digest;
    let sha = format!("{:x}", sha2::Sha256::digest(&bytes));
    assert_eq!(
        std::fs::read_to_string(out.join("2026_11.csv.sha256")).unwrap(),
        format!("{sha}  2026_11.csv\n")
    );
}

#[test]
fn configuration_errors_name_every_key() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("bad.toml");
    std::fs::write(&p, "timezone = \"Asia/Tokio\"\nfoo = 1\n[window]\nsize = \"7m\"\n[[sensors]]\nid = \"A\"\narray = \"X\"\n").unwrap();
    let out = jinryu()
        .args(["monthly", "--month", "2026-11", "--config"])
        .arg(&p)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    for want in [
        "unknown key `foo`",
        "timezone: `Asia/Tokio`",
        "window.size:",
    ] {
        assert!(err.contains(want), "missing {want:?} in:\n{err}");
    }
    let out = jinryu()
        .args(["sql", "--config", "/nonexistent/j.toml", "SELECT 1"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("docker/jinryu.toml"));
    let out = jinryu()
        .args(["monthly", "--month", "2026-13"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("YYYY-MM"));
}

#[test]
fn help_is_a_manual() {
    let top = ok(jinryu().arg("--help").output().unwrap());
    for cmd in [
        "demo",
        "ingest",
        "simulate",
        "monthly",
        "sql",
        "docker/jinryu.toml",
    ] {
        assert!(top.contains(cmd), "{cmd} missing from --help");
    }
    let ingest = ok(jinryu().args(["ingest", "--help"]).output().unwrap());
    assert!(ingest.contains("quarantined"));
    assert!(ingest.contains("--source-id"));
    let monthly = ok(jinryu().args(["monthly", "--help"]).output().unwrap());
    assert!(monthly.contains("missing"));
}
