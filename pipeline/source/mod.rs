//! Stage 0 — sources: JSON lines from a file or stdin ([`file`]), records from Kafka ([`kafka`]).

pub mod file;
pub mod kafka;
