//! Stage 1 — decode and validate. Raw message bytes in, a compact [`Event`] or a [`Rejection`]
//! out. The contract is `schemas/sensor-event.schema.json`; this module is its only reader.
//!
//! Only the fields of the schema survive decoding: anything else in a message is dropped here,
//! before anything is stored. This module never stores, counts or drops anything itself.

pub mod decode;
pub mod fields;
pub mod reject;

pub use decode::Decoder;
pub use reject::{Reason, Rejection};

/// What a valid message says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventKind {
    /// `count` people passed in the sensor's `direction` (index into its configured directions).
    Count { direction: u8, count: u32 },
    /// The sensor is alive (`ok`) or reports that it cannot count (`fault`, with optional code).
    Heartbeat { ok: bool, code: Option<Box<str>> },
}

/// A decoded, validated sensor event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// Index into the sensor registry.
    pub sensor: u32,
    /// Event time, epoch milliseconds (UTC).
    pub ts_ms: i64,
    /// Optional per-sensor sequence number; the same `(sensor, seq)` twice counts once.
    pub seq: Option<u64>,
    pub kind: EventKind,
}
