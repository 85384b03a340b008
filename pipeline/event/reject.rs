//! Why a message was rejected. The reason codes are part of the quarantine table's contract:
//! analysts filter on them and alerts count them, so they never change meaning.

use std::fmt;

/// Reason a message went to quarantine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Reason {
    /// An empty message (a blank Kafka value; blank lines of JSON-lines input are skipped).
    Empty,
    /// Larger than `validation.max_message_bytes`.
    TooLarge,
    /// Not valid UTF-8.
    InvalidUtf8,
    /// Not valid JSON.
    InvalidJson,
    /// Valid JSON but not an object.
    NotAnObject,
    /// The same field twice in one object.
    DuplicateField,
    /// A required field is absent.
    MissingField,
    /// A field has the wrong JSON type.
    WrongType,
    /// `sensor_id` is not in the registry.
    UnknownSensor,
    /// `direction` is not one of the sensor's configured directions.
    UnknownDirection,
    /// `kind` is neither `count` nor `heartbeat`.
    InvalidKind,
    /// `count` is zero, negative or not an integer.
    InvalidCount,
    /// `count` is above `validation.max_count`.
    CountTooLarge,
    /// `ts` cannot be read as RFC 3339 or epoch milliseconds.
    InvalidTimestamp,
    /// `ts` has no UTC offset (the pipeline never guesses a time zone).
    TimestampWithoutOffset,
    /// `ts` is before `validation.earliest` (often seconds sent as milliseconds).
    TimestampTooOld,
    /// `ts` is further ahead of the wall clock than `validation.max_future`.
    FutureTimestamp,
    /// `seq` is not a non-negative integer.
    InvalidSeq,
    /// A heartbeat's `status` is neither `ok` nor `fault`.
    InvalidStatus,
    /// A heartbeat's `code` is longer than allowed.
    CodeTooLong,
    /// A field of the other kind: a heartbeat with `count`/`direction`, or a count with `status`.
    FieldNotAllowed,
    /// A Kafka record without a value (a tombstone): nothing to count.
    Tombstone,
    /// A Kafka record whose key (the sensor id) is not valid UTF-8.
    InvalidKey,
}

impl Reason {
    pub const ALL: [Reason; 23] = [
        Reason::Empty,
        Reason::TooLarge,
        Reason::InvalidUtf8,
        Reason::InvalidJson,
        Reason::NotAnObject,
        Reason::DuplicateField,
        Reason::MissingField,
        Reason::WrongType,
        Reason::UnknownSensor,
        Reason::UnknownDirection,
        Reason::InvalidKind,
        Reason::InvalidCount,
        Reason::CountTooLarge,
        Reason::InvalidTimestamp,
        Reason::TimestampWithoutOffset,
        Reason::TimestampTooOld,
        Reason::FutureTimestamp,
        Reason::InvalidSeq,
        Reason::InvalidStatus,
        Reason::CodeTooLong,
        Reason::FieldNotAllowed,
        Reason::Tombstone,
        Reason::InvalidKey,
    ];

    /// The stable code stored in the quarantine table's `reason` column.
    pub fn code(self) -> &'static str {
        match self {
            Reason::Empty => "empty",
            Reason::TooLarge => "too_large",
            Reason::InvalidUtf8 => "invalid_utf8",
            Reason::InvalidJson => "invalid_json",
            Reason::NotAnObject => "not_an_object",
            Reason::DuplicateField => "duplicate_field",
            Reason::MissingField => "missing_field",
            Reason::WrongType => "wrong_type",
            Reason::UnknownSensor => "unknown_sensor",
            Reason::UnknownDirection => "unknown_direction",
            Reason::InvalidKind => "invalid_kind",
            Reason::InvalidCount => "invalid_count",
            Reason::CountTooLarge => "count_too_large",
            Reason::InvalidTimestamp => "invalid_timestamp",
            Reason::TimestampWithoutOffset => "timestamp_without_offset",
            Reason::TimestampTooOld => "timestamp_too_old",
            Reason::FutureTimestamp => "future_timestamp",
            Reason::InvalidSeq => "invalid_seq",
            Reason::InvalidStatus => "invalid_status",
            Reason::CodeTooLong => "code_too_long",
            Reason::FieldNotAllowed => "field_not_allowed",
            Reason::Tombstone => "tombstone",
            Reason::InvalidKey => "invalid_key",
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

/// A rejected message: the reason code and a human explanation naming the field and value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub reason: Reason,
    pub detail: String,
}

impl Rejection {
    pub fn new(reason: Reason, detail: impl Into<String>) -> Self {
        Rejection {
            reason,
            detail: detail.into(),
        }
    }
}
