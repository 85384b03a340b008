//! Quarantine: where every rejected message goes, with its reason, its position in the input and a
//! bounded copy of its bytes. Nothing is dropped silently; the run report counts each reason.

use std::collections::BTreeMap;

use crate::event::{Reason, Rejection};

/// Bytes of a rejected message kept in the quarantine table.
pub const PAYLOAD_KEEP_BYTES: usize = 1024;

/// One rejected message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuarantineRecord {
    /// Input name: the source id of a file ingest, or the Kafka topic.
    pub source: String,
    /// Kafka partition, or `None` for file input.
    pub partition: Option<i64>,
    /// 1-based line number of a file, or the Kafka offset.
    pub position: u64,
    pub reason: Reason,
    pub detail: String,
    /// The first [`PAYLOAD_KEEP_BYTES`] bytes of the message, as received.
    pub payload: Vec<u8>,
    /// Full size of the message.
    pub payload_bytes: u64,
    pub received_at_ms: i64,
}

impl QuarantineRecord {
    pub fn new(
        source: &str,
        partition: Option<i64>,
        position: u64,
        rejection: Rejection,
        payload: &[u8],
        payload_bytes: u64,
        received_at_ms: i64,
    ) -> Self {
        QuarantineRecord {
            source: source.to_string(),
            partition,
            position,
            reason: rejection.reason,
            detail: rejection.detail,
            payload: payload[..payload.len().min(PAYLOAD_KEEP_BYTES)].to_vec(),
            payload_bytes,
            received_at_ms,
        }
    }
}

/// Quarantined messages by reason.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ReasonCounts(pub BTreeMap<&'static str, u64>);

impl ReasonCounts {
    pub fn add(&mut self, reason: Reason) {
        *self.0.entry(reason.code()).or_default() += 1;
    }
    pub fn total(&self) -> u64 {
        self.0.values().sum()
    }
}
