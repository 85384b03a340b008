//! Criterion bench of the hot path: decode + validate one JSON line, and decode + window.
//!
//! Run: `cargo bench --bench decode_window`. Results and the machine they came from: BENCHMARKS.md.

use std::hint::black_box;
use std::sync::Arc;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use jinryu::event::Decoder;
use jinryu::simulate::load;
use jinryu::window::WindowStage;
use jinryu::window::dedup::{Dedup, Seen};

const LINES: u64 = 100_000;
const START_MS: i64 = 1_793_545_200_000; // 2026-11-02T00:00:00+09:00

fn input() -> (jinryu::config::Config, Vec<Vec<u8>>) {
    let cfg = load::config(1000, "memory://");
    let mut buf = Vec::new();
    load::write_events(&mut buf, &cfg, LINES, START_MS).expect("generate");
    let lines = buf
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .map(<[u8]>::to_vec)
        .collect();
    (cfg, lines)
}

fn bench(c: &mut Criterion) {
    let (cfg, lines) = input();
    let registry = Arc::new(cfg.registry.clone());
    let decoder = Decoder::new(registry.clone(), cfg.limits.clone());
    let now = START_MS + 86_400_000;
    let mut g = c.benchmark_group("pipeline");
    g.throughput(Throughput::Elements(LINES));
    g.bench_function("decode", |b| {
        b.iter(|| {
            for l in &lines {
                black_box(decoder.decode(black_box(l), now).is_ok());
            }
        })
    });
    g.bench_function("decode+window", |b| {
        b.iter(|| {
            let mut stage = WindowStage::new(cfg.window.clone(), registry.clone());
            let mut rows = Vec::new();
            for l in &lines {
                if let Ok(ev) = decoder.decode(l, now) {
                    stage.push(&ev);
                    if stage.has_final() {
                        stage.emit_final(&mut rows);
                    }
                }
            }
            stage.flush_all(&mut rows);
            black_box(rows.len())
        })
    });
    g.finish();

    // Retry memory of one sensor in one window: numbers in order (one range) against distinct
    // numbers in random order (the issue #11 attack: quadratic before the interval set).
    let n = 200_000u64;
    let mut g = c.benchmark_group("dedup");
    g.throughput(Throughput::Elements(n));
    g.sample_size(10);
    let sequential: Vec<u64> = (0..n).collect();
    let random: Vec<u64> = (0..n)
        .map(|i| i.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 20)
        .collect();
    for (name, seqs) in [("sequential", &sequential), ("random", &random)] {
        g.bench_function(name, |b| {
            b.iter(|| {
                let mut d = Dedup::default();
                let mut new = 0u64;
                for &s in seqs {
                    new += u64::from(d.first_time(0, 0, s) != Seen::Retry);
                }
                black_box(new)
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
