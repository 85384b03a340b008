//! `jinryu simulate --kafka`: publishes the simulator's JSON lines (or any JSON lines) to the
//! configured topic, keyed by `sensor_id` like a gateway, at a chosen rate. The producer is
//! idempotent, so its own retries never duplicate a record.

use std::io::BufRead;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rdkafka::ClientContext;
use rdkafka::error::KafkaError;
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::types::RDKafkaErrorCode;

use crate::config::KafkaSettings;
use crate::source::kafka::client_config;

/// What a publish run did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Published {
    /// Records acknowledged by the broker.
    pub delivered: u64,
    /// Records the broker did not take (after the producer's retries).
    pub failed: u64,
}

#[derive(Default)]
struct Acks {
    delivered: AtomicU64,
    failed: AtomicU64,
}

struct Ctx(Arc<Acks>);

impl ClientContext for Ctx {}

impl ProducerContext for Ctx {
    type DeliveryOpaque = ();
    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        match result {
            Ok(_) => self.0.delivered.fetch_add(1, Ordering::Relaxed),
            Err((e, _)) => {
                tracing::warn!(error = %e, "a record was not delivered");
                self.0.failed.fetch_add(1, Ordering::Relaxed)
            }
        };
    }
}

/// The `sensor_id` of a JSON line, used as the record key (None when the line has none).
pub fn sensor_key(line: &[u8]) -> Option<&[u8]> {
    const PAT: &[u8] = br#""sensor_id":""#;
    let at = memchr::memmem::find(line, PAT)? + PAT.len();
    let end = memchr::memchr(b'"', &line[at..])?;
    Some(&line[at..at + end])
}

/// Publishes every non-blank line of `input` as one record. `rate`: records per second (None =
/// as fast as the broker takes them).
pub fn publish(
    settings: &KafkaSettings,
    input: impl BufRead,
    rate: Option<f64>,
) -> anyhow::Result<Published> {
    let acks = Arc::new(Acks::default());
    let producer: ThreadedProducer<Ctx> = client_config(
        settings,
        &[
            ("enable.idempotence", "true"),
            ("linger.ms", "20"),
            ("batch.size", "1000000"),
            ("compression.type", "lz4"),
            ("queue.buffering.max.messages", "1000000"),
        ],
    )
    .map_err(anyhow::Error::msg)?
    .create_with_context(Ctx(acks.clone()))
    .map_err(|e| anyhow::anyhow!(crate::source::kafka::client_error("producer", settings, &e)))?;
    let t0 = Instant::now();
    let mut last_log = Instant::now();
    let mut sent = 0u64;
    for line in input.split(b'\n') {
        let line = line?;
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        if let Some(r) = rate {
            let due = t0 + Duration::from_secs_f64(sent as f64 / r);
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
        }
        let key = sensor_key(&line);
        let mut record: BaseRecord<'_, [u8], [u8]> =
            BaseRecord::to(&settings.topic).payload(&line[..]);
        if let Some(k) = key {
            record = record.key(k);
        }
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                    record = r;
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err((e, _)) => anyhow::bail!(
                    "cannot publish to {} at {}: {e}",
                    settings.topic,
                    settings.brokers
                ),
            }
        }
        sent += 1;
        if last_log.elapsed() >= Duration::from_secs(5) {
            last_log = Instant::now();
            tracing::info!(
                sent,
                delivered = acks.delivered.load(Ordering::Relaxed),
                rate = format!("{:.0}/s", sent as f64 / t0.elapsed().as_secs_f64()),
                "publishing"
            );
        }
    }
    producer
        .flush(Duration::from_secs(120))
        .map_err(|e| anyhow::anyhow!("the broker did not acknowledge every record: {e}"))?;
    Ok(Published {
        delivered: acks.delivered.load(Ordering::Relaxed),
        failed: acks.failed.load(Ordering::Relaxed),
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn key_is_the_sensor_id() {
        assert_eq!(
            super::sensor_key(br#"{"sensor_id":"J1-2","ts":1}"#),
            Some(&b"J1-2"[..])
        );
        assert_eq!(super::sensor_key(b"not json"), None);
    }
}
