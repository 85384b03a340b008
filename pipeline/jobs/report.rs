//! The monthly HTML report: one self-contained file beside the CSV (inline SVG charts drawn with
//! `plotters`, no scripts, no fonts or files from the internet). It shows daily totals per array
//! and direction, a weekday × time-of-day heat map, data coverage per sensor and the month's alerts.

use std::collections::BTreeMap;

use chrono::{Datelike, Timelike};
use plotters::prelude::*;

use super::format::{Cell, MonthGrid};
use super::monthly::MonthlyOutput;

type DrawResult<T> = Result<T, String>;

fn err<E: std::fmt::Debug>(e: E) -> String {
    format!("drawing the report failed: {e:?}")
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// Measured or estimated people of a cell.
fn people(c: Cell) -> Option<u64> {
    match c {
        Cell::Ok(n) | Cell::Estimated(n) => Some(n),
        _ => None,
    }
}

/// Daily totals per (array, direction), as an SVG line chart. A day on which any open window of
/// the group is missing has no point (a gap in the line), never a zero.
fn daily_chart(grid: &MonthGrid) -> DrawResult<String> {
    let n = grid.series.len();
    let days = grid.windows.iter().map(|w| w.date.day()).max().unwrap_or(1);
    let mut totals: BTreeMap<(String, String), Vec<Option<u64>>> = BTreeMap::new();
    for (wi, w) in grid.windows.iter().enumerate() {
        for (si, s) in grid.series.iter().enumerate() {
            let v = totals
                .entry((s.array.clone(), s.direction.clone()))
                .or_insert_with(|| vec![Some(0); days as usize]);
            let day = &mut v[(w.date.day() - 1) as usize];
            match grid.cells[wi * n + si] {
                Cell::Closed => {}
                Cell::Missing => *day = None,
                c => *day = day.map(|d| d + people(c).unwrap_or(0)),
            }
        }
    }
    let max = totals
        .values()
        .flatten()
        .flatten()
        .copied()
        .max()
        .unwrap_or(1)
        .max(1);
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (960, 360)).into_drawing_area();
        root.fill(&WHITE).map_err(err)?;
        let mut chart = ChartBuilder::on(&root)
            .margin(16)
            .x_label_area_size(36)
            .y_label_area_size(70)
            .build_cartesian_2d(1u32..days, 0u64..max + max / 10)
            .map_err(err)?;
        chart
            .configure_mesh()
            .x_desc("day of month (gaps: days with missing windows)")
            .y_desc("people per day")
            .draw()
            .map_err(err)?;
        for (i, ((array, dir), v)) in totals.iter().enumerate() {
            let color = Palette99::pick(i).to_rgba();
            // One line per run of complete days; a lone complete day is a dot.
            let mut runs: Vec<Vec<(u32, u64)>> = vec![Vec::new()];
            for (d, p) in v.iter().enumerate() {
                match p {
                    Some(p) => runs.last_mut().expect("a run").push((d as u32 + 1, *p)),
                    None => runs.push(Vec::new()),
                }
            }
            for run in runs.iter().filter(|r| r.len() == 1) {
                chart
                    .draw_series(run.iter().map(|p| Circle::new(*p, 3, color.filled())))
                    .map_err(err)?;
            }
            let mut labelled = false;
            for run in runs.into_iter().filter(|r| r.len() > 1) {
                let drawn = chart
                    .draw_series(LineSeries::new(run, color.stroke_width(2)))
                    .map_err(err)?;
                if !labelled {
                    drawn.label(format!("{array} {dir}")).legend(move |(x, y)| {
                        PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2))
                    });
                    labelled = true;
                }
            }
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .position(SeriesLabelPosition::LowerRight)
            .draw()
            .map_err(err)?;
        root.present().map_err(err)?;
    }
    Ok(svg)
}

/// Average people per window by weekday and time of day, as an SVG heat map.
fn heat_map(grid: &MonthGrid) -> DrawResult<String> {
    let n = grid.series.len();
    let slots_per_day = grid
        .windows
        .first()
        .map(|w| {
            let len = (w.end - w.start).num_minutes().rem_euclid(1440);
            (1440 / if len == 0 { 1440 } else { len }) as usize
        })
        .unwrap_or(96);
    let mut sum = vec![vec![0u64; slots_per_day]; 7];
    let mut cnt = vec![vec![0u64; slots_per_day]; 7];
    for (wi, w) in grid.windows.iter().enumerate() {
        let wd = w.date.weekday().num_days_from_monday() as usize;
        let slot = ((w.start.hour() * 60 + w.start.minute()) as usize * slots_per_day) / 1440;
        let cells: Vec<Cell> = (0..n).map(|s| grid.cells[wi * n + s]).collect();
        if cells.iter().all(|c| people(*c).is_some()) {
            sum[wd][slot] += cells.iter().filter_map(|c| people(*c)).sum::<u64>();
            cnt[wd][slot] += 1;
        }
    }
    let avg: Vec<Vec<Option<f64>>> = (0..7)
        .map(|d| {
            (0..slots_per_day)
                .map(|s| (cnt[d][s] > 0).then(|| sum[d][s] as f64 / cnt[d][s] as f64))
                .collect()
        })
        .collect();
    let max = avg
        .iter()
        .flatten()
        .flatten()
        .copied()
        .fold(1.0f64, f64::max);
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (960, 300)).into_drawing_area();
        root.fill(&WHITE).map_err(err)?;
        let mut chart = ChartBuilder::on(&root)
            .margin(16)
            .x_label_area_size(36)
            .y_label_area_size(50)
            .build_cartesian_2d(0f64..24f64, (0u32..7u32).into_segmented())
            .map_err(err)?;
        let names = ["Sun", "Sat", "Fri", "Thu", "Wed", "Tue", "Mon"];
        chart
            .configure_mesh()
            .disable_mesh()
            .x_desc("local time of day")
            .x_labels(13)
            .y_labels(7)
            .y_label_formatter(&|y| match y {
                SegmentValue::CenterOf(i) | SegmentValue::Exact(i) => {
                    names.get(*i as usize).unwrap_or(&"").to_string()
                }
                SegmentValue::Last => String::new(),
            })
            .draw()
            .map_err(err)?;
        let width = 24.0 / slots_per_day as f64;
        chart
            .draw_series(avg.iter().enumerate().flat_map(|(d, row)| {
                row.iter().enumerate().map(move |(s, v)| {
                    let x = s as f64 * width;
                    let y = 6 - d as u32; // Monday on top
                    let color = match v {
                        Some(v) => {
                            let t = (v / max).clamp(0.0, 1.0);
                            RGBColor(
                                (255.0 - 200.0 * t) as u8,
                                (255.0 - 120.0 * t) as u8,
                                (255.0 - 30.0 * t) as u8,
                            )
                        }
                        None => RGBColor(225, 225, 225),
                    };
                    Rectangle::new(
                        [
                            (x, SegmentValue::Exact(y)),
                            (x + width, SegmentValue::Exact(y + 1)),
                        ],
                        color.filled(),
                    )
                })
            }))
            .map_err(err)?;
        root.present().map_err(err)?;
    }
    Ok(svg)
}

/// The whole report as one HTML document.
pub fn html(
    grid: &MonthGrid,
    out: &MonthlyOutput,
    facility: &str,
    alerts: &[crate::alerts::Alert],
) -> DrawResult<String> {
    let mut alert_rows = String::new();
    for a in alerts {
        alert_rows.push_str(&format!(
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>\n",
            escape(&a.severity),
            escape(&a.kind),
            escape(a.sensor_id.as_deref().unwrap_or("-")),
            escape(&a.start),
            escape(&a.end),
            escape(&a.status),
            escape(a.evidence["detail"].as_str().unwrap_or(""))
        ));
    }
    let alerts_html = if alerts.is_empty() {
        format!(
            "<p>No alerts stored for this month (run <code>jinryu check --from {:04}-{:02}-01</code> to check it).</p>",
            grid.year, grid.month
        )
    } else {
        format!(
            "<table><tr><th>severity</th><th>kind</th><th>sensor</th><th>start</th><th>end</th><th>status</th><th>evidence</th></tr>\n{alert_rows}</table>"
        )
    };
    let daily = daily_chart(grid)?;
    let heat = heat_map(grid)?;
    let mut coverage = String::new();
    for (s, c) in grid.series.iter().zip(grid.coverage()) {
        let pct = c.percent();
        coverage.push_str(&format!(
            "<tr><td>{}</td><td>{}</td><td>{}</td><td class=n>{}</td><td class=n>{}</td><td class=n>{}</td><td class=n>{}</td>\
             <td><div class=bar><div style=\"width:{pct:.1}%\"></div></div> {pct:.1} %</td></tr>\n",
            escape(&s.sensor_id),
            escape(&s.array),
            escape(&s.direction),
            c.open,
            c.measured,
            c.estimated,
            c.missing
        ));
    }
    Ok(format!(
        r#"<!DOCTYPE html>
<html lang="ja"><head><meta charset="utf-8">
<title>{facility} {year:04}-{month:02} — jinryu monthly report</title>
<style>
body {{ font-family: sans-serif; margin: 24px; color: #222; max-width: 1000px; }}
h1 {{ font-size: 22px; }} h2 {{ font-size: 17px; margin-top: 28px; border-bottom: 1px solid #ccc; }}
table {{ border-collapse: collapse; font-size: 13px; }} td, th {{ padding: 3px 8px; border-bottom: 1px solid #eee; text-align: left; }}
td.n {{ text-align: right; }} .bar {{ display: inline-block; width: 120px; height: 10px; background: #eee; vertical-align: middle; }}
.bar div {{ height: 10px; background: #3a7bd5; }} .meta {{ font-size: 13px; color: #555; }}
</style></head><body>
<h1>{facility} — {year:04}-{month:02}</h1>
<p class=meta>Deliverable <code>{file}</code> (sha256 <code>{sha}</code>), due {due}{prov}.<br>
Cells (sensor × direction × window): {rows} — measured {ok}, estimated {est}, missing {missing}, closed {closed}. People measured: {people}.</p>
<h2>Daily totals per array and direction</h2>
{daily}
<h2>Average people per window: weekday × time of day</h2>
<p class=meta>All sensors together; grey: closed or incomplete.</p>
{heat}
<h2>Data coverage per sensor</h2>
<table><tr><th>sensor</th><th>array</th><th>direction</th><th>open windows</th><th>measured</th><th>estimated</th><th>missing</th><th>coverage</th></tr>
{coverage}</table>
<h2>Alerts of the month</h2>
{alerts_html}
</body></html>
"#,
        facility = escape(facility),
        year = grid.year,
        month = grid.month,
        file = escape(
            &out.csv
                .file_name()
                .map(|f| f.to_string_lossy().to_string())
                .unwrap_or_default()
        ),
        sha = out.sha256,
        due = out.due,
        prov = if out.due_provisional {
            " (provisional)"
        } else {
            ""
        },
        rows = out.rows,
        ok = out.ok,
        est = out.estimated,
        missing = out.missing,
        closed = out.closed,
        people = out.people,
    ))
}
