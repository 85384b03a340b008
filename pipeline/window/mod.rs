//! Stage 2 — event-time windows. Validated events in, additive aggregate rows out.
//!
//! * Tumbling windows aligned to local quarter hours ([`time::WindowSpec`]).
//! * Retries (same sensor, seq, window) count once ([`dedup`]).
//! * The watermark is the largest event time seen (heartbeats included, so a live sensor moves
//!   time forward on a quiet night). A window is *final* once the watermark passes its end plus
//!   the allowed lateness; it is then emitted with `late = false`. The service also moves the
//!   watermark by wall clock when its input goes quiet ([`WindowStage::advance_to`]; the rule of
//!   when is the service's, `service::Shared::tick`).
//! * Events for a window that is already final are still counted: they accumulate as *late* rows
//!   (`late = true`) emitted at the next [`WindowStage::emit_late`]. The true count of a key is
//!   the SUM over its rows, so results do not depend on arrival order.
//! * Liveness: a window in which a sensor sent an event or an `ok` heartbeat gets one row per
//!   configured direction, with `count = 0` where nobody passed (zero); a window without any sign of
//!   life gets no row (missing). A `fault` heartbeat alone yields rows with `up = false`.
//!
//! This stage knows nothing about Kafka, files or Parquet.

pub mod dedup;
pub mod state;
pub mod time;

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::config::{MAX_DIRECTIONS, SensorRegistry};
use crate::event::{Event, EventKind};
use dedup::{Dedup, Seen};
use time::WindowSpec;

/// How long (event time) retry detection remembers a window after it became final.
pub const DEDUP_HORIZON_MS: i64 = 24 * 3_600_000;

/// One additive row of the aggregates table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AggRow {
    pub sensor: u32,
    pub direction: u8,
    /// Window start, epoch ms UTC.
    pub window_start: i64,
    /// People counted.
    pub count: u64,
    /// Count messages accepted.
    pub events: u64,
    /// `ok` heartbeats in the window (same value on each direction's row).
    pub heartbeats: u32,
    /// `fault` heartbeats in the window.
    pub faults: u32,
    /// Last fault code reported in the window.
    pub fault_code: Option<Box<str>>,
    /// The sensor showed liveness (an event or an `ok` heartbeat).
    pub up: bool,
    /// Written after the window was final.
    pub late: bool,
}

#[derive(Debug, Default, Clone)]
struct Acc {
    count: [u64; MAX_DIRECTIONS],
    events: [u64; MAX_DIRECTIONS],
    heartbeats: u32,
    faults: u32,
    fault_code: Option<Box<str>>,
    touched: bool,
}

impl Acc {
    fn add(&mut self, kind: &EventKind) {
        self.touched = true;
        match kind {
            EventKind::Count { direction, count } => {
                self.count[*direction as usize] += u64::from(*count);
                self.events[*direction as usize] += 1;
            }
            EventKind::Heartbeat { ok: true, .. } => self.heartbeats += 1,
            EventKind::Heartbeat { ok: false, code } => {
                self.faults += 1;
                if code.is_some() {
                    self.fault_code.clone_from(code);
                }
            }
        }
    }

    fn emit(self, sensor: u32, window_start: i64, late: bool, dirs: usize, out: &mut Vec<AggRow>) {
        let up = self.heartbeats > 0 || self.events.iter().any(|e| *e > 0);
        for d in 0..dirs {
            out.push(AggRow {
                sensor,
                direction: d as u8,
                window_start,
                count: self.count[d],
                events: self.events[d],
                heartbeats: self.heartbeats,
                faults: self.faults,
                fault_code: self.fault_code.clone(),
                up,
                late,
            });
        }
    }
}

/// Dense per-sensor accumulators of one open window.
#[derive(Debug)]
struct OpenWindow {
    accs: Vec<Acc>,
    touched: Vec<u32>,
}

/// What happened to one event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    /// Counted in an open window.
    Counted,
    /// Counted in a late row (its window was already final).
    Late,
    /// A retry of an event already counted.
    Duplicate,
}

/// Running totals of the window stage.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct WindowStats {
    pub counted: u64,
    pub late: u64,
    pub duplicates: u64,
    pub people: u64,
    /// Ranges of seen sequence numbers forgotten because one (sensor, window) held more than
    /// [`dedup::MAX_RANGES`] (numbers scattered at random); a retry of a forgotten number would
    /// count again.
    #[serde(default)]
    pub retry_memory_forgotten: u64,
}

/// The window state of one input partition.
#[derive(Debug)]
pub struct WindowStage {
    spec: WindowSpec,
    registry: Arc<SensorRegistry>,
    open: BTreeMap<i64, OpenWindow>,
    late: BTreeMap<(i64, u32), Acc>,
    dedup: Dedup,
    watermark: i64,
    /// Largest event time seen (the watermark without wall-clock moves): retry detection forgets
    /// a window only once *the data* is past it by the horizon, so a watermark moved by wall clock
    /// over a backlog of old records can make them late but never makes their retries count.
    data_time: i64,
    /// Last window computed: (start, end), to skip the time-zone lookup for neighbours.
    cache: (i64, i64),
    stats: WindowStats,
}

impl WindowStage {
    pub fn new(spec: WindowSpec, registry: Arc<SensorRegistry>) -> Self {
        WindowStage {
            spec,
            registry,
            open: BTreeMap::new(),
            late: BTreeMap::new(),
            dedup: Dedup::default(),
            watermark: i64::MIN,
            data_time: i64::MIN,
            cache: (0, 0),
            stats: WindowStats::default(),
        }
    }

    pub fn spec(&self) -> &WindowSpec {
        &self.spec
    }

    pub fn stats(&self) -> WindowStats {
        self.stats
    }

    /// The event time up to which input is considered complete (minus allowed lateness).
    pub fn watermark(&self) -> i64 {
        self.watermark
    }

    #[inline]
    fn window_of(&mut self, ts: i64) -> i64 {
        if ts >= self.cache.0 && ts < self.cache.1 {
            return self.cache.0;
        }
        let ws = self.spec.window_start(ts);
        self.cache = (ws, ws + self.spec.size_ms);
        ws
    }

    /// Whether a window is final at the current watermark.
    #[inline]
    fn is_final(&self, window_start: i64) -> bool {
        window_start.saturating_add(self.spec.size_ms + self.spec.lateness_ms) <= self.watermark
    }

    /// Counts one validated event.
    pub fn push(&mut self, ev: &Event) -> Admit {
        let ws = self.window_of(ev.ts_ms);
        if let Some(seq) = ev.seq {
            match self.dedup.first_time(ev.sensor, ws, seq) {
                Seen::New => {}
                Seen::Retry => {
                    self.stats.duplicates += 1;
                    return Admit::Duplicate;
                }
                Seen::NewForgot => self.forgot_retry_memory(ev.sensor, ws),
            }
        }
        if let EventKind::Count { count, .. } = ev.kind {
            self.stats.people += u64::from(count);
        }
        let admit = if self.is_final(ws) {
            self.late.entry((ws, ev.sensor)).or_default().add(&ev.kind);
            self.stats.late += 1;
            Admit::Late
        } else {
            let n = self.registry.len();
            let w = self.open.entry(ws).or_insert_with(|| OpenWindow {
                accs: vec![Acc::default(); n],
                touched: Vec::new(),
            });
            let acc = &mut w.accs[ev.sensor as usize];
            if !acc.touched {
                w.touched.push(ev.sensor);
            }
            acc.add(&ev.kind);
            Admit::Counted
        };
        self.stats.counted += 1;
        if ev.ts_ms > self.watermark {
            self.watermark = ev.ts_ms;
        }
        if ev.ts_ms > self.data_time {
            self.data_time = ev.ts_ms;
        }
        admit
    }

    /// Counts a forgotten range of retry memory; logs the 1st, 2nd, 4th, 8th ... time.
    #[cold]
    fn forgot_retry_memory(&mut self, sensor: u32, ws: i64) {
        self.stats.retry_memory_forgotten += 1;
        let n = self.stats.retry_memory_forgotten;
        if n.is_power_of_two() {
            tracing::warn!(
                sensor = %self.registry.get(sensor).id,
                window_start_ms = ws,
                forgotten_so_far = n,
                "sequence numbers arrive scattered: more than {} separate ranges in one window; \
                 the lowest are forgotten (new numbers still count once, a retry of a forgotten \
                 one would count again) — check the gateway's seq numbering",
                dedup::MAX_RANGES
            );
        }
    }

    /// Moves event time forward without an event (wall clock / idle timeout in the service).
    pub fn advance_to(&mut self, t: i64) {
        if t > self.watermark {
            self.watermark = t;
        }
    }

    /// Whether some open window is final and waiting to be emitted.
    pub fn has_final(&self) -> bool {
        self.open
            .first_key_value()
            .is_some_and(|(ws, _)| self.is_final(*ws))
    }

    /// Emits every open window that is final (in window order, sensors in registry order).
    pub fn emit_final(&mut self, out: &mut Vec<AggRow>) {
        while let Some((&ws, _)) = self.open.first_key_value() {
            if !self.is_final(ws) {
                break;
            }
            let w = self.open.remove(&ws).expect("first window");
            self.emit_window(ws, w, out);
        }
        let cutoff = self
            .data_time
            .saturating_sub(self.spec.size_ms + self.spec.lateness_ms + DEDUP_HORIZON_MS);
        self.dedup.expire(cutoff);
    }

    fn emit_window(&self, ws: i64, mut w: OpenWindow, out: &mut Vec<AggRow>) {
        w.touched.sort_unstable();
        for s in w.touched {
            let acc = std::mem::take(&mut w.accs[s as usize]);
            let dirs = self.registry.get(s).directions.len();
            acc.emit(s, ws, false, dirs, out);
        }
    }

    /// Whether late rows are waiting to be emitted.
    pub fn has_late(&self) -> bool {
        !self.late.is_empty()
    }

    /// Emits the late rows gathered since the last call.
    pub fn emit_late(&mut self, out: &mut Vec<AggRow>) {
        for ((ws, s), acc) in std::mem::take(&mut self.late) {
            let dirs = self.registry.get(s).directions.len();
            acc.emit(s, ws, true, dirs, out);
        }
    }

    /// End of input: emits every open window (as final) and every late row.
    pub fn flush_all(&mut self, out: &mut Vec<AggRow>) {
        for (ws, w) in std::mem::take(&mut self.open) {
            self.emit_window(ws, w, out);
        }
        self.emit_late(out);
    }

    /// Rows waiting in open windows and late accumulators (for memory accounting).
    pub fn open_windows(&self) -> usize {
        self.open.len() + self.late.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn stage() -> WindowStage {
        let cfg = Config::chikaho("memory://");
        WindowStage::new(cfg.window, Arc::new(cfg.registry))
    }

    const T0: i64 = 1_793_574_000_000; // 2026-11-02T08:00:00+09:00

    fn count(sensor: u32, ts: i64, seq: Option<u64>) -> Event {
        Event {
            sensor,
            ts_ms: ts,
            seq,
            kind: EventKind::Count {
                direction: 0,
                count: 1,
            },
        }
    }

    fn hb(sensor: u32, ts: i64, ok: bool) -> Event {
        Event {
            sensor,
            ts_ms: ts,
            seq: None,
            kind: EventKind::Heartbeat { ok, code: None },
        }
    }

    #[test]
    fn window_is_final_after_end_plus_lateness() {
        let mut s = stage();
        let mut out = Vec::new();
        s.push(&count(0, T0 + 1000, None));
        s.push(&count(0, T0 + 24 * 60_000, None)); // 08:24: 08:00 window not final (needs 08:25)
        s.emit_final(&mut out);
        assert!(out.is_empty());
        s.push(&hb(1, T0 + 25 * 60_000, true)); // 08:25 moves time: 08:00 window is final
        s.emit_final(&mut out);
        assert_eq!(out.len(), 2);
        assert_eq!((out[0].count, out[0].up, out[0].late), (1, true, false));
        assert_eq!((out[1].direction, out[1].count), (1, 0)); // live sensor, nobody south: zero
    }

    #[test]
    fn late_events_become_late_rows_and_duplicates_count_once() {
        let mut s = stage();
        let mut out = Vec::new();
        assert_eq!(s.push(&count(0, T0, Some(7))), Admit::Counted);
        assert_eq!(s.push(&count(0, T0, Some(7))), Admit::Duplicate);
        s.advance_to(T0 + 3_600_000);
        s.emit_final(&mut out);
        assert_eq!(out.len(), 2);
        assert_eq!(s.push(&count(0, T0 + 5, Some(8))), Admit::Late);
        assert_eq!(s.push(&count(0, T0, Some(7))), Admit::Duplicate);
        out.clear();
        s.emit_late(&mut out);
        assert_eq!(out.len(), 2);
        assert!(out.iter().all(|r| r.late));
        assert_eq!(out[0].count, 1);
        assert_eq!(
            s.stats(),
            WindowStats {
                counted: 2,
                late: 1,
                duplicates: 2,
                people: 2,
                retry_memory_forgotten: 0,
            }
        );
    }

    #[test]
    fn a_wall_clock_jump_makes_old_records_late_but_never_forgets_their_retries() {
        // A backlog of old records: the watermark is moved by wall clock far past them (a week),
        // then more of the backlog arrives, with retries of what was counted before the jump.
        let mut s = stage();
        let mut out = Vec::new();
        assert_eq!(s.push(&count(0, T0, Some(7))), Admit::Counted);
        s.advance_to(T0 + 7 * 86_400_000);
        s.emit_final(&mut out);
        assert_eq!(out.len(), 2);
        assert_eq!(s.push(&count(0, T0, Some(7))), Admit::Duplicate);
        assert_eq!(s.push(&count(0, T0 + 60_000, Some(8))), Admit::Late);
        // Restored from a checkpoint, the stage still remembers.
        let mut r =
            WindowStage::restore(s.spec.clone(), s.registry.clone(), &s.snapshot()).unwrap();
        assert_eq!(r.push(&count(0, T0 + 60_000, Some(8))), Admit::Duplicate);
        // Data time moving on past the horizon is what forgets.
        r.push(&hb(0, T0 + 2 * DEDUP_HORIZON_MS, true));
        r.emit_final(&mut out);
        assert_eq!(r.push(&count(0, T0, Some(7))), Admit::Late);
    }

    #[test]
    fn fault_heartbeat_alone_is_not_liveness() {
        let mut s = stage();
        let mut out = Vec::new();
        s.push(&hb(2, T0, false));
        s.flush_all(&mut out);
        assert_eq!(out.len(), 2);
        assert!(out.iter().all(|r| !r.up && r.faults == 1 && r.count == 0));
    }
}
