//! The monthly deliverable in every shipped format: golden files compared byte for byte (BOM, CRLF,
//! Shift_JIS included), a dead sensor that stays missing or is estimated and flagged — never zero —
//! and the due date. Regenerate the golden files after an intended change with
//! `JINRYU_BLESS=1 cargo test --test formats` and review the diff.

use std::path::PathBuf;

use jinryu::config::Config;
use jinryu::ingest::{IngestOptions, ingest};
use jinryu::jobs::{self, format::Format};
use jinryu::sink::store::Storage;

/// Chi-Ka-Ho in miniature: J1-1, and J2-1 + J2-2 (J2-1 usually carries twice J2-2's traffic);
/// hourly windows to keep the golden files small.
const CONFIG: &str = r#"
timezone = "Asia/Tokyo"
[storage]
url = "memory://"
[window]
size = "1h"
allowed_lateness = "10m"
[facility]
closed = ["00:46-05:44"]
[[sensors]]
id = "J1-1"
array = "J1"
[[sensors]]
id = "J2-1"
array = "J2"
[[sensors]]
id = "J2-2"
array = "J2"
"#;

const JAN1: i64 = 1_767_193_200_000; // 2026-01-01T00:00:00+09:00
const HOUR: i64 = 3_600_000;

/// January and February 2026. Silences in February: J2-2 on the 10th 09:00-12:00 (its array
/// partner is live: estimable), J1-1 on the 11th 10:00-11:00 (alone in its array: stays missing).
fn events() -> String {
    let mut s = String::new();
    let mut seq = 0;
    for h in 0..(31 + 28) * 24 {
        let t = JAN1 + h * HOUR;
        let local_hour = (h % 24) as u64;
        if (1..=4).contains(&local_hour) {
            continue; // closed at night
        }
        let day = h / 24 + 1;
        for (sensor, weight) in [("J1-1", 3u64), ("J2-1", 2), ("J2-2", 1)] {
            let dead = (sensor == "J2-2" && day == 31 + 10 && (9..12).contains(&local_hour))
                || (sensor == "J1-1" && day == 31 + 11 && local_hour == 10);
            if dead {
                continue;
            }
            s.push_str(&format!("{{\"sensor_id\":\"{sensor}\",\"ts\":{},\"kind\":\"heartbeat\",\"status\":\"ok\"}}\n", t + 1000));
            for (dir, k) in [("north", 1u64), ("south", 2)] {
                // Quiet at 05:00 (a measured zero), busier by day.
                let people = if local_hour == 5 {
                    0
                } else {
                    weight * (k + local_hour % 7) * 3
                };
                if people > 0 {
                    seq += 1;
                    s.push_str(&format!(
                        "{{\"sensor_id\":\"{sensor}\",\"ts\":{},\"direction\":\"{dir}\",\"count\":{people},\"seq\":{seq}}}\n",
                        t + 120_000
                    ));
                }
            }
        }
    }
    s
}

fn golden(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(name)
}

async fn render_all() -> Vec<(String, Vec<u8>, jobs::monthly::MonthlyOutput)> {
    let cfg = Config::parse(CONFIG, "formats test").unwrap();
    let storage = Storage::open("memory://").unwrap();
    ingest(
        &cfg,
        &storage,
        Box::new(std::io::Cursor::new(events().into_bytes())),
        &IngestOptions::new("golden"),
    )
    .await
    .unwrap();
    let ctx = jobs::context(&cfg, &storage).await.unwrap();
    let mut out = Vec::new();
    for file in ["long.toml", "sapporo-wide.toml", "sapporo-wide-utf8.toml"] {
        let format = Format::load(
            &PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("formats")
                .join(file),
        )
        .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let m = jobs::monthly::write_monthly(&ctx, &cfg, 2026, 2, &format, dir.path())
            .await
            .unwrap();
        let bytes = std::fs::read(&m.csv).unwrap();
        out.push((format.name.clone(), bytes, m));
    }
    out
}

#[tokio::test]
async fn shipped_formats_match_their_golden_files() {
    for (name, bytes, _) in render_all().await {
        let path = golden(&format!("{name}_2026_02.csv"));
        if std::env::var_os("JINRYU_BLESS").is_some() {
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, &bytes).unwrap();
        }
        let want = std::fs::read(&path)
            .unwrap_or_else(|_| panic!("{} missing: run with JINRYU_BLESS=1", path.display()));
        assert!(
            bytes == want,
            "{name}: output differs from {}",
            path.display()
        );
    }
}

#[tokio::test]
async fn encodings_line_endings_and_estimates_are_right() {
    let all = render_all().await;
    let (_, long, m_long) = &all[0];
    let (_, sjis, m_wide) = &all[1];
    let (_, bom, _) = &all[2];

    // Long, UTF-8 without BOM, CRLF everywhere, a row per series and window.
    let text = std::str::from_utf8(long).unwrap();
    assert!(text.starts_with("date,time,sensor_id,array,direction,count,status\r\n"));
    assert_eq!(text.matches('\n').count(), text.matches("\r\n").count());
    assert_eq!(text.lines().count(), 1 + 28 * 24 * 6);
    // The dead sensor's cells are missing (empty), never 0; the long format does not estimate.
    assert!(text.contains("2026-02-10,09:00,J2-2,J2,north,,missing\r\n"));
    assert!(text.contains("2026-02-11,10:00,J1-1,J1,south,,missing\r\n"));
    assert!(
        text.contains("2026-02-10,05:00,J2-2,J2,north,0,ok\r\n"),
        "a live quiet hour is a measured zero"
    );
    assert!(text.contains("2026-02-10,03:00,J2-2,J2,north,,closed\r\n"));
    assert_eq!((m_long.missing, m_long.estimated), ((3 * 2 + 2) as u64, 0));

    // Wide Shift_JIS: decodes as CP932 to the Japanese header; J2-2 estimated from its share.
    let (decoded, _, bad) = encoding_rs::SHIFT_JIS.decode(sjis);
    assert!(!bad);
    assert!(
        decoded
            .starts_with("日付,時間帯,J1北向,J1南向,J2北向,J2南向,北向合計,南向合計,合計,補正\r\n")
    );
    assert!(sjis.starts_with(&[0x93, 0xFA, 0x95, 0x74])); // 日付 in CP932
    assert_eq!(decoded.lines().count(), 1 + 28 * 24);
    // 10th 09:00: J2-1 north 2*(1+9%7)*3 = 18, J2-2 estimated 18 * (1/3)/(2/3) = 9 → J2 north 27.
    let row = decoded
        .lines()
        .find(|l| l.starts_with("2026/02/10,09:00-10:00,"))
        .unwrap();
    let j1n = 3 * (1 + 9 % 7) * 3;
    let j1s = 3 * (2 + 9 % 7) * 3;
    let j2n = 18 + 9;
    let j2s = 2 * (2 + 9 % 7) * 3 + (2 * (2 + 9 % 7) * 3) / 2;
    assert_eq!(
        row,
        format!(
            "2026/02/10,09:00-10:00,{j1n},{j1s},{j2n},{j2s},{},{},{},1",
            j1n + j2n,
            j1s + j2s,
            j1n + j1s + j2n + j2s
        )
    );
    // 11th 10:00: J1 has no live sensor: J1 and every total stay empty, never 0 or a partial sum.
    let row = decoded
        .lines()
        .find(|l| l.starts_with("2026/02/11,10:00-11:00,"))
        .unwrap();
    assert!(row.starts_with("2026/02/11,10:00-11:00,,,"), "{row}");
    assert!(row.ends_with(",,,,0"), "{row}");
    assert!(decoded.contains("2026/02/11,03:00-04:00,閉鎖,閉鎖,閉鎖,閉鎖,閉鎖,閉鎖,閉鎖,0\r\n"));
    assert_eq!(m_wide.estimated, 3 * 2);
    assert_eq!(m_wide.missing, 2);

    // UTF-8 with BOM: the same text as the Shift_JIS file.
    assert!(bom.starts_with(b"\xEF\xBB\xBF"));
    assert_eq!(std::str::from_utf8(&bom[3..]).unwrap(), decoded);

    // Due date of February 2026's deliverable: the 5th business day of March 2026.
    assert_eq!(
        m_long.due,
        chrono::NaiveDate::from_ymd_opt(2026, 3, 6).unwrap()
    );
}
