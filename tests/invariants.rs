//! The correctness invariants of the window stage and a whole run, on generated streams:
//! every valid event counted exactly once whatever the arrival order, retries counted once,
//! late data counted, zero never confused with missing, every input line accounted for.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use jinryu::config::Config;
use jinryu::event::{Event, EventKind};
use jinryu::ingest::{IngestOptions, ingest};
use jinryu::jobs;
use jinryu::sink::store::Storage;
use jinryu::window::{AggRow, WindowStage};
use proptest::prelude::*;

const T0: i64 = 1_793_574_000_000; // 2026-11-02T08:00:00+09:00
const SIZE: i64 = 900_000;
const LATENESS: i64 = 600_000;

fn cfg() -> Config {
    Config::chikaho("memory://")
}

/// A generated event: sensor 0..4, time within three hours, count / ok / fault, unique seq.
fn event() -> impl Strategy<Value = Event> {
    (0u32..4, 0i64..3 * 3_600_000, 0u8..10, 1u32..5, 0u8..2).prop_map(
        |(sensor, dt, kind, count, dir)| Event {
            sensor,
            ts_ms: T0 + dt,
            seq: None,
            kind: match kind {
                0 => EventKind::Heartbeat {
                    ok: true,
                    code: None,
                },
                1 => EventKind::Heartbeat {
                    ok: false,
                    code: Some("E1".into()),
                },
                _ => EventKind::Count {
                    direction: dir,
                    count,
                },
            },
        },
    )
}

fn stream() -> impl Strategy<Value = Vec<Event>> {
    proptest::collection::vec(event(), 1..300).prop_map(|mut v| {
        for (i, e) in v.iter_mut().enumerate() {
            e.seq = Some(i as u64);
        }
        v
    })
}

/// Runs events through a window stage, flushing like a run does.
fn run(events: &[Event]) -> (Vec<AggRow>, jinryu::window::WindowStats) {
    let c = cfg();
    let mut stage = WindowStage::new(c.window, Arc::new(c.registry));
    let mut rows = Vec::new();
    for (i, e) in events.iter().enumerate() {
        stage.push(e);
        stage.emit_final(&mut rows);
        if i % 17 == 0 {
            stage.emit_late(&mut rows);
        }
    }
    stage.flush_all(&mut rows);
    (rows, stage.stats())
}

type Key = (u32, u8, i64);

/// What the table says once rows are summed per key: (people, live).
fn fold(rows: &[AggRow]) -> BTreeMap<Key, (u64, bool)> {
    let mut m: BTreeMap<Key, (u64, bool)> = BTreeMap::new();
    for r in rows {
        let e = m
            .entry((r.sensor, r.direction, r.window_start))
            .or_default();
        e.0 += r.count;
        e.1 |= r.up;
    }
    m
}

/// The truth, straight from the events: people per key, and the live (sensor, window) pairs.
fn model(events: &[Event]) -> (BTreeMap<Key, u64>, BTreeSet<(u32, i64)>) {
    let spec = cfg().window;
    let mut people = BTreeMap::new();
    let mut live = BTreeSet::new();
    for e in events {
        let ws = spec.window_start(e.ts_ms);
        match e.kind {
            EventKind::Count { direction, count } => {
                *people.entry((e.sensor, direction, ws)).or_default() += u64::from(count);
                live.insert((e.sensor, ws));
            }
            EventKind::Heartbeat { ok: true, .. } => {
                live.insert((e.sensor, ws));
            }
            EventKind::Heartbeat { ok: false, .. } => {}
        }
    }
    (people, live)
}

fn check_against_model(events: &[Event], rows: &[AggRow]) -> Result<(), TestCaseError> {
    let (people, live) = model(events);
    let table = fold(rows);
    for (&(s, d, ws), &(count, up)) in &table {
        // Zero vs missing: a live window has every direction, with the exact count (0 included).
        prop_assert_eq!(up, live.contains(&(s, ws)), "liveness of {:?}", (s, ws));
        prop_assert_eq!(count, people.get(&(s, d, ws)).copied().unwrap_or(0));
    }
    for &(s, ws) in &live {
        for d in 0..2u8 {
            prop_assert!(
                table.get(&(s, d, ws)).is_some_and(|v| v.1),
                "live window {:?} lost",
                (s, d, ws)
            );
        }
    }
    for (k, v) in &people {
        prop_assert_eq!(table.get(k).map(|t| t.0), Some(*v));
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    /// Any arrival order — late data included — gives the same table as the model.
    #[test]
    fn any_order_same_totals(events in stream(), seed in any::<u64>()) {
        let (rows, stats) = run(&events);
        check_against_model(&events, &rows)?;
        prop_assert_eq!(stats.counted, events.len() as u64);
        let mut shuffled = events.clone();
        let mut rng = rand_like(seed);
        for i in (1..shuffled.len()).rev() {
            let j = (rng() % (i as u64 + 1)) as usize;
            shuffled.swap(i, j);
        }
        let (rows2, _) = run(&shuffled);
        prop_assert_eq!(fold(&rows), fold(&rows2));
    }

    /// Disorder within the allowed lateness: no late rows at all, and exactly the rows of the
    /// time-ordered stream.
    #[test]
    fn disorder_within_lateness_changes_nothing(events in stream(), jitter in proptest::collection::vec(0i64..LATENESS, 300)) {
        let mut sorted = events.clone();
        sorted.sort_by_key(|e| e.ts_ms);
        let mut disordered: Vec<(i64, Event)> = events.iter().cloned().enumerate().map(|(i, e)| (e.ts_ms + jitter[i % jitter.len()], e)).collect();
        disordered.sort_by_key(|(k, _)| *k);
        let disordered: Vec<Event> = disordered.into_iter().map(|(_, e)| e).collect();
        let (mut a, sa) = run(&sorted);
        let (mut b, sb) = run(&disordered);
        prop_assert_eq!(sa.late, 0);
        prop_assert_eq!(sb.late, 0);
        prop_assert!(b.iter().all(|r| !r.late));
        let key = |r: &AggRow| (r.window_start, r.sensor, r.direction);
        a.sort_by_key(key);
        b.sort_by_key(key);
        prop_assert_eq!(a, b);
    }

    /// Retries (same sensor, seq and time), wherever they arrive, count once.
    #[test]
    fn retries_count_once(events in stream(), picks in proptest::collection::vec((any::<prop::sample::Index>(), any::<prop::sample::Index>()), 0..50)) {
        let mut with_retries = events.clone();
        for (what, at) in &picks {
            let e = events[what.index(events.len())].clone();
            let pos = at.index(with_retries.len() + 1);
            with_retries.insert(pos, e);
        }
        let (rows, stats) = run(&with_retries);
        check_against_model(&events, &rows)?;
        prop_assert_eq!(stats.duplicates, picks.len() as u64);
        prop_assert_eq!(stats.counted, events.len() as u64);
    }
}

/// A tiny deterministic generator for shuffles inside a proptest case.
fn rand_like(seed: u64) -> impl FnMut() -> u64 {
    let mut x = seed | 1;
    move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    }
}

#[test]
fn late_events_are_counted_in_late_rows() {
    let ev = |dt: i64, count| Event {
        sensor: 0,
        ts_ms: T0 + dt,
        seq: None,
        kind: EventKind::Count {
            direction: 0,
            count,
        },
    };
    // 08:00 window; time moves to 08:40 (final at 08:25); then a straggler for 08:05.
    let events = vec![ev(60_000, 2), ev(40 * 60_000, 1), ev(5 * 60_000, 3)];
    let (rows, stats) = run(&events);
    assert_eq!(stats.late, 1);
    let first: Vec<_> = rows
        .iter()
        .filter(|r| r.window_start == T0 && r.direction == 0)
        .collect();
    assert_eq!(first.len(), 2);
    assert_eq!((first[0].count, first[0].late), (2, false));
    assert_eq!((first[1].count, first[1].late), (3, true));
    assert_eq!(fold(&rows)[&(0, 0, T0)], (5, true));
    const { assert!(SIZE + LATENESS < 40 * 60_000) };
}

/// A whole run: every line is blank, quarantined with its line number, or accepted; the quarantine
/// table holds exactly the rejected lines.
#[tokio::test]
async fn every_line_is_accounted_for() {
    let cfg = cfg();
    let storage = Storage::open("memory://").unwrap();
    let mut input = String::new();
    let mut bad_lines = Vec::new();
    let mut blank = 0;
    let mut good = 0;
    for i in 0..5000u64 {
        let line_no = i + 1;
        match i % 11 {
            3 => {
                input.push_str("{\"sensor_id\":\"J1-1\",\"ts\":\"2026-11-02T08:00:00\",\"direction\":\"north\"}\n");
                bad_lines.push(line_no);
            }
            5 => {
                input.push_str("not json at all\n");
                bad_lines.push(line_no);
            }
            7 => {
                input.push_str("   \n");
                blank += 1;
            }
            _ => {
                let ts = T0 + i as i64 * 1000;
                input.push_str(&format!(
                    "{{\"sensor_id\":\"J2-{}\",\"ts\":{ts},\"direction\":\"south\",\"count\":2,\"seq\":{i}}}\n",
                    1 + i % 5
                ));
                good += 1;
            }
        }
    }
    let report = ingest(
        &cfg,
        &storage,
        Box::new(std::io::Cursor::new(input.into_bytes())),
        &IngestOptions::new("acct"),
    )
    .await
    .unwrap();
    assert!(report.balanced());
    assert_eq!(report.lines, 5000);
    assert_eq!(report.blank, blank);
    assert_eq!(report.accepted, good);
    assert_eq!(report.people, 2 * good);
    assert_eq!(report.quarantined, bad_lines.len() as u64);
    assert_eq!(
        report.quarantine_reasons["timestamp_without_offset"]
            + report.quarantine_reasons["not_an_object"],
        report.quarantined
    );

    let ctx = jobs::context(&cfg, &storage).await.unwrap();
    let batches = jobs::query(&ctx, "SELECT position FROM quarantine ORDER BY position")
        .await
        .unwrap();
    let positions: Vec<u64> = batches
        .iter()
        .flat_map(|b| {
            let a = b
                .column(0)
                .as_any()
                .downcast_ref::<arrow::array::UInt64Array>()
                .unwrap()
                .clone();
            a.values().to_vec()
        })
        .collect();
    assert_eq!(positions, bad_lines);
    let batches = jobs::query(
        &ctx,
        "SELECT CAST(SUM(\"count\") AS BIGINT) FROM flow_15min",
    )
    .await
    .unwrap();
    let total = batches[0]
        .column(0)
        .as_any()
        .downcast_ref::<arrow::array::Int64Array>()
        .unwrap()
        .value(0);
    assert_eq!(total as u64, 2 * good);
}

/// The code does not assume Asia/Tokyo: in Dublin the day summer time ends has 100 windows, all
/// present in the monthly rows with the repeated 01:xx hour, and partitions follow local dates.
#[tokio::test]
async fn dst_zone_day_boundaries() {
    let cfg = Config::parse(
        "timezone = \"Europe/Dublin\"\n[storage]\nurl = \"memory://\"\n[validation]\nearliest = \"2020-01-01T00:00:00Z\"\n\
         [[sensors]]\nid = \"D1\"\narray = \"A\"\ndirections = [\"in\", \"out\"]\n",
        "dublin",
    )
    .unwrap();
    let storage = Storage::open("memory://").unwrap();
    // 2025-10-26 00:00 IST (+01:00) is 2025-10-25T23:00Z; the local day lasts 25 hours.
    let start = 1_761_433_200_000i64;
    let mut input = String::new();
    for minute in 0..25 * 60 {
        let ts = start + minute * 60_000;
        input.push_str(&format!(
            "{{\"sensor_id\":\"D1\",\"ts\":{ts},\"kind\":\"heartbeat\",\"status\":\"ok\"}}\n"
        ));
    }
    ingest(
        &cfg,
        &storage,
        Box::new(std::io::Cursor::new(input.into_bytes())),
        &IngestOptions::new("dst"),
    )
    .await
    .unwrap();
    let ctx = jobs::context(&cfg, &storage).await.unwrap();
    let rows = jobs::monthly::month_rows(&ctx, &cfg, 2025, 10)
        .await
        .unwrap();
    let mut day = Vec::new();
    for b in &rows {
        let date = jinryu::jobs::text(b, 0);
        let time = jinryu::jobs::text(b, 1);
        let status = jinryu::jobs::text(b, 6);
        for i in 0..b.num_rows() {
            if date.value(i) == "2025-10-26" {
                day.push((time.value(i).to_string(), status.value(i).to_string()));
            }
        }
    }
    assert_eq!(day.len(), 100 * 2);
    assert!(
        day.iter().all(|(_, s)| s == "ok"),
        "every window of the long day is live"
    );
    assert_eq!(
        day.iter().filter(|(t, _)| t == "01:15").count(),
        4,
        "01:15 happens twice, two directions"
    );
    let total: usize = rows.iter().map(|b| b.num_rows()).sum();
    assert_eq!(total, (31 * 96 + 4) * 2);
    let parts = jobs::query(&ctx, "SELECT DISTINCT date FROM aggregates")
        .await
        .unwrap();
    let n: usize = parts.iter().map(|b| b.num_rows()).sum();
    assert_eq!(n, 1, "all rows of the local day sit in date=2025-10-26");
    grid_is_the_sql_definition(&ctx, &cfg, 2025, 10).await;
}

/// `monthly::month_grid` (streamed into a grid) gives exactly the cells of
/// `sql/monthly_long.sql` (the definition): same order, status and count.
async fn grid_is_the_sql_definition(
    ctx: &datafusion::prelude::SessionContext,
    cfg: &Config,
    y: i32,
    m: u32,
) -> jobs::format::MonthGrid {
    use jinryu::jobs::format::Cell;
    let rows = jobs::monthly::month_rows(ctx, cfg, y, m).await.unwrap();
    let grid = jobs::monthly::month_grid(ctx, cfg, y, m).await.unwrap();
    let mut sql = Vec::new();
    for b in &rows {
        let count = arrow::compute::cast(b.column(5), &arrow::datatypes::DataType::Int64).unwrap();
        let count = count
            .as_any()
            .downcast_ref::<arrow::array::Int64Array>()
            .unwrap();
        let status = jinryu::jobs::text(b, 6);
        for i in 0..b.num_rows() {
            sql.push(match status.value(i) {
                "ok" => Cell::Ok(count.value(i) as u64),
                "closed" => Cell::Closed,
                "missing" => Cell::Missing,
                other => panic!("status {other}"),
            });
        }
    }
    assert_eq!(grid.cells.len(), sql.len());
    for (i, (a, b)) in grid.cells.iter().zip(&sql).enumerate() {
        assert_eq!(
            a,
            b,
            "cell {i} (window {}, series {})",
            i / grid.series.len(),
            i % grid.series.len()
        );
    }
    assert!(sql.iter().any(|c| matches!(c, Cell::Ok(_))));
    grid
}

/// A simulated month with faults, ingested in two parts (windows at the cut have two rows each,
/// as late data and several Kafka partitions make): the streamed grid is the SQL's, cell for cell.
#[tokio::test]
async fn the_monthly_grid_is_the_sql_definition() {
    let cfg = cfg();
    let storage = Storage::open("memory://").unwrap();
    let mut opts = jinryu::simulate::options(2026, 10);
    opts.days = Some(6);
    opts.faults = true;
    let mut stream = Vec::new();
    std::io::Read::read_to_end(
        &mut jinryu::simulate::Simulator::new(&cfg, opts),
        &mut stream,
    )
    .unwrap();
    let lines: Vec<&[u8]> = stream.split(|b| *b == b'\n').collect();
    let cut = lines.len() / 2 + 7;
    for (id, part) in [("first", &lines[..cut]), ("second", &lines[cut..])] {
        ingest(
            &cfg,
            &storage,
            Box::new(std::io::Cursor::new(part.join(&b'\n'))),
            &IngestOptions::new(id),
        )
        .await
        .unwrap();
    }
    let ctx = jobs::context(&cfg, &storage).await.unwrap();
    let doubled = jobs::query(
        &ctx,
        "SELECT COUNT(*) FROM (SELECT sensor_id, direction, window_start FROM aggregates \
         GROUP BY 1, 2, 3 HAVING COUNT(*) > 1)",
    )
    .await
    .unwrap();
    let n = arrow::compute::cast(doubled[0].column(0), &arrow::datatypes::DataType::Int64).unwrap();
    assert!(
        n.as_any()
            .downcast_ref::<arrow::array::Int64Array>()
            .unwrap()
            .value(0)
            > 0,
        "some windows have rows from both parts"
    );
    let grid = grid_is_the_sql_definition(&ctx, &cfg, 2026, 10).await;
    use jinryu::jobs::format::Cell;
    assert!(
        grid.cells
            .iter()
            .any(|c| matches!(c, Cell::Ok(n) if *n > 0))
    );
    assert!(
        grid.cells.contains(&Cell::Missing),
        "the faults left missing cells"
    );
}
