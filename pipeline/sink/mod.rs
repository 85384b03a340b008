//! Stage 3 — the sink: aggregate rows and quarantine records become rows of two Delta Lake tables
//! on object storage ([`store`], [`delta`]) with the columns of `schemas/` ([`tables`]). Each
//! writer commits its files together with its progress, so a replay replaces rather than
//! duplicates and a stale writer is fenced: [`writer`] for a file run, [`checkpoint`] for a Kafka
//! partition (whose state object also carries the window state). [`lifecycle`] compacts, vacuums
//! and expires. The sink knows rows, not windows or Kafka.

pub mod checkpoint;
pub mod delta;
pub mod lifecycle;
pub mod store;
pub mod tables;
pub mod writer;
