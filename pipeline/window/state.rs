//! The window stage's state as a value: what the Kafka service stores with each checkpoint so that
//! a restarted process continues exactly where the last checkpoint left off.
//!
//! Sensors are stored by id (not by registry index), so adding a sensor to the configuration
//! between two runs is harmless; removing one that still has open state is refused with a message.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::{Acc, OpenWindow, WindowStage, WindowStats};
use crate::config::{MAX_DIRECTIONS, SensorRegistry};
use crate::window::time::WindowSpec;

/// One sensor's accumulator in one window.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccState {
    pub window_start: i64,
    pub sensor: String,
    /// People per direction, in the sensor's configured order.
    pub count: Vec<u64>,
    pub events: Vec<u64>,
    pub heartbeats: u32,
    pub faults: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fault_code: Option<String>,
}

/// Retry-detection memory of one (sensor, window).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeenState {
    pub sensor: String,
    pub window_start: i64,
    pub ranges: Vec<(u64, u64)>,
}

/// Everything a [`WindowStage`] holds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StageState {
    pub watermark: i64,
    /// Largest event time seen (absent in checkpoints written before it existed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_time: Option<i64>,
    pub stats: WindowStats,
    /// Windows not yet final.
    pub open: Vec<AccState>,
    /// Late accumulators not yet emitted.
    pub late: Vec<AccState>,
    pub seen: Vec<SeenState>,
}

impl StageState {
    /// Open windows plus pending late accumulators.
    pub fn pending(&self) -> usize {
        self.open.len() + self.late.len()
    }
}

fn acc_state(registry: &SensorRegistry, ws: i64, sensor: u32, acc: &Acc) -> AccState {
    let dirs = registry.get(sensor).directions.len();
    AccState {
        window_start: ws,
        sensor: registry.get(sensor).id.clone(),
        count: acc.count[..dirs].to_vec(),
        events: acc.events[..dirs].to_vec(),
        heartbeats: acc.heartbeats,
        faults: acc.faults,
        fault_code: acc.fault_code.as_deref().map(str::to_string),
    }
}

fn sensor_index(registry: &SensorRegistry, id: &str) -> Result<u32, String> {
    registry.lookup(id).ok_or_else(|| {
        format!(
            "the checkpoint holds open windows of sensor `{id}`, which is no longer in the \
             configuration; add it back until its windows are written (or delete the checkpoint \
             to replay the partition from its committed offset)"
        )
    })
}

fn acc_from(registry: &SensorRegistry, a: &AccState) -> Result<(u32, Acc), String> {
    let s = sensor_index(registry, &a.sensor)?;
    let dirs = registry.get(s).directions.len();
    if a.count.len() != dirs || a.events.len() != dirs || dirs > MAX_DIRECTIONS {
        return Err(format!(
            "the checkpoint holds sensor `{}` with {} directions but the configuration has {dirs}; \
             keep its directions until its open windows are written",
            a.sensor,
            a.count.len()
        ));
    }
    let mut acc = Acc {
        heartbeats: a.heartbeats,
        faults: a.faults,
        fault_code: a.fault_code.as_deref().map(Into::into),
        touched: true,
        ..Acc::default()
    };
    acc.count[..dirs].copy_from_slice(&a.count);
    acc.events[..dirs].copy_from_slice(&a.events);
    Ok((s, acc))
}

impl WindowStage {
    /// The stage's complete state.
    pub fn snapshot(&self) -> StageState {
        let reg = &*self.registry;
        let mut open = Vec::new();
        for (&ws, w) in &self.open {
            let mut touched = w.touched.clone();
            touched.sort_unstable();
            for s in touched {
                open.push(acc_state(reg, ws, s, &w.accs[s as usize]));
            }
        }
        let late = self
            .late
            .iter()
            .map(|(&(ws, s), acc)| acc_state(reg, ws, s, acc))
            .collect();
        let mut seen: Vec<SeenState> = self
            .dedup
            .entries()
            .map(|(s, ws, r)| SeenState {
                sensor: reg.get(s).id.clone(),
                window_start: ws,
                ranges: r,
            })
            .collect();
        seen.sort_by(|a, b| (a.window_start, &a.sensor).cmp(&(b.window_start, &b.sensor)));
        StageState {
            watermark: self.watermark,
            data_time: Some(self.data_time),
            stats: self.stats,
            open,
            late,
            seen,
        }
    }

    /// A stage that continues from `state`.
    pub fn restore(
        spec: WindowSpec,
        registry: Arc<SensorRegistry>,
        state: &StageState,
    ) -> Result<WindowStage, String> {
        let mut stage = WindowStage::new(spec, registry.clone());
        stage.watermark = state.watermark;
        // Checkpoints written before `data_time` existed: the latest window the state holds is a
        // safe lower bound (the watermark may have been moved by wall clock).
        stage.data_time = state.data_time.unwrap_or_else(|| {
            let windows = state.open.iter().chain(&state.late).map(|a| a.window_start);
            let seen = state.seen.iter().map(|e| e.window_start);
            windows.chain(seen).max().unwrap_or(i64::MIN)
        });
        stage.stats = state.stats;
        let n = registry.len();
        for a in &state.open {
            let (s, acc) = acc_from(&registry, a)?;
            let w = stage
                .open
                .entry(a.window_start)
                .or_insert_with(|| OpenWindow {
                    accs: vec![Acc::default(); n],
                    touched: Vec::new(),
                });
            w.accs[s as usize] = acc;
            w.touched.push(s);
        }
        for a in &state.late {
            let (s, acc) = acc_from(&registry, a)?;
            stage.late.insert((a.window_start, s), acc);
        }
        // A removed sensor's retry memory is not needed: its events are quarantined now.
        for e in &state.seen {
            if let Some(s) = registry.lookup(&e.sensor) {
                stage.dedup.restore(s, e.window_start, &e.ranges);
            }
        }
        Ok(stage)
    }
}
