//! `jinryu check`: each check trips on a stream made to trip it (right kind, sensor and span) and
//! stays quiet on clean data, closed hours and a quiet public holiday; alerts keep their identity
//! across runs, resolve when the data heal, and reach a real HTTP webhook on loopback (or are
//! reported as undelivered when it is down).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{NaiveDate, TimeZone};
use jinryu::alerts::{self, Alert, route};
use jinryu::config::Config;
use jinryu::ingest::{IngestOptions, ingest};
use jinryu::jobs::{self, checks};
use jinryu::simulate::{self, Simulator};
use jinryu::sink::store::Storage;

fn d(y: i32, m: u32, day: u32) -> NaiveDate {
    NaiveDate::from_ymd_opt(y, m, day).unwrap()
}

fn at(day: u32, h: u32, m: u32) -> i64 {
    chrono_tz::Asia::Tokyo
        .with_ymd_and_hms(2026, 10, day, h, m, 0)
        .unwrap()
        .timestamp_millis()
}

/// Three open days (6–8 October 2026) of all eight sensors, heartbeats and counts every five
/// minutes, with one fault of each kind on the 7th.
fn faulty_days() -> String {
    let cfg = Config::chikaho("memory://");
    let mut s = String::new();
    let mut seq = 0u64;
    for day in 6..=8u32 {
        for minute in (0..24 * 60).step_by(5) {
            if (50..345).contains(&minute) {
                continue; // the night closure 00:46-05:44: no data
            }
            let (h, m) = (minute / 60, minute % 60);
            let ts = at(day, h, m);
            for (si, sensor) in cfg.registry.sensors().iter().enumerate() {
                let id = sensor.id.as_str();
                let faulty = day == 7;
                if faulty && id == "J2-3" && (10..12).contains(&h) {
                    continue; // offline 10:00-12:00
                }
                s.push_str(&format!("{{\"sensor_id\":\"{id}\",\"ts\":{},\"kind\":\"heartbeat\",\"status\":\"ok\"}}\n", ts + 500));
                if faulty && id == "J1-2" && h == 14 {
                    continue; // alive but counting nobody 14:00-15:00
                }
                for dir in ["north", "south"] {
                    if faulty && id == "J2-1" && dir == "south" && (16..18).contains(&h) {
                        continue; // one direction dead 16:00-18:00
                    }
                    let count = if faulty && id == "J2-4" && dir == "north" && (9..11).contains(&h)
                    {
                        20 // frozen counter 09:00-11:00
                    } else {
                        8 + (minute / 5 + h + si as u32 + u32::from(dir == "south")) % 7
                    };
                    seq += 1;
                    s.push_str(&format!(
                        "{{\"sensor_id\":\"{id}\",\"ts\":{},\"direction\":\"{dir}\",\"count\":{count},\"seq\":{seq}}}\n",
                        ts + 1000
                    ));
                }
            }
        }
    }
    // A gateway with its clock in the future.
    s.push_str(
        "{\"sensor_id\":\"J1-1\",\"ts\":\"2100-01-01T00:00:00+09:00\",\"direction\":\"north\"}\n",
    );
    s
}

async fn load(storage: &Storage, cfg: &Config, input: String, source: &str) {
    ingest(
        cfg,
        storage,
        Box::new(std::io::Cursor::new(input.into_bytes())),
        &IngestOptions::new(source),
    )
    .await
    .unwrap();
}

/// A clean simulated October (no injected faults) in memory.
async fn clean_october() -> (Config, Storage) {
    let cfg = Config::chikaho("memory://");
    let storage = Storage::open("memory://").unwrap();
    let mut opts = simulate::options(2026, 10);
    opts.faults = false;
    let mut input = String::new();
    Simulator::new(&cfg, opts)
        .read_to_string(&mut input)
        .unwrap();
    load(&storage, &cfg, input, "clean").await;
    (cfg, storage)
}

async fn check(storage: &Storage, cfg: &Config, from: NaiveDate, to: NaiveDate) -> alerts::Changes {
    let ctx = jobs::context(cfg, storage).await.unwrap();
    let incidents = checks::run_checks(&ctx, cfg, &cfg.checks, from, to)
        .await
        .unwrap();
    let found = alerts::alerts_from(cfg, &incidents);
    let start = cfg.window.day_start(from);
    let end = cfg.window.day_start(to.succ_opt().unwrap());
    alerts::merge(storage, found, start, end).await.unwrap()
}

fn find<'a>(all: &'a [Alert], kind: &str, sensor: Option<&str>) -> &'a Alert {
    let hits: Vec<_> = all
        .iter()
        .filter(|a| a.kind == kind && a.sensor_id.as_deref() == sensor)
        .collect();
    assert_eq!(hits.len(), 1, "{kind} {sensor:?}: {all:#?}");
    hits[0]
}

#[tokio::test]
async fn each_check_trips_on_its_fault_and_alerts_keep_their_identity() {
    let cfg = Config::chikaho("memory://");
    let storage = Storage::open("memory://").unwrap();
    load(&storage, &cfg, faulty_days(), "faulty").await;
    let run = check(&storage, &cfg, d(2026, 10, 6), d(2026, 10, 8)).await;
    let all = &run.all;

    let a = find(all, "sensor_offline", Some("J2-3"));
    assert_eq!(
        (a.start_ms, a.end_ms, a.windows),
        (at(7, 10, 0), at(7, 12, 0), 8)
    );
    assert_eq!(
        (a.status.as_str(), a.severity.as_str(), a.array.as_deref()),
        ("resolved", "critical", Some("J2"))
    );
    let a = find(all, "silent_but_alive", Some("J1-2"));
    assert_eq!((a.start_ms, a.end_ms), (at(7, 14, 0), at(7, 15, 0)));
    let a = find(all, "stuck_count", Some("J2-4"));
    assert_eq!(
        (a.start_ms, a.end_ms),
        (at(7, 9, 15), at(7, 11, 0)),
        "the first frozen window is the reference"
    );
    let a = find(all, "direction_dead", Some("J2-1"));
    assert_eq!((a.start_ms, a.end_ms), (at(7, 16, 0), at(7, 18, 0)));
    assert!(a.evidence["detail"].as_str().unwrap().contains("south"));
    // Nothing else: the night closure (no data 00:46-05:44) and the healthy sensors raise nothing,
    // and without four weeks of history there is no baseline to call a level implausible.
    assert_eq!(all.len(), 4, "{all:#?}");
    assert_eq!(run.changed.len(), 4);
    assert!(all.iter().all(|a| !a.action.is_empty()));

    // A rerun over the same data changes nothing and routes nothing.
    let again = check(&storage, &cfg, d(2026, 10, 6), d(2026, 10, 8)).await;
    assert!(again.changed.is_empty(), "{:#?}", again.changed);
    assert_eq!(again.all, run.all);

    // Fault-report drafts of October: one line per incident, due the next business day (Thu 8th).
    let out = tempfile::tempdir().unwrap();
    let (csv_path, md_path, n) =
        alerts::faults::write(&cfg, &again.all, 2026, 10, out.path()).unwrap();
    assert_eq!(n, 4);
    let text = std::fs::read_to_string(&csv_path).unwrap();
    let offline = text.lines().find(|l| l.contains("J2-3")).unwrap();
    assert_eq!(
        offline,
        format!(
            "2026-10-07 10:00,,J2-3: no data (sensor offline),no heartbeat and no counts,,2h00m,2026-10-08,ended,{}",
            find(all, "sensor_offline", Some("J2-3")).id
        )
    );
    assert!(
        std::fs::read_to_string(&md_path)
            .unwrap()
            .contains("| 2026-10-07 14:00 |  | J1-2: counting nobody")
    );

    // The month's quality summary and HTML report list the stored alerts.
    let ctx = jobs::context(&cfg, &storage).await.unwrap();
    let m = jobs::monthly::write_monthly(
        &ctx,
        &cfg,
        2026,
        10,
        &jobs::format::Format::long(),
        out.path(),
    )
    .await
    .unwrap();
    let summary = std::fs::read_to_string(&m.summary_file).unwrap();
    assert!(
        summary.contains("Alerts of the month (from `jinryu check`): 4"),
        "{summary}"
    );
    assert!(summary.contains("critical sensor_offline J2-3 2026-10-07T10:00:00+09:00"));
    let html = std::fs::read_to_string(&m.report_file).unwrap();
    assert_eq!(html.matches("<td>direction_dead</td>").count(), 1);

    // The gateway with a clock in the future was quarantined today: checking today shows it.
    let today = cfg
        .window
        .local(chrono::Utc::now().timestamp_millis())
        .date_naive();
    let now = check(&storage, &cfg, today, today).await;
    let skew = find(&now.all, "clock_skew", None);
    assert_eq!(skew.evidence["value"], 1.0);
    assert!(
        skew.evidence["detail"]
            .as_str()
            .unwrap()
            .contains("future_timestamp")
    );
}

#[tokio::test]
async fn an_ongoing_alert_stays_one_alert_and_resolves_when_the_data_heal() {
    let cfg = Config::chikaho("memory://");
    let storage = Storage::open("memory://").unwrap();
    // Day 7 only; J2-3 silent from 22:00 to the end of the day: the condition is still going on.
    let input: String = faulty_days()
        .lines()
        .filter(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            let ts = v["ts"].as_i64().unwrap_or(0);
            ts >= at(7, 0, 0)
                && ts < at(8, 0, 0)
                && !(v["sensor_id"] == "J2-3" && ts >= at(7, 22, 0))
        })
        .map(|l| format!("{l}\n"))
        .collect();
    load(&storage, &cfg, input, "day7").await;
    let first = check(&storage, &cfg, d(2026, 10, 7), d(2026, 10, 7)).await;
    let late_offline: Vec<_> = first
        .all
        .iter()
        .filter(|a| a.kind == "sensor_offline" && a.start_ms == at(7, 22, 0))
        .collect();
    assert_eq!(late_offline.len(), 1, "{:#?}", first.all);
    assert_eq!(
        late_offline[0].status, "open",
        "reaches the end of the checked range"
    );
    let id = late_offline[0].id.clone();

    // The gateway delivers J2-3's missing heartbeats late: the gap is filled, the alert resolves.
    let mut heal = String::new();
    for minute in (22 * 60..24 * 60).step_by(5) {
        heal.push_str(&format!(
            "{{\"sensor_id\":\"J2-3\",\"ts\":{},\"kind\":\"heartbeat\",\"status\":\"ok\"}}\n",
            at(7, minute / 60, minute % 60) + 500
        ));
    }
    load(&storage, &cfg, heal, "heal").await;
    let second = check(&storage, &cfg, d(2026, 10, 7), d(2026, 10, 7)).await;
    let healed = second
        .changed
        .iter()
        .find(|a| a.id == id)
        .expect("the alert changed");
    assert_eq!(healed.status, "resolved");
    assert_eq!(
        second.all.iter().filter(|a| a.id == id).count(),
        1,
        "still one alert"
    );
}

#[tokio::test]
async fn a_clean_month_and_a_quiet_holiday_raise_nothing_and_a_spike_is_caught() {
    // A clean simulated October. The first eleven days give the baselines; 12-31 October is
    // checked with every check, implausible_level included. Monday 12 October is Sports Day, a
    // quiet holiday: compared with holidays and weekends, not with busy Mondays.
    let (cfg, storage) = clean_october().await;
    let run = check(&storage, &cfg, d(2026, 10, 12), d(2026, 10, 31)).await;
    assert!(run.all.is_empty(), "{:#?}", run.all);

    // 600 extra people under J1-1 going north at 12:05 on Tuesday 20 October: a spike.
    let spike = format!(
        "{{\"sensor_id\":\"J1-1\",\"ts\":{},\"direction\":\"north\",\"count\":600}}\n",
        at(20, 12, 5)
    );
    load(&storage, &cfg, spike, "spike").await;
    let run = check(&storage, &cfg, d(2026, 10, 12), d(2026, 10, 31)).await;
    assert_eq!(run.all.len(), 1, "{:#?}", run.all);
    let a = find(&run.all, "implausible_level", Some("J1-1"));
    assert_eq!((a.start_ms, a.end_ms), (at(20, 12, 0), at(20, 12, 15)));
    assert!(
        a.evidence["detail"]
            .as_str()
            .unwrap()
            .starts_with("spike in direction north")
    );
    assert!(
        a.evidence["value"].as_f64().unwrap() > a.evidence["baseline"].as_f64().unwrap() + 500.0
    );
}

#[tokio::test]
async fn a_sensor_whose_share_of_its_array_drifts_is_caught() {
    // Clean October; on Thursday 22 October J2-2 also counts a neighbour's lane: 1000 extra
    // people every half hour from 08:00 to 18:00 (its usual share of J2 is about a fifth).
    let (cfg, storage) = clean_october().await;
    let mut extra = String::new();
    for half_hour in 16..36 {
        extra.push_str(&format!(
            "{{\"sensor_id\":\"J2-2\",\"ts\":{},\"direction\":\"south\",\"count\":1000}}\n",
            at(22, half_hour / 2, 30 * (half_hour % 2) + 7)
        ));
    }
    load(&storage, &cfg, extra, "lane").await;
    let run = check(&storage, &cfg, d(2026, 10, 12), d(2026, 10, 31)).await;
    let a = find(&run.all, "array_share_drift", Some("J2-2"));
    assert_eq!(cfg.window.local(a.start_ms).date_naive(), d(2026, 10, 22));
    let (value, usual) = (
        a.evidence["value"].as_f64().unwrap(),
        a.evidence["baseline"].as_f64().unwrap(),
    );
    assert!((0.15..0.25).contains(&usual), "usual share {usual}");
    assert!(value > usual + 0.10, "share {value}");
    // Only that sensor and that day drift (the others' shares shrink less than the threshold).
    assert_eq!(
        run.all
            .iter()
            .filter(|a| a.kind == "array_share_drift")
            .count(),
        1,
        "{:#?}",
        run.all
    );
}

/// A tiny HTTP server on loopback that records POST bodies.
/// The alerts a test webhook received, in order.
fn received(bodies: &Mutex<Vec<String>>) -> Vec<Alert> {
    bodies
        .lock()
        .unwrap()
        .iter()
        .map(|b| serde_json::from_str(b).unwrap())
        .collect()
}

fn http_server() -> (String, Arc<Mutex<Vec<String>>>) {
    http_server_answering("200 OK", "")
}

/// A webhook on loopback that answers every request with `status` (and `extra` headers), and
/// keeps the bodies it received.
fn http_server_answering(status: &str, extra: &str) -> (String, Arc<Mutex<Vec<String>>>) {
    let answer =
        format!("HTTP/1.1 {status}\r\n{extra}Content-Length: 0\r\nConnection: close\r\n\r\n");
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let bodies = Arc::new(Mutex::new(Vec::new()));
    let seen = bodies.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().take(32) {
            let mut stream = stream.unwrap();
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut len = 0usize;
            loop {
                let mut line = String::new();
                reader.read_line(&mut line).unwrap();
                if line == "\r\n" || line.is_empty() {
                    break;
                }
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    len = v.trim().parse().unwrap();
                }
            }
            let mut body = vec![0; len];
            reader.read_exact(&mut body).unwrap();
            seen.lock().unwrap().push(String::from_utf8(body).unwrap());
            stream.write_all(answer.as_bytes()).unwrap();
        }
    });
    (url, bodies)
}

#[tokio::test]
async fn webhook_delivers_and_a_down_webhook_is_reported() {
    let cfg = Config::chikaho("memory://");
    let storage = Storage::open("memory://").unwrap();
    load(&storage, &cfg, faulty_days(), "faulty").await;
    let run = check(&storage, &cfg, d(2026, 10, 6), d(2026, 10, 8)).await;
    assert_eq!(run.changed.len(), 4);

    let (url, bodies) = http_server();
    let log = tempfile::NamedTempFile::new().unwrap();
    let hook = route::Webhook {
        url,
        timeout: Duration::from_secs(2),
        attempts: 2,
    };
    let routes = jinryu::config::AlertRoutes {
        log_file: Some(log.path().to_path_buf()),
        webhook: Some(hook),
        ..Default::default()
    };
    let mut d1 = route::send("log_file", &run.changed, &routes);
    d1.absorb(route::send("webhook", &run.changed, &routes));
    assert_eq!(
        (d1.webhook_delivered, d1.webhook_failed, d1.logged),
        (4, 0, 4),
        "{:?}",
        d1.errors
    );
    let got = received(&bodies);
    assert_eq!(got, run.changed);
    let logged = std::fs::read_to_string(log.path()).unwrap();
    assert_eq!(logged.lines().count(), 4);

    // Nobody listening: every alert is reported as undelivered, quickly, and nothing panics.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let down = route::Webhook {
        url: format!("http://127.0.0.1:{port}/hook"),
        timeout: Duration::from_secs(1),
        attempts: 2,
    };
    let t = std::time::Instant::now();
    let down = jinryu::config::AlertRoutes {
        webhook: Some(down),
        ..Default::default()
    };
    let d2 = route::send("webhook", &run.changed, &down);
    assert_eq!((d2.webhook_delivered, d2.webhook_failed), (0, 4));
    assert_eq!(d2.errors.len(), 4);
    assert!(d2.errors[0].contains("not delivered after 2 attempts"));
    assert!(t.elapsed() < Duration::from_secs(30));
}

#[tokio::test]
async fn a_day_with_many_rejected_messages_trips_quarantine_rate() {
    let cfg = Config::chikaho("memory://");
    let storage = Storage::open("memory://").unwrap();
    // The rate is judged by the day the messages were received: today, for this ingest.
    let today = cfg.window.local_date(chrono::Utc::now().timestamp_millis());
    let mut input = String::new();
    for i in 0..300 {
        input.push_str(&format!(
            "{{\"sensor_id\":\"J1-1\",\"ts\":{},\"direction\":\"north\",\"count\":1}}\n",
            at(6, 9, 0) + i * 1000
        ));
    }
    load(&storage, &cfg, input.clone(), "gateway").await;
    let run = check(&storage, &cfg, today, today).await;
    assert!(
        run.all.iter().all(|a| a.kind != "quarantine_rate"),
        "{:#?}",
        run.all
    );
    // The same input again with 10 broken messages (3 % of 310, above the 1 % default).
    for _ in 0..10 {
        input.push_str(
            "{\"sensor_id\":\"J1-1\",\"ts\":\"yesterday\",\"direction\":\"north\",\"count\":1}\n",
        );
    }
    load(&storage, &cfg, input, "gateway").await;
    let run = check(&storage, &cfg, today, today).await;
    let a = find(&run.all, "quarantine_rate", None);
    assert!(
        a.evidence["detail"]
            .as_str()
            .unwrap()
            .starts_with("10 of 310 messages received on"),
        "{a:#?}"
    );
    assert_eq!(a.severity, "warning");
}

fn routes(url: &str) -> jinryu::config::AlertRoutes {
    jinryu::config::AlertRoutes {
        log_file: None,
        webhook: Some(route::Webhook {
            url: url.to_string(),
            timeout: Duration::from_secs(2),
            attempts: 1,
        }),
        ..Default::default()
    }
}

/// The alert-loss cases of issue #10: alerts that `faults` stored are still sent by the next
/// delivery; a webhook that is down, or that answers with a redirect, does not count as a
/// delivery and the alerts stay queued; once it answers, each queued alert arrives exactly once.
#[tokio::test]
async fn alerts_are_never_lost() {
    let cfg = Config::chikaho("memory://");
    let storage = Storage::open("memory://").unwrap();
    load(&storage, &cfg, faulty_days(), "faulty").await;
    // What `jinryu faults` does: the checks run and the alert state is saved; nothing is sent.
    let run = check(&storage, &cfg, d(2026, 10, 6), d(2026, 10, 8)).await;
    assert_eq!(run.changed.len(), 4);
    assert_eq!(alerts::pending(&storage).await.unwrap(), 4);
    // A re-run of the checks finds nothing new, but the 4 are still queued.
    let again = check(&storage, &cfg, d(2026, 10, 6), d(2026, 10, 8)).await;
    assert!(again.changed.is_empty());
    assert_eq!(alerts::pending(&storage).await.unwrap(), 4);

    // A redirect is not a delivery (it used to be followed as a GET without the alert).
    let (moved, moved_bodies) =
        http_server_answering("302 Found", "Location: http://127.0.0.1:9/x\r\n");
    let (d1, _) = alerts::deliver(&storage, false, &routes(&moved))
        .await
        .unwrap();
    assert_eq!(
        (d1.webhook_delivered, d1.webhook_failed),
        (0, 4),
        "{:?}",
        d1.errors
    );
    assert!(d1.errors[0].contains("302"), "{:?}", d1.errors);
    assert_eq!(
        moved_bodies.lock().unwrap().len(),
        4,
        "POSTed once each, not followed"
    );
    assert_eq!(alerts::pending(&storage).await.unwrap(), 4);

    // A server error: still queued.
    let (broken, _) = http_server_answering("500 Internal Server Error", "");
    let (d2, _) = alerts::deliver(&storage, false, &routes(&broken))
        .await
        .unwrap();
    assert_eq!(d2.webhook_failed, 4);
    assert_eq!(alerts::pending(&storage).await.unwrap(), 4);

    // The webhook works again: every queued alert arrives, once.
    let (url, bodies) = http_server();
    let (d3, _) = alerts::deliver(&storage, false, &routes(&url))
        .await
        .unwrap();
    assert_eq!(
        (d3.webhook_delivered, d3.webhook_failed),
        (4, 0),
        "{:?}",
        d3.errors
    );
    let got = received(&bodies);
    assert_eq!(got, run.changed);
    assert_eq!(alerts::pending(&storage).await.unwrap(), 0);
    let (d4, _) = alerts::deliver(&storage, false, &routes(&url))
        .await
        .unwrap();
    assert_eq!(d4.webhook_delivered, 0, "nothing is sent twice");
}

/// Issue #10: a check over a range raised other alerts than daily checks over the same days
/// (the baseline was the days before the range, so a month without earlier history missed a
/// spike on the 21st that the daily check found). Both end in the same alert state now, on a
/// simulated month with its faults (a sensor silent for five hours, late data) and a spike.
#[tokio::test]
async fn a_range_check_finds_what_daily_checks_find() {
    let cfg = Config::chikaho("memory://");
    let mut opts = simulate::options(2026, 10);
    opts.faults = true;
    let mut input = String::new();
    Simulator::new(&cfg, opts)
        .read_to_string(&mut input)
        .unwrap();
    // Ten times a busy window: J2-3 northbound, Wednesday 21 October, 12:00-12:15.
    for i in 0..9 {
        input.push_str(&format!(
            "{{\"sensor_id\":\"J2-3\",\"ts\":\"2026-10-21T12:0{i}:30+09:00\",\"direction\":\"north\",\"count\":100}}\n"
        ));
    }
    let range = Storage::open("memory://").unwrap();
    let daily = Storage::open("memory://").unwrap();
    load(&range, &cfg, input.clone(), "month").await;
    load(&daily, &cfg, input, "month").await;

    // Twelve days of the month (a check costs seconds in a debug build): the silent sensor on
    // the 12th, the late burst on the 20th, the spike on the 21st; the whole month is stored,
    // so each day has its history before it and the range has days before it.
    check(&range, &cfg, d(2026, 10, 10), d(2026, 10, 21)).await;
    for day in 10..=21 {
        check(&daily, &cfg, d(2026, 10, day), d(2026, 10, day)).await;
    }
    let by_range = alerts::stored(range.store().as_ref()).await.unwrap();
    let by_day = alerts::stored(daily.store().as_ref()).await.unwrap();
    let spike = by_range
        .iter()
        .find(|a| a.kind == "implausible_level" && a.sensor_id.as_deref() == Some("J2-3"))
        .unwrap_or_else(|| panic!("the spike is found by the range check: {by_range:#?}"));
    assert_eq!(spike.start_ms, at(21, 12, 0));
    assert!(
        by_range.iter().any(|a| a.kind == "sensor_offline"),
        "the silent sensor is found: {by_range:#?}"
    );
    assert_eq!(
        by_range.len(),
        by_day.len(),
        "range: {:#?}\ndaily: {:#?}",
        by_range
            .iter()
            .map(|a| (&a.kind, &a.sensor_id, &a.start))
            .collect::<Vec<_>>(),
        by_day
            .iter()
            .map(|a| (&a.kind, &a.sensor_id, &a.start))
            .collect::<Vec<_>>()
    );
    for (a, b) in by_range.iter().zip(&by_day) {
        assert_eq!(a, b);
    }
}
