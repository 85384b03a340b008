//! jinryu (人流, "people flow"): pedestrian-counter events → exact 15-minute aggregates in Delta
//! Lake tables → the monthly CSV deliverable.
//!
//! The modules follow an event's path:
//!
//! ```text
//! source/   JSON lines (file, stdin, simulator) cut into chunks, decoded in parallel, in order;
//!           Kafka records (the service) with their key, value, partition and offset
//! event/    decode + validate against schemas/sensor-event.schema.json → Event | Rejection
//! quarantine.rs   rejected messages with reason, position and payload head
//! window/   dedup of retries, event-time tumbling windows, watermark, late rows, liveness
//! sink/     rows → Arrow → Delta Lake tables on object storage: data files and each writer's
//!           progress (txn) in one commit, fenced; window state objects; compaction, vacuum
//! jobs/     DataFusion SQL over the stored tables (sql/*.sql): flow_15min, the monthly deliverable,
//!           the data-quality checks (sql/checks/*.sql)
//! alerts/   checks' incidents → alerts with stable ids and state → stdout, log file, webhook
//! driver.rs the one loop both inputs share: admit, quarantine, emit final and late rows, seal
//!           epochs; the Kafka partition's clock rules
//! ingest.rs one run of the pipeline with its accounting; demo.rs and simulate/ the embedded default
//! service/  `jinryu run`: the Kafka consumer group, clocks, commits, /healthz and /metrics
//! ```
//!
//! `config.rs` is read once at start and hands each stage its typed settings.

pub mod alerts;
pub mod calendar;
pub mod config;
pub mod demo;
pub mod driver;
pub mod event;
pub mod ingest;
pub mod jobs;
pub mod quarantine;
pub mod service;
pub mod simulate;
pub mod sink;
pub mod source;
pub mod window;
