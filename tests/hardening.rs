//! Issue #11 as an attacker and an unlucky operator would try it, with the release-shaped binary:
//! secrets never appear in any output, a configuration cannot load code, bad settings are refused
//! with exit 1 instead of truncating or panicking, device text cannot become a spreadsheet
//! formula, and a flood of large rejected messages stays within bounded memory and is kept whole.
//! (The `/healthz` listener under attack is tests/listener.rs; the container and units are
//! tests/container.rs.)

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn jinryu() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_jinryu"));
    c.env("JINRYU_LOG", "info,buoyant_kernel=warn,deltalake_core=warn");
    c
}

fn all_output(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The Chi-Ka-Ho config with storage in `dir`, `extra` appended (a TOML table), and `edit`
/// replacements applied to the text.
fn config(dir: &Path, name: &str, edit: &[(&str, &str)], extra: &str) -> PathBuf {
    let mut text =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docker/jinryu.toml"))
            .unwrap()
            .replace(
                "file:///var/lib/jinryu",
                &format!("file://{}/data", dir.display()),
            );
    for (from, to) in edit {
        assert!(text.contains(from), "{from} not in docker/jinryu.toml");
        text = text.replace(from, to);
    }
    if extra.contains("[kafka]") {
        // Replace the example's own [kafka] table.
        let start = text
            .find("\n[kafka]")
            .expect("[kafka] in docker/jinryu.toml");
        let end = text[start + 1..]
            .find("\n[")
            .map_or(text.len(), |i| start + 1 + i);
        text.replace_range(start..end, "");
    }
    text.push_str(extra);
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

const SECRET: &str = "s3cret-Zq81";

/// `jinryu run` with `cfg`, which is expected to be refused at start: its exit code and all it
/// printed.
fn run_refused(cfg: &Path) -> (Option<i32>, String) {
    let out = jinryu()
        .arg("run")
        .arg("--config")
        .arg(cfg)
        .output()
        .unwrap();
    (out.status.code(), all_output(&out))
}

fn kafka_table(properties: &str, keys: &str) -> String {
    format!(
        "\n[kafka]\nbrokers = \"127.0.0.1:1\"\ntopic = \"t\"\n{keys}\n[kafka.properties]\n{properties}\n"
    )
}

/// Every way a secret reached an output before: a sensitive property in any case, through an
/// alias, echoed by librdkafka's own error, written into a `*_env` key, or inside a webhook URL.
#[test]
fn no_secret_reaches_any_output() {
    let dir = tempfile::tempdir().unwrap();
    let sensitive = [
        "SASL.PASSWORD",
        "sasl.password",
        "Sasl.Username",
        "ssl.key.pem",
        "ssl.ca.pem",
        "ssl.keystore.password",
        "sasl.oauthbearer.config",
        "sasl.oauthbearer.client.secret",
        "sasl.oauthbearer.client.credentials.client.secret",
        "sasl.oauthbearer.assertion.private.key.passphrase",
    ];
    for (i, prop) in sensitive.iter().enumerate() {
        let cfg = config(
            dir.path(),
            &format!("s{i}.toml"),
            &[],
            &kafka_table(&format!("\"{prop}\" = \"{SECRET}\""), ""),
        );
        let (code, text) = run_refused(&cfg);
        assert_eq!(code, Some(1), "{prop}: {text}");
        assert!(!text.contains(SECRET), "{prop} leaked:\n{text}");
        assert!(
            text.contains("sensitive"),
            "{prop}: no reason given:\n{text}"
        );
    }
    // librdkafka refuses a value and quotes it in its message: jinryu shows the property only.
    let cfg = config(
        dir.path(),
        "echo.toml",
        &[],
        &kafka_table(&format!("\"fetch.max.bytes\" = \"{SECRET}\""), ""),
    );
    let (code, text) = run_refused(&cfg);
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("fetch.max.bytes"), "{text}");
    assert!(!text.contains(SECRET), "librdkafka's echo leaked:\n{text}");
    // A password written into the key that should name an environment variable.
    let cfg = config(
        dir.path(),
        "env.toml",
        &[],
        &kafka_table(
            "",
            &format!(
                "sasl_mechanism = \"PLAIN\"\nsasl_username = \"u\"\nsasl_password_env = \"{SECRET}!\""
            ),
        ),
    );
    let (code, text) = run_refused(&cfg);
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("kafka.sasl_password_env"), "{text}");
    assert!(!text.contains(SECRET), "{text}");
    // A webhook URL with credentials, to a port where nothing listens: the failure is reported
    // without them.
    let port = support::free_port();
    let cfg = config(
        dir.path(),
        "hook.toml",
        &[(
            "# webhook_url = \"http://127.0.0.1:9000/jinryu\"",
            &format!(
                "webhook_url = \"http://alice:{SECRET}@127.0.0.1:{port}/hook?token={SECRET}\""
            ),
        )],
        "",
    );
    // Three simulated days in which J1-1 falls silent for ten hours: an alert to send.
    let (stream, _) = support::simulated(3, false);
    let kept: Vec<&[u8]> = support::lines(&stream)
        .into_iter()
        .filter(|l| {
            let l = String::from_utf8_lossy(l);
            !(l.contains("\"J1-1\"") && l.contains("2026-10-02T1"))
        })
        .collect();
    assert!(kept.len() < support::lines(&stream).len());
    let input = dir.path().join("sim.jsonl");
    std::fs::write(&input, support::join_lines(&kept)).unwrap();
    let ingest = jinryu()
        .args(["ingest", "--config"])
        .arg(&cfg)
        .arg("--input")
        .arg(&input)
        .output()
        .unwrap();
    assert!(ingest.status.success(), "{}", all_output(&ingest));
    let out = jinryu()
        .args([
            "check",
            "--quiet",
            "--from",
            "2026-10-01",
            "--to",
            "2026-10-03",
            "--config",
        ])
        .arg(&cfg)
        .output()
        .unwrap();
    let text = all_output(&out);
    assert_eq!(
        out.status.code(),
        Some(1),
        "a failed route fails the check: {text}"
    );
    assert!(text.contains(&format!("127.0.0.1:{port}/…")), "{text}");
    assert!(
        !text.contains(SECRET),
        "webhook credentials leaked:\n{text}"
    );
    assert!(!text.contains("alice"), "webhook user leaked:\n{text}");
    // A URL of a scheme other than http(s) is refused at load: the refusal hides them too.
    let cfg = config(
        dir.path(),
        "hooks.toml",
        &[(
            "# webhook_url = \"http://127.0.0.1:9000/jinryu\"",
            &format!("webhook_url = \"ftp://alice:{SECRET}@example.org/hook?token={SECRET}\""),
        )],
        "",
    );
    let out = jinryu()
        .args(["check", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    let text = all_output(&out);
    assert!(text.contains("alerts.webhook_url"), "refused: {text}");
    assert!(!text.contains(SECRET) && !text.contains("alice"), "{text}");
}

/// Properties that would make librdkafka load a library or run a command are refused, in any case.
#[test]
fn configuration_cannot_load_code() {
    let dir = tempfile::tempdir().unwrap();
    let lib = dir.path().join("evil.so");
    for (i, prop) in [
        "plugin.library.paths",
        "PLUGIN.LIBRARY.PATHS",
        "ssl.engine.location",
        "ssl.providers",
        "sasl.kerberos.kinit.cmd",
    ]
    .iter()
    .enumerate()
    {
        let cfg = config(
            dir.path(),
            &format!("c{i}.toml"),
            &[],
            &kafka_table(&format!("\"{prop}\" = \"{}\"", lib.display()), ""),
        );
        let (code, text) = run_refused(&cfg);
        assert_eq!(code, Some(1), "{prop}: {text}");
        assert!(
            text.contains("load a library or run a command"),
            "{prop}: {text}"
        );
    }
}

/// `max_count` beyond what a count can hold used to be truncated (4294967297 stored as 1); a
/// format whose date_format has a time part used to pass validation and then panic.
#[test]
fn bad_settings_are_refused_not_truncated_or_panicking() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(
        dir.path(),
        "max.toml",
        &[("max_count = 1000 ", "max_count = 4294967297 ")],
        "",
    );
    let input = dir.path().join("e.jsonl");
    std::fs::write(
        &input,
        "{\"sensor_id\":\"J1-1\",\"ts\":\"2026-11-02T08:15:03+09:00\",\"direction\":\"north\",\"count\":4294967297}\n",
    )
    .unwrap();
    let out = jinryu()
        .args(["ingest", "--config"])
        .arg(&cfg)
        .arg("--input")
        .arg(&input)
        .output()
        .unwrap();
    let text = all_output(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("validation.max_count"), "{text}");
    assert!(!dir.path().join("data").exists(), "nothing may be written");

    let good = config(dir.path(), "good.toml", &[], "");
    let long =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/formats/long.toml")).unwrap();
    for (name, from, to, key) in [
        (
            "d.toml",
            "date_format = \"%Y-%m-%d\"",
            "date_format = \"%Y-%m-%d %H:%M\"",
            "date_format",
        ),
        (
            "t.toml",
            "time_format = \"%H:%M\"",
            "time_format = \"%Y %H:%M\"",
            "time_format",
        ),
    ] {
        assert!(long.contains(from));
        let f = dir.path().join(name);
        std::fs::write(&f, long.replace(from, to)).unwrap();
        let out = jinryu()
            .args(["monthly", "--month", "2026-11", "--config"])
            .arg(&good)
            .arg("--format")
            .arg(&f)
            .arg("--out")
            .arg(dir.path().join("out"))
            .output()
            .unwrap();
        let text = all_output(&out);
        assert_eq!(out.status.code(), Some(1), "{name}: {text}");
        assert!(text.contains(key), "{name}: {text}");
        assert!(!text.contains("panicked"), "{name}: {text}");
    }
}

/// Device-chosen text that a spreadsheet would evaluate is written with a leading `'`; numbers
/// (negative ones included) are written as they are.
#[test]
fn device_text_cannot_become_a_formula() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), "j.toml", &[], "");
    let input = dir.path().join("e.jsonl");
    let mut lines = String::new();
    for (i, code) in ["=1+1", "+SUM(A1)", "-2", "@cmd", "E-LENS"]
        .iter()
        .enumerate()
    {
        lines.push_str(&format!(
            "{{\"sensor_id\":\"J2-{}\",\"ts\":\"2026-11-02T10:00:00+09:00\",\"kind\":\"heartbeat\",\"status\":\"fault\",\"code\":\"{code}\"}}\n",
            i + 1
        ));
    }
    // Rejected messages whose text starts like a formula.
    lines.push_str("=HYPERLINK(\"http://x\")\n-1\n");
    std::fs::write(&input, lines).unwrap();
    let out = jinryu()
        .args(["ingest", "--config"])
        .arg(&cfg)
        .arg("--input")
        .arg(&input)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", all_output(&out));
    let sql = |q: &str| {
        let out = jinryu()
            .args(["sql", "--format", "csv", "--config"])
            .arg(&cfg)
            .arg(q)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", all_output(&out));
        String::from_utf8(out.stdout).unwrap()
    };
    let codes = sql(
        "SELECT DISTINCT fault_code, -faults AS neg FROM aggregates WHERE fault_code IS NOT NULL ORDER BY fault_code",
    );
    let rows: Vec<&str> = codes.lines().skip(1).collect();
    assert_eq!(
        rows,
        [
            "'+SUM(A1),-1",
            "'-2,-1",
            "'=1+1,-1",
            "'@cmd,-1",
            "E-LENS,-1"
        ],
        "{codes}"
    );
    let payloads = sql("SELECT CAST(payload AS VARCHAR) AS p FROM quarantine ORDER BY position");
    let rows: Vec<&str> = payloads.lines().skip(1).collect();
    assert_eq!(
        rows,
        ["\"'=HYPERLINK(\"\"http://x\"\")\"", "'-1"],
        "{payloads}"
    );
}

/// A flood of ~1 KB messages from an unknown sensor: before, every rejected message was buffered
/// until `roll_rows` (1 M) and 400 k of them reached 1.05 GB; now the quarantine buffer is committed
/// by bytes too. Every message is kept whole (it is under `max_message_bytes`), so it can be
/// re-ingested from the table.
#[test]
fn quarantine_flood_stays_in_bounded_memory_and_is_kept_whole() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), "j.toml", &[], "");
    let input = dir.path().join("flood.jsonl");
    let n = 400_000u64;
    {
        use std::io::Write;
        let mut w = std::io::BufWriter::new(std::fs::File::create(&input).unwrap());
        let pad = "x".repeat(960);
        for i in 0..n {
            writeln!(
                w,
                "{{\"sensor_id\":\"ROGUE-{:06}\",\"ts\":\"2026-11-02T08:15:03+09:00\",\"direction\":\"north\",\"count\":1,\"pad\":\"{pad}\"}}",
                i % 1000
            )
            .unwrap();
        }
    }
    // The first line only: reading the whole file here would raise this process's peak RSS,
    // which Linux carries into the peak of a child it starts (exec records the old mm's peak).
    let long_line_len = {
        use std::io::BufRead;
        let mut first = String::new();
        std::io::BufReader::new(std::fs::File::open(&input).unwrap())
            .read_line(&mut first)
            .unwrap();
        first.trim_end().len()
    };
    assert!(
        long_line_len > 1024,
        "messages must be larger than the old 1 KiB cut"
    );
    let out = jinryu()
        .args(["ingest", "--config"])
        .arg(&cfg)
        .arg("--input")
        .arg(&input)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", all_output(&out));
    let rss = support::peak_child_rss_mb();
    assert!(
        rss <= 300.0,
        "peak RSS {rss:.0} MB for the flood (limit 300 MB)"
    );
    let out = jinryu()
        .args(["sql", "--format", "csv", "--config"])
        .arg(&cfg)
        .arg("SELECT count(*) AS n, min(length(payload)) AS lo, max(length(payload)) AS hi, sum(CASE WHEN length(payload) = payload_bytes THEN 1 ELSE 0 END) AS whole FROM quarantine WHERE reason = 'unknown_sensor'")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", all_output(&out));
    let text = String::from_utf8(out.stdout).unwrap();
    let row = text.lines().nth(1).unwrap();
    assert_eq!(
        row,
        format!("{n},{long_line_len},{long_line_len},{n}"),
        "{text} (peak RSS {rss:.0} MB)"
    );
    eprintln!("quarantine flood: {n} messages of {long_line_len} bytes, peak RSS {rss:.0} MB");
}
