//! Real public counter data (`../shared/testdata/real/`) replayed through the pipeline: the hourly
//! sums of what we store equal the dataset's own hourly counts, and sensors with blank (down)
//! hours stay missing — never zero.
//!
//! Each hourly row becomes what a gateway would send: an `ok` heartbeat at the start of the hour
//! (the counter was live) and one count message per direction with people in it.

use std::collections::BTreeMap;
use std::path::PathBuf;

use arrow::array::{Array, Int64Array, TimestampMillisecondArray};
use chrono::{NaiveDateTime, TimeZone};
use jinryu::config::Config;
use jinryu::ingest::{IngestOptions, ingest};
use jinryu::jobs;
use jinryu::sink::store::Storage;

fn shared(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../shared/testdata/real")
        .join(name)
}

/// (sensor, direction, hour start UTC ms) → people, as the dataset says.
type Hourly = BTreeMap<(String, String, i64), u64>;

/// One hourly row: its start (UTC ms) and (sensor, direction, people or blank) cells.
type HourRow = (i64, Vec<(String, String, Option<u64>)>);

/// Builds the gateway messages for the hourly data; returns them and the expected hourly counts.
fn messages(rows: &[HourRow], tz: chrono_tz::Tz) -> (String, Hourly) {
    let mut out = String::new();
    let mut want = Hourly::new();
    let mut seq = 0u64;
    for (hour_ms, cells) in rows {
        let ts = |offset_ms: i64| {
            tz.timestamp_millis_opt(hour_ms + offset_ms)
                .unwrap()
                .to_rfc3339()
        };
        let mut live = std::collections::BTreeSet::new();
        for (sensor, dir, value) in cells {
            let Some(v) = value else { continue }; // blank: the counter was down
            if live.insert(sensor.clone()) {
                out.push_str(&format!(
                    "{{\"sensor_id\":\"{sensor}\",\"ts\":\"{}\",\"kind\":\"heartbeat\",\"status\":\"ok\"}}\n",
                    ts(0)
                ));
            }
            want.insert((sensor.clone(), dir.clone(), *hour_ms), *v);
            let mut left = *v;
            while left > 0 {
                let n = left.min(1000);
                left -= n;
                seq += 1;
                out.push_str(&format!(
                    "{{\"sensor_id\":\"{sensor}\",\"ts\":\"{}\",\"direction\":\"{dir}\",\"count\":{n},\"seq\":{seq}}}\n",
                    ts(30_000)
                ));
            }
        }
    }
    (out, want)
}

/// Hourly sums read back from the deliverable (long format) of one month: (sensor, direction,
/// local "YYYY-MM-DD HH") → people, plus the number of `missing` cells per sensor.
async fn deliverable_hourly(
    cfg: &Config,
    storage: &Storage,
    year: i32,
    month: u32,
) -> (
    BTreeMap<(String, String, String), u64>,
    BTreeMap<String, u64>,
) {
    let ctx = jobs::context(cfg, storage).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let m = jobs::monthly::write_monthly(
        &ctx,
        cfg,
        year,
        month,
        &jobs::format::Format::long(),
        dir.path(),
    )
    .await
    .unwrap();
    let mut rdr = csv::Reader::from_path(&m.csv).unwrap();
    let mut hourly = BTreeMap::new();
    let mut missing: BTreeMap<String, u64> = BTreeMap::new();
    for rec in rdr.records() {
        let r = rec.unwrap();
        let key = (
            r[2].to_string(),
            r[4].to_string(),
            format!("{} {}", &r[0], &r[1][..2]),
        );
        match &r[6] {
            "ok" => *hourly.entry(key).or_default() += r[5].parse::<u64>().unwrap(),
            "missing" => {
                assert_eq!(&r[5], "", "a missing cell has no count");
                *missing.entry(r[2].to_string()).or_default() += 1;
            }
            other => panic!("unexpected status {other}"),
        }
    }
    (hourly, missing)
}

/// The dataset's hourly values of one month keyed like [`deliverable_hourly`].
fn expected_month(
    want: &Hourly,
    tz: chrono_tz::Tz,
    year: i32,
    month: u32,
) -> BTreeMap<(String, String, String), u64> {
    want.iter()
        .filter_map(|((s, d, h), v)| {
            let local = tz.timestamp_millis_opt(*h).unwrap();
            use chrono::Datelike;
            (local.year() == year && local.month() == month).then(|| {
                (
                    (
                        s.clone(),
                        d.clone(),
                        local.format("%Y-%m-%d %H").to_string(),
                    ),
                    *v,
                )
            })
        })
        .collect()
}

/// Ingests and returns what `flow_15min` says per hour, plus the sensors that have any row.
async fn replay(
    config: &str,
    input: String,
) -> (
    Hourly,
    std::collections::BTreeSet<String>,
    u64,
    Config,
    Storage,
) {
    let cfg = Config::parse(config, "test").unwrap();
    let storage = Storage::open("memory://").unwrap();
    let report = ingest(
        &cfg,
        &storage,
        Box::new(std::io::Cursor::new(input.into_bytes())),
        &IngestOptions::new("real"),
    )
    .await
    .unwrap();
    assert_eq!(report.quarantined, 0, "{report:?}");
    let ctx = jobs::context(&cfg, &storage).await.unwrap();
    let batches = jobs::query(
        &ctx,
        "SELECT sensor_id, direction, date_trunc('hour', window_start) AS hour, CAST(SUM(\"count\") AS BIGINT) \
         FROM flow_15min WHERE up GROUP BY 1, 2, 3",
    )
    .await
    .unwrap();
    let mut got = Hourly::new();
    let mut sensors = std::collections::BTreeSet::new();
    for b in &batches {
        let s = jinryu::jobs::text(b, 0);
        let d = jinryu::jobs::text(b, 1);
        let h = b
            .column(2)
            .as_any()
            .downcast_ref::<TimestampMillisecondArray>()
            .unwrap();
        let c = b.column(3).as_any().downcast_ref::<Int64Array>().unwrap();
        for i in 0..b.num_rows() {
            sensors.insert(s.value(i).to_string());
            got.insert(
                (s.value(i).to_string(), d.value(i).to_string(), h.value(i)),
                c.value(i) as u64,
            );
        }
    }
    (got, sensors, report.people, cfg, storage)
}

#[tokio::test]
async fn seattle_burke_gilman_hourly_counts_come_back_exactly() {
    let path = shared("seattle_burke_gilman_2018-12_2019-02.csv");
    let mut rdr = csv::Reader::from_path(&path).expect("shared real data present");
    let headers = rdr.headers().unwrap().clone();
    assert_eq!(&headers[0], "Date");
    let tz = chrono_tz::America::Los_Angeles;
    let dirs = [
        ("Ped South", "ped_south"),
        ("Ped North", "ped_north"),
        ("Bike North", "bike_north"),
        ("Bike South", "bike_south"),
    ];
    let mut rows = Vec::new();
    let mut grand_total = 0u64;
    for rec in rdr.records() {
        let rec = rec.unwrap();
        let local = NaiveDateTime::parse_from_str(&rec[0], "%m/%d/%Y %I:%M:%S %p").unwrap();
        let hour = tz
            .from_local_datetime(&local)
            .single()
            .unwrap()
            .timestamp_millis();
        grand_total += rec[1].parse::<u64>().unwrap();
        let cells = dirs
            .iter()
            .map(|(col, dir)| {
                let i = headers.iter().position(|h| h == *col).unwrap();
                (
                    "BGT".to_string(),
                    dir.to_string(),
                    rec[i].parse::<u64>().ok(),
                )
            })
            .collect();
        rows.push((hour, cells));
    }
    assert_eq!(rows.len(), 2160);
    let (input, want) = messages(&rows, tz);
    let config = r#"
timezone = "America/Los_Angeles"
[storage]
url = "memory://"
[validation]
earliest = "2018-01-01T00:00:00Z"
[[sensors]]
id = "BGT"
array = "Burke-Gilman"
directions = ["ped_south", "ped_north", "bike_north", "bike_south"]
"#;
    let (got, _, people, cfg, storage) = replay(config, input).await;
    assert_eq!(got, want);
    assert_eq!(people, grand_total);
    assert_eq!(
        got.len(),
        2160 * 4,
        "every hour of every direction is live, zeros included"
    );

    // The deliverable (long format) of each month: hourly sums equal the dataset's, zeros included.
    for (y, m, hours) in [(2018, 12, 744), (2019, 1, 744), (2019, 2, 672)] {
        let (hourly, _) = deliverable_hourly(&cfg, &storage, y, m).await;
        assert_eq!(hourly.len(), hours * 4);
        assert_eq!(hourly, expected_month(&want, tz, y, m), "{y}-{m:02}");
    }
}

#[tokio::test]
async fn dlr_footfall_counts_come_back_and_blank_counters_stay_missing() {
    let path = shared("dlr_footfall_2025-01_2025-02.csv");
    let text = std::fs::read_to_string(&path).expect("shared real data present");
    let text = text
        .strip_prefix('\u{feff}')
        .expect("the file starts with a BOM");
    let mut rdr = csv::Reader::from_reader(text.as_bytes());
    let headers = rdr.headers().unwrap().clone();
    let tz = chrono_tz::Europe::Dublin;
    // Sites: "<site> Pedestrian", then IN and OUT columns.
    let sites: Vec<(usize, String)> = headers
        .iter()
        .enumerate()
        .filter(|(_, h)| h.ends_with(" Pedestrian"))
        .map(|(i, h)| (i, h.trim_end_matches(" Pedestrian").to_string()))
        .collect();
    assert_eq!(sites.len(), 8);
    let id = |i: usize| format!("dlr-{i}");
    let mut rows = Vec::new();
    let mut totals = 0u64;
    for rec in rdr.records() {
        let rec = rec.unwrap();
        let local = NaiveDateTime::parse_from_str(&rec[0], "%b %d, %Y %I:%M %p").unwrap();
        let hour = tz
            .from_local_datetime(&local)
            .single()
            .unwrap()
            .timestamp_millis();
        let mut cells = Vec::new();
        for (k, (col, _)) in sites.iter().enumerate() {
            let total = rec[*col].parse::<u64>().ok();
            let inn = rec[col + 1].parse::<u64>().ok();
            let out = rec[col + 2].parse::<u64>().ok();
            if let (Some(t), Some(a), Some(b)) = (total, inn, out) {
                assert_eq!(t, a + b);
                totals += t;
            }
            cells.push((id(k), "in".to_string(), inn));
            cells.push((id(k), "out".to_string(), out));
        }
        rows.push((hour, cells));
    }
    assert_eq!(rows.len(), 1416);
    let (input, want) = messages(&rows, tz);
    let mut config = String::from(
        "timezone = \"Europe/Dublin\"\n[storage]\nurl = \"memory://\"\n[validation]\nearliest = \"2024-01-01T00:00:00Z\"\n",
    );
    for (k, (_, name)) in sites.iter().enumerate() {
        config.push_str(&format!(
            "[[sensors]]\nid = \"{}\"\narray = \"{name}\"\ndirections = [\"in\", \"out\"]\n",
            id(k)
        ));
    }
    let (got, live_sensors, people, cfg, storage) = replay(&config, input).await;
    assert_eq!(got, want);
    assert_eq!(people, totals);
    // The three Wyattville counters are blank in every row: no row at all, i.e. missing.
    let blank: Vec<_> = sites
        .iter()
        .enumerate()
        .filter(|(_, (_, n))| n.starts_with("Wyattville"))
        .map(|(k, _)| id(k))
        .collect();
    assert_eq!(blank.len(), 3);
    assert_eq!(live_sensors.len(), 5);
    assert!(blank.iter().all(|b| !live_sensors.contains(b)));

    // The deliverable (long format) of January: hourly sums equal the dataset's hourly counts,
    // and the blank counters are missing in every window — never 0.
    let (hourly, missing) = deliverable_hourly(&cfg, &storage, 2025, 1).await;
    assert_eq!(hourly, expected_month(&want, tz, 2025, 1));
    for b in &blank {
        assert_eq!(
            missing[b],
            31 * 96 * 2,
            "{b} is missing in every window of January"
        );
    }
}
