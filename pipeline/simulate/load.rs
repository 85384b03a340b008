//! Synthetic load for benchmarks and scale tests: many sensors, a steady stream, realistic lines.

use std::io::Write;

use crate::config::Config;

/// A configuration with `sensors` sensors (`S0000`…), 10 per array, directions north/south.
pub fn config(sensors: usize, storage_url: &str) -> Config {
    let mut toml = format!(
        "timezone = \"Asia/Tokyo\"\n[storage]\nurl = \"{storage_url}\"\n[facility]\nclosed = [\"00:46-05:44\"]\n"
    );
    for i in 0..sensors {
        toml.push_str(&format!(
            "[[sensors]]\nid = \"S{i:04}\"\narray = \"A{:03}\"\ndirections = [\"north\", \"south\"]\n",
            i / 10
        ));
    }
    Config::parse(&toml, "synthetic").expect("synthetic config is valid")
}

/// Writes `events` JSON lines spread evenly over one day from `start_ms`, sensors in turn:
/// count messages with `seq`, and an `ok` heartbeat in place of every 100th message.
pub fn write_events<W: Write>(
    mut w: W,
    cfg: &Config,
    events: u64,
    start_ms: i64,
) -> std::io::Result<()> {
    let n = cfg.registry.len() as u64;
    let step_us = 86_400_000_000 / events.max(1);
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
