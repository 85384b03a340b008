//! Records taken from librdkafka in batches, copied out of its memory so that the polling thread
//! goes on polling while another thread decodes, counts and commits them.

use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Message};

/// A record's key and value as received.
pub type RawRecord<'a> = (Option<&'a [u8]>, Option<&'a [u8]>);

/// Most records taken from the client in one go.
pub const BATCH: usize = 32768;

/// A batch ends once its copied keys and values reach this size (memory stays bounded whatever
/// the records' size; a Kafka record is below 2 GiB, so `u32` positions cannot overflow).
pub const BATCH_BYTES: usize = 16 << 20;

/// Records polled together.
#[derive(Default)]
pub struct Batch {
    /// Revocations seen by the polling thread before these records were polled.
    pub generation: u64,
    bytes: Vec<u8>,
    pub records: Vec<Record>,
}

/// One record of a [`Batch`]: where it came from, and its key and value as ranges of the batch's
/// bytes (`None`: the record has none — distinct from empty).
pub struct Record {
    pub partition: i32,
    pub offset: i64,
    key: Option<(u32, u32)>,
    value: Option<(u32, u32)>,
}

impl Batch {
    pub fn new(generation: u64) -> Batch {
        Batch {
            generation,
            ..Batch::default()
        }
    }

    fn push(&mut self, m: &BorrowedMessage<'_>) {
        let mut copy = |b: Option<&[u8]>| {
            b.map(|b| {
                let start = self.bytes.len() as u32;
                self.bytes.extend_from_slice(b);
                (start, self.bytes.len() as u32)
            })
        };
        let key = copy(m.key());
        let value = copy(m.payload());
        self.records.push(Record {
            partition: m.partition(),
            offset: m.offset(),
            key,
            value,
        });
    }

    fn full(&self) -> bool {
        self.records.len() >= BATCH || self.bytes.len() >= BATCH_BYTES
    }

    fn slice(&self, r: Option<(u32, u32)>) -> Option<&[u8]> {
        r.map(|(a, b)| &self.bytes[a as usize..b as usize])
    }

    /// A record's value.
    pub fn value(&self, r: &Record) -> Option<&[u8]> {
        self.slice(r.value)
    }

    /// A record's key and value.
    pub fn raw(&self, r: &Record) -> RawRecord<'_> {
        (self.slice(r.key), self.slice(r.value))
    }
}

/// The polling loop: while `running()`, polls `consumer` (which also runs its rebalance
/// callbacks) and hands batches to `send` — a batch's first record waits up to 100 ms, the rest
/// are what the client has already fetched. When a revocation ran inside a poll (`generation()`
/// changed), what was polled before it goes as one batch of the old generation. Stops when
/// `send` returns false. Client errors go to `on_error`; `alive` is called every round.
pub fn poll_batches<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    running: impl Fn() -> bool,
    generation: impl Fn() -> u64,
    mut send: impl FnMut(Batch) -> bool,
    mut on_error: impl FnMut(KafkaError),
    alive: impl Fn(),
) {
    let mut batch = Batch::new(generation());
    'polling: while running() {
        alive();
        let mut timeout = Duration::from_millis(100);
        while !batch.full() {
            let polled = consumer.poll(timeout);
            timeout = Duration::ZERO;
            if generation() != batch.generation {
                let before = std::mem::replace(&mut batch, Batch::new(generation()));
                if !before.records.is_empty() && !send(before) {
                    break 'polling;
                }
            }
            match polled {
                Some(Ok(m)) => batch.push(&m),
                Some(Err(e)) => {
                    on_error(e);
                    break;
                }
                None => break,
            }
        }
        if !batch.records.is_empty() {
            let full = std::mem::replace(&mut batch, Batch::new(generation()));
            if !send(full) {
                break;
            }
        }
    }
}
