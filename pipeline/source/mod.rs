//! Stage 0 — sources: where messages come from, with their position (file line; later Kafka
//! partition and offset). A source yields decoded items in input order and knows nothing of windows.

pub mod file;
