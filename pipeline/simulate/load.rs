//! Synthetic load for benchmarks and scale tests: many sensors, a steady stream, realistic lines.

use std::io::Write;

use crate::config::Config;

/// A configuration with `sensors` sensors (`S0000`…), 10 per array, directions north/south.
pub fn config(sensors: usize, storage_url: &str) -> Config {
    Config::parse(&config_toml(sensors, storage_url), "synthetic")
        .expect("synthetic config is valid")
}

/// The text of [`config`] (for a benchmark that runs the binary with it).
pub fn config_toml(sensors: usize, storage_url: &str) -> String {
    let mut toml = format!(
        "timezone = \"Asia/Tokyo\"\n[storage]\nurl = \"{storage_url}\"\n[facility]\nclosed = [\"00:46-05:44\"]\n"
    );
    for i in 0..sensors {
        toml.push_str(&format!(
            "[[sensors]]\nid = \"S{i:04}\"\narray = \"A{:03}\"\ndirections = [\"north\", \"south\"]\n",
            i / 10
        ));
    }
    toml
}

/// One day in milliseconds.
pub const DAY_MS: i64 = 86_400_000;

/// Writes `events` JSON lines spread evenly over one day from `start_ms`, sensors in turn:
/// count messages with `seq`, and an `ok` heartbeat in place of every 100th message.
pub fn write_events<W: Write>(
    w: W,
    cfg: &Config,
    events: u64,
    start_ms: i64,
) -> std::io::Result<()> {
    write_events_over(w, cfg, events, start_ms, 1)
}

/// [`write_events`] spread evenly over `days` days: the same number of lines touches `days` times
/// as many windows (the many-window case of a backlog or a month replayed).
pub fn write_events_over<W: Write>(
    mut w: W,
    cfg: &Config,
    events: u64,
    start_ms: i64,
    days: u32,
) -> std::io::Result<()> {
    let n = cfg.registry.len() as u64;
    let step_us = (DAY_MS as u64 * 1000 * u64::from(days.max(1))) / events.max(1);
    let mut seq = vec![0u64; n as usize];
    let mut line = String::with_capacity(160);
    for k in 0..events {
        let s = (k % n) as usize;
        let ts = start_ms + (k * step_us / 1000) as i64;
        let id = &cfg.registry.sensors()[s].id;
        let t = cfg.window.local(ts).format("%Y-%m-%dT%H:%M:%S%.3f%:z");
        line.clear();
        if k % 100 == 99 {
            use std::fmt::Write as _;
            let _ = write!(
                line,
                r#"{{"sensor_id":"{id}","ts":"{t}","kind":"heartbeat","status":"ok"}}"#
            );
        } else {
            use std::fmt::Write as _;
            seq[s] += 1;
            let dir = if (k / n).is_multiple_of(2) {
                "north"
            } else {
                "south"
            };
            let _ = write!(
                line,
                r#"{{"sensor_id":"{id}","ts":"{t}","direction":"{dir}","count":1,"seq":{}}}"#,
                seq[s]
            );
        }
        line.push('\n');
        w.write_all(line.as_bytes())?;
    }
    w.flush()
}
