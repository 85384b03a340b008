//! Quarantine: where every rejected message goes, with its reason, its position in the input and
//! its bytes — whole up to `validation.max_message_bytes`, so a fixed message can be re-ingested
//! from the table; a message over the limit keeps its first `max_message_bytes`. Nothing is dropped
//! silently; the run report counts each reason.

use std::collections::BTreeMap;

use crate::event::{Reason, Rejection};

/// The bytes of a rejected message the quarantine table keeps: all of them up to
/// `max_message_bytes` (`validation.max_message_bytes`), else that many from the start.
pub fn kept(payload: &[u8], max_message_bytes: usize) -> &[u8] {
    &payload[..payload.len().min(max_message_bytes)]
}

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
    /// The message as received, whole up to `max_message_bytes` (see [`kept`]).
    pub payload: Vec<u8>,
    /// Full size of the message.
    pub payload_bytes: u64,
    pub received_at_ms: i64,
}

impl QuarantineRecord {
    /// Bytes this record holds in memory while it waits for its commit (what the driver bounds).
    pub fn buffered_bytes(&self) -> usize {
        std::mem::size_of::<Self>() + self.source.len() + self.detail.len() + self.payload.len()
    }

    /// `payload` is what the table keeps (callers bound it with [`kept`]); `payload_bytes` the
    /// message's full size.
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
            payload: payload.to_vec(),
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
