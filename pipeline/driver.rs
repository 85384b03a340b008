//! The one loop of the pipeline, written once and used by `jinryu ingest` (a file run) and by each
//! Kafka partition of `jinryu run`: admit a decoded event into the window stage, quarantine a
//! rejected record, emit rows as windows become final, and hold them until the caller's epoch is
//! committed. The callers differ only in where records come from and when an epoch is due — a
//! file run rolls at `roll_rows`, a partition also by its clocks ([`Plan`]).

use crate::event::Event;
use crate::quarantine::{QuarantineRecord, ReasonCounts};
use crate::window::{Admit, AggRow, WindowStage};

/// Rows and quarantine records on their way to the tables.
pub struct Driver {
    stage: WindowStage,
    rows: Vec<AggRow>,
    quarantine: Vec<QuarantineRecord>,
    reasons: ReasonCounts,
    /// Bytes the quarantine buffer holds (payloads, details), bounded by `roll_bytes`.
    quarantine_bytes: usize,
    roll: Roll,
}

/// When the buffers are full enough to commit an epoch (`[sink]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Roll {
    /// Aggregate rows plus quarantine records.
    pub rows: usize,
    /// Bytes of quarantined messages: a flood of large rejected messages is committed in parts
    /// instead of filling memory.
    pub quarantine_bytes: usize,
}

impl Driver {
    pub fn new(stage: WindowStage, roll: Roll) -> Self {
        Driver {
            stage,
            rows: Vec::new(),
            quarantine: Vec::new(),
            reasons: ReasonCounts::default(),
            quarantine_bytes: 0,
            roll,
        }
    }

    /// Counts one valid event; rows of windows that became final are emitted.
    pub fn admit(&mut self, ev: &Event) -> Admit {
        let admitted = self.stage.push(ev);
        self.emit_final();
        admitted
    }

    /// Quarantines one rejected record.
    pub fn reject(&mut self, record: QuarantineRecord) {
        self.reasons.add(record.reason);
        self.quarantine_bytes += record.buffered_bytes();
        self.quarantine.push(record);
    }

    /// Moves event time to `t` (a quiet partition's wall clock) and emits what became final.
    pub fn advance_to(&mut self, t: i64) {
        self.stage.advance_to(t);
        self.emit_final();
    }

    /// Emits the rows of every window that is final.
    pub fn emit_final(&mut self) {
        if self.stage.has_final() {
            self.stage.emit_final(&mut self.rows);
        }
    }

    /// The buffers reached `roll_rows` or `roll_quarantine_bytes`: the caller should commit an
    /// epoch now.
    pub fn roll_due(&self) -> bool {
        self.rows.len() + self.quarantine.len() >= self.roll.rows
            || self.quarantine_bytes >= self.roll.quarantine_bytes
    }

    /// Something waits to be written (rows, quarantine records, or late data).
    pub fn has_output(&self) -> bool {
        !self.rows.is_empty() || !self.quarantine.is_empty() || self.stage.has_late()
    }

    /// Closes the epoch: final rows and late rows join the buffers.
    pub fn seal(&mut self) {
        self.emit_final();
        self.stage.emit_late(&mut self.rows);
    }

    /// End of input (a file run): every open window is written.
    pub fn seal_all(&mut self) {
        self.stage.flush_all(&mut self.rows);
    }

    /// How many rows at the front of the buffer belong to local days that are over: a later day's
    /// window is already final. A file run writes them then (one file per day, and a month of
    /// input never waits in memory); the rows of final windows are in window order until the
    /// epoch is sealed, which this relies on.
    pub fn whole_days(&self, spec: &crate::window::time::WindowSpec) -> usize {
        let (Some(first), Some(last)) = (self.rows.first(), self.rows.last()) else {
            return 0;
        };
        let last_day = spec.local_date(last.window_start);
        if spec.local_date(first.window_start) == last_day {
            return 0;
        }
        let cut = spec.day_start(last_day);
        self.rows.partition_point(|r| r.window_start < cut)
    }

    /// Takes the first `n` rows of the buffer (see [`Driver::whole_days`]).
    pub fn take_rows(&mut self, n: usize) -> Vec<AggRow> {
        self.rows.drain(..n).collect()
    }

    /// The sealed epoch.
    pub fn epoch(&self) -> (&[AggRow], &[QuarantineRecord]) {
        (&self.rows, &self.quarantine)
    }

    /// Takes the sealed epoch, leaving the buffers empty.
    pub fn take_epoch(&mut self) -> (Vec<AggRow>, Vec<QuarantineRecord>) {
        self.quarantine_bytes = 0;
        (
            std::mem::take(&mut self.rows),
            std::mem::take(&mut self.quarantine),
        )
    }

    /// The epoch is committed: its buffers are emptied.
    pub fn committed(&mut self) {
        self.rows.clear();
        self.quarantine.clear();
        self.quarantine_bytes = 0;
    }

    pub fn stage(&self) -> &WindowStage {
        &self.stage
    }

    /// Quarantined records by reason, since the driver started.
    pub fn reasons(&self) -> &ReasonCounts {
        &self.reasons
    }
}

/// What a Kafka partition's clocks measured at a tick. The decisions ([`quiet_advance`],
/// [`epoch_due`]) are pure arithmetic on these, so they are tested without a broker or a real
/// clock.
#[derive(Debug, Clone, Copy)]
pub struct Clocks {
    /// Wall clock now (ms).
    pub now_ms: i64,
    /// How long nothing has arrived while the service was listening (ms).
    pub quiet_ms: i64,
    /// Since the last commit (ms).
    pub since_commit_ms: i64,
    /// Records were consumed since the last commit.
    pub dirty: bool,
}

/// The service settings the clocks read (ms).
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    pub idle_timeout_ms: i64,
    pub flush_interval_ms: i64,
    pub checkpoint_interval_ms: i64,
}

/// Idle timeouts after which a quiet partition moves by wall clock even if it was never seen
/// consumed to its end (it ends in transaction markers, or retention deleted its records).
pub const QUIET_ANYWAY: i64 = 5;

/// Where a quiet partition's event time moves (`now − idle_timeout`), if it is quiet. Wall clock
/// closes windows only when a partition is quiet *and* consumed to its end (`caught_up`, asked
/// only when needed): a consumer that was busy or held up while records piled up must not jump
/// event time past them — they would all become late, and retry memory would forget their
/// windows.
pub fn quiet_advance(c: Clocks, t: Timing, caught_up: impl FnOnce() -> bool) -> Option<i64> {
    let quiet = c.quiet_ms >= t.idle_timeout_ms.saturating_mul(QUIET_ANYWAY)
        || (c.quiet_ms >= t.idle_timeout_ms && caught_up());
    quiet.then(|| c.now_ms - t.idle_timeout_ms)
}

/// Whether an epoch is due: the buffers reached `roll_rows`, output has waited
/// `flush_interval`, or consumed records have waited `checkpoint_interval`.
pub fn epoch_due(c: Clocks, t: Timing, driver: &Driver) -> bool {
    driver.roll_due()
        || (driver.has_output() && c.since_commit_ms >= t.flush_interval_ms)
        || (c.dirty && c.since_commit_ms >= t.checkpoint_interval_ms)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::event::{Event, EventKind, Reason, Rejection};
    use std::sync::Arc;

    const T: Timing = Timing {
        idle_timeout_ms: 120_000,
        flush_interval_ms: 10_000,
        checkpoint_interval_ms: 30_000,
    };
    const NOW: i64 = 1_793_600_000_000;

    fn clocks(quiet_ms: i64, since_commit_ms: i64, dirty: bool) -> Clocks {
        Clocks {
            now_ms: NOW,
            quiet_ms,
            since_commit_ms,
            dirty,
        }
    }

    fn driver(roll_rows: usize) -> Driver {
        let cfg = Config::chikaho("memory://");
        let stage = WindowStage::new(cfg.window.clone(), Arc::new(cfg.registry.clone()));
        Driver::new(
            stage,
            Roll {
                rows: roll_rows,
                quarantine_bytes: cfg.roll.quarantine_bytes,
            },
        )
    }

    fn rejected(position: u64) -> QuarantineRecord {
        QuarantineRecord::new(
            "t",
            Some(0),
            position,
            Rejection::new(Reason::InvalidJson, "x"),
            b"{",
            1,
            NOW,
        )
    }

    #[test]
    fn a_quiet_partition_moves_by_wall_clock_only_when_caught_up() {
        // Quiet for the idle timeout and consumed to its end: moves to now − idle_timeout.
        assert_eq!(
            quiet_advance(clocks(120_000, 0, false), T, || true),
            Some(NOW - 120_000)
        );
        // Quiet, but records wait in Kafka (a backlog, or a consumer held up): never moves.
        assert_eq!(quiet_advance(clocks(599_999, 0, false), T, || false), None);
        // Unless it stays so for five idle timeouts (its end is never reached).
        assert_eq!(
            quiet_advance(clocks(600_000, 0, false), T, || false),
            Some(NOW - 120_000)
        );
        // Not quiet long enough: the high watermark is not even asked.
        assert_eq!(
            quiet_advance(clocks(119_999, 0, false), T, || panic!("asked")),
            None
        );
    }

    #[test]
    fn epochs_are_due_by_output_checkpoint_interval_or_size() {
        let idle = driver(1_000);
        let mut out = driver(1_000);
        out.reject(rejected(1));
        let mut full = driver(2);
        full.reject(rejected(1));
        full.reject(rejected(2));
        assert!(!epoch_due(clocks(0, 9_999, true), T, &out));
        assert!(epoch_due(clocks(0, 10_000, true), T, &out));
        assert!(!epoch_due(clocks(0, 29_999, true), T, &idle));
        assert!(epoch_due(clocks(0, 30_000, true), T, &idle));
        assert!(
            !epoch_due(clocks(0, 1_000_000, false), T, &idle),
            "nothing consumed, nothing to write"
        );
        assert!(epoch_due(clocks(0, 0, true), T, &full));
    }

    fn event(sensor: u32, ts: i64, count: u32, seq: Option<u64>) -> Event {
        Event {
            sensor,
            ts_ms: ts,
            seq,
            kind: EventKind::Count {
                direction: 0,
                count,
            },
        }
    }

    /// The driver over a quiet partition with an injected clock: counts, a retry, a rejection,
    /// the idle clock closing the window, an epoch sealed and committed, then a late event.
    #[test]
    fn the_driver_counts_quarantines_and_seals_epochs() {
        let mut d = driver(1_000);
        let ws = 1_793_574_000_000; // a window start (local quarter hour)
        assert_eq!(d.admit(&event(0, ws + 1_000, 2, Some(1))), Admit::Counted);
        assert_eq!(d.admit(&event(0, ws + 2_000, 3, Some(2))), Admit::Counted);
        assert_eq!(d.admit(&event(0, ws + 2_000, 3, Some(2))), Admit::Duplicate);
        d.reject(rejected(7));
        assert!(d.has_output(), "a quarantined record waits");
        assert!(d.epoch().0.is_empty(), "the window is still open");
        // Two quiet minutes later, consumed to the end: the clock closes the window.
        let c = Clocks {
            now_ms: ws + 3_600_000,
            quiet_ms: 120_000,
            since_commit_ms: 30_000,
            dirty: true,
        };
        let to = quiet_advance(c, T, || true).expect("quiet");
        d.advance_to(to);
        assert!(epoch_due(c, T, &d));
        d.seal();
        let (rows, q) = d.epoch();
        let people: u64 = rows.iter().map(|r| r.count).sum();
        assert_eq!((people, q.len()), (5, 1));
        assert_eq!(d.reasons().total(), 1);
        d.committed();
        assert!(!d.has_output());
        // A late event after the window was written: a late row in the next epoch.
        assert_eq!(d.admit(&event(0, ws + 3_000, 4, Some(3))), Admit::Late);
        d.seal();
        let late: Vec<_> = d.epoch().0.iter().filter(|r| r.late).collect();
        assert!(late.iter().all(|r| r.window_start == ws), "{late:?}");
        assert_eq!(late.iter().map(|r| r.count).sum::<u64>(), 4);
    }
}
