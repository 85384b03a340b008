//! The gateway simulator: a month of Chi-Ka-Ho traffic as JSON lines, with the *truth* it encodes.
//!
//! Used by `jinryu demo` (the embedded default), `jinryu simulate` (load and end-to-end testing)
//! and the tests. Traffic follows weekday and weekend/holiday daily shapes per array and direction, stops
//! during the night closure, and every sensor sends an `ok` heartbeat each minute while open.
//! With faults on, the stream also carries what real deployments see:
//!
//! * one J2 sensor silent (no events, no heartbeats) for five hours on the 12th → `missing`;
//! * a sensor reporting `fault` heartbeats (and no counts) for half an hour on the 25th → `missing`;
//! * gateway retries: about 0.3 % of count messages sent twice with the same `seq`;
//! * a late burst: 30 minutes of one sensor's messages held by its gateway and delivered 40 minutes
//!   later, after their windows were final → `late` rows;
//! * malformed messages of every common kind → quarantine.
//!
//! The [`Truth`] records what a perfect pipeline must report, so a run can be checked exactly.

pub mod load;
pub mod publish;

use std::collections::{HashMap, HashSet};
use std::io::Read;
use std::sync::{Arc, Mutex};

use chrono::{Datelike, NaiveDate, Timelike, Weekday};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, Poisson};

use crate::config::Config;
use crate::window::time::month_bounds;

/// Seconds per count message slot: a gateway reports the people of each 30-second slot.
const SLOT_S: i64 = 30;

/// Simulation settings.
#[derive(Debug, Clone)]
pub struct SimOptions {
    pub year: i32,
    pub month: u32,
    pub seed: u64,
    pub faults: bool,
    /// Walkers per day through each array (both directions), on a weekday.
    pub walkers_per_day: f64,
    /// Simulate only the first N days of the month (tests); the rest of the month stays empty.
    pub days: Option<u32>,
}

/// What a perfect pipeline reports for the simulated stream.
#[derive(Debug, Default, Clone)]
pub struct Truth {
    /// People per (sensor, direction, window start).
    pub counts: HashMap<(u32, u8, i64), u64>,
    /// (sensor, window start) in which the sensor was live.
    pub live: HashSet<(u32, i64)>,
    pub lines: u64,
    pub malformed: u64,
    pub retries: u64,
    pub late_messages: u64,
    pub people: u64,
}

/// Relative traffic by local hour: (weekday southbound, weekday northbound, weekend each way).
fn shape(hour: u32, weekend: bool, north: bool) -> f64 {
    const WEEKDAY_TO_ODORI: [f64; 24] = [
        0.3, 0.0, 0.0, 0.0, 0.0, 0.2, 1.0, 4.0, 9.0, 6.0, 3.0, 3.0, 5.0, 4.0, 3.0, 3.0, 3.0, 4.0,
        4.5, 3.5, 2.5, 2.0, 1.5, 0.8,
    ];
    const WEEKDAY_TO_STATION: [f64; 24] = [
        0.4, 0.0, 0.0, 0.0, 0.0, 0.1, 0.6, 2.0, 3.5, 3.0, 2.5, 3.0, 5.0, 4.0, 3.0, 3.0, 3.5, 6.5,
        9.0, 6.0, 3.5, 2.5, 2.0, 1.0,
    ];
    const WEEKEND: [f64; 24] = [
        0.3, 0.0, 0.0, 0.0, 0.0, 0.1, 0.3, 0.8, 1.5, 2.5, 4.0, 5.0, 5.5, 5.5, 5.5, 5.0, 4.5, 4.0,
        3.5, 3.0, 2.0, 1.5, 1.0, 0.6,
    ];
    let h = hour as usize;
    match (weekend, north) {
        (true, _) => WEEKEND[h],
        (false, true) => WEEKDAY_TO_STATION[h],
        (false, false) => WEEKDAY_TO_ODORI[h],
    }
}

/// One message of the simulated stream.
struct Msg {
    /// Position in the stream (delivery time, ms).
    deliver_ms: i64,
    line: String,
}

/// Generates the stream day by day; implements [`Read`] so it can feed the pipeline directly.
pub struct Simulator {
    cfg: Config,
    opts: SimOptions,
    rng: SmallRng,
    day: NaiveDate,
    end: NaiveDate,
    seq: Vec<u64>,
    buf: Vec<u8>,
    pos: usize,
    truth: Arc<Mutex<Truth>>,
}

impl Simulator {
    pub fn new(cfg: &Config, opts: SimOptions) -> Simulator {
        let (day, mut end) = month_bounds(opts.year, opts.month);
        if let Some(n) = opts.days {
            end = end.min(day + chrono::Days::new(u64::from(n)));
        }
        Simulator {
            rng: SmallRng::seed_from_u64(opts.seed),
            seq: vec![1; cfg.registry.len()],
            cfg: cfg.clone(),
            opts,
            day,
            end,
            buf: Vec::new(),
            pos: 0,
            truth: Arc::default(),
        }
    }

    /// The truth, complete once the stream has been read to the end.
    pub fn truth(&self) -> Arc<Mutex<Truth>> {
        self.truth.clone()
    }

    fn fmt_ts(&self, ms: i64) -> String {
        self.cfg
            .window
            .local(ms)
            .format("%Y-%m-%dT%H:%M:%S%.3f%:z")
            .to_string()
    }

    /// Generates one local day of messages into `self.buf`.
    fn generate_day(&mut self) {
        let spec = self.cfg.window.clone();
        let day = self.day;
        // National holidays are as quiet as weekends.
        let weekend = matches!(day.weekday(), Weekday::Sat | Weekday::Sun)
            || crate::calendar::holiday(day).0.is_some();
        let start = spec.day_start(day);
        let end = spec.day_start(day.succ_opt().expect("next day"));
        let reg = self.cfg.registry.clone();
        let faults = self.opts.faults;
        let dom = day.day();
        let at = |h: u32, m: u32| start + i64::from(h * 60 + m) * 60_000;
        // Fault plan for this day.
        let silent = (faults && dom == 12).then(|| (reg.lookup("J2-3"), at(9, 0), at(14, 0)));
        let faulty = (faults && dom == 25).then(|| (reg.lookup("J2-5"), at(10, 0), at(10, 30)));
        let held_span =
            (faults && dom == 20).then(|| (reg.lookup("J1-2"), at(17, 0), at(17, 30), at(18, 10)));
        let per_array: HashMap<&str, usize> =
            reg.sensors().iter().fold(HashMap::new(), |mut m, s| {
                *m.entry(s.array.as_str()).or_default() += 1;
                m
            });
        let weekday_total: f64 = (0..24).map(|h| shape(h, false, false)).sum::<f64>();

        let mut msgs: Vec<Msg> = Vec::new();
        let mut truth = self.truth.lock().expect("truth lock");
        let mut t = start;
        while t < end {
            let local = spec.local(t);
            if !spec.closed_at(t) {
                for (si, sensor) in reg.sensors().iter().enumerate() {
                    let si = si as u32;
                    if silent.is_some_and(|(s, a, b)| s == Some(si) && t >= a && t < b) {
                        continue;
                    }
                    let ws = spec.window_start(t);
                    let in_fault = faulty.is_some_and(|(s, a, b)| s == Some(si) && t >= a && t < b);
                    let held =
                        held_span.is_some_and(|(s, a, b, _)| s == Some(si) && t >= a && t < b);
                    let deliver = |ts: i64| match held_span {
                        Some((_, _, _, release)) if held => release + (ts - start) % 1000,
                        _ => ts,
                    };
                    if (t - start) % 60_000 == 0 {
                        let status = if in_fault {
                            r#""fault","code":"E-LENS""#
                        } else {
                            r#""ok""#
                        };
                        let ts = t + 137;
                        msgs.push(Msg {
                            deliver_ms: deliver(ts),
                            line: format!(
                                r#"{{"sensor_id":"{}","ts":"{}","kind":"heartbeat","status":{status}}}"#,
                                sensor.id,
                                self.fmt_ts(ts)
                            ),
                        });
                        if !in_fault {
                            truth.live.insert((si, ws));
                        }
                        if held {
                            truth.late_messages += 1;
                        }
                    }
                    if in_fault {
                        continue;
                    }
                    let share = 1.0 / per_array[sensor.array.as_str()] as f64;
                    for (di, dir) in sensor.directions.iter().enumerate() {
                        let north = dir == "north";
                        let weight = shape(local.hour(), weekend, north) / weekday_total;
                        // People per slot: daily walkers split by direction, hour shape and sensor.
                        let lambda = self.opts.walkers_per_day * 0.5 * share * weight
                            / (3600.0 / SLOT_S as f64);
                        if lambda <= 0.0 {
                            continue;
                        }
                        let n = Poisson::new(lambda)
                            .map(|p| p.sample(&mut self.rng) as u64)
                            .unwrap_or(0);
                        if n == 0 {
                            continue;
                        }
                        let ts = t + self.rng.random_range(0..SLOT_S * 1000);
                        let seq = self.seq[si as usize];
                        self.seq[si as usize] += 1;
                        let line = format!(
                            r#"{{"sensor_id":"{}","ts":"{}","direction":"{dir}","count":{n},"seq":{seq}}}"#,
                            sensor.id,
                            self.fmt_ts(ts)
                        );
                        *truth
                            .counts
                            .entry((si, di as u8, spec.window_start(ts)))
                            .or_default() += n;
                        truth.live.insert((si, spec.window_start(ts)));
                        truth.people += n;
                        if held {
                            truth.late_messages += 1;
                        }
                        if faults && self.rng.random_bool(0.003) {
                            truth.retries += 1;
                            msgs.push(Msg {
                                deliver_ms: deliver(ts) + 2_500,
                                line: line.clone(),
                            });
                        }
                        msgs.push(Msg {
                            deliver_ms: deliver(ts),
                            line,
                        });
                    }
                }
            }
            t += SLOT_S * 1000;
        }
        if faults {
            // A handful of malformed messages of every common kind, spread over the open hours.
            let bad = [
                r#"{"sensor_id":"J1-1","ts":"2026-13-45T99:00:00+09:00","direction":"north"}"#
                    .to_string(),
                r#"{"sensor_id":"J3-9","ts":"TS","direction":"north","count":1}"#.to_string(),
                r#"{"sensor_id":"J1-1","ts":"TSL","direction":"north","count":1}"#.to_string(),
                r#"{"sensor_id":"J2-2","ts":"TS","direction":"east","count":1}"#.to_string(),
                r#"{"sensor_id":"J2-4","ts":"TS","direction":"south","count":-2}"#.to_string(),
                r#"{"sensor_id":"J1-3","ts":"TS","direction":"south","count":1"#.to_string(),
                "\u{1b}[garbage from a serial line".to_string(),
            ];
            let k = (dom as usize) % bad.len();
            let ts = at(12, dom);
            let local_naive = self
                .cfg
                .window
                .local(ts)
                .format("%Y-%m-%dT%H:%M:%S")
                .to_string();
            let line = bad[k]
                .replace("TSL", &local_naive)
                .replace("\"TS\"", &format!("\"{}\"", self.fmt_ts(ts)));
            msgs.push(Msg {
                deliver_ms: ts,
                line,
            });
            truth.malformed += 1;
        }
        drop(truth);
        msgs.sort_by_key(|m| m.deliver_ms);
        let mut truth = self.truth.lock().expect("truth lock");
        for m in msgs {
            self.buf.extend_from_slice(m.line.as_bytes());
            self.buf.push(b'\n');
            truth.lines += 1;
        }
    }
}

impl Read for Simulator {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        while self.pos == self.buf.len() {
            if self.day >= self.end {
                return Ok(0);
            }
            self.buf.clear();
            self.pos = 0;
            self.generate_day();
            self.day = self.day.succ_opt().expect("next day");
        }
        let n = out.len().min(self.buf.len() - self.pos);
        out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// Default simulation options for a month.
pub fn options(year: i32, month: u32) -> SimOptions {
    SimOptions {
        year,
        month,
        seed: 20261102,
        faults: true,
        walkers_per_day: 70_000.0,
        days: None,
    }
}
