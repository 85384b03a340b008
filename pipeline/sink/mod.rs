//! Stage 3 — the sink: aggregate rows and quarantine records become Parquet objects on object
//! storage ([`store`]), in the layout of `schemas/` ([`tables`]), written so that a replay replaces
//! rather than duplicates: [`writer`] for file input, [`checkpoint`] for Kafka partitions (where the
//! checkpoint also carries the window state). The sink knows rows, not windows or Kafka.

pub mod checkpoint;
pub mod delta;
pub mod lifecycle;
pub mod store;
pub mod tables;
pub mod writer;
