//! The monthly HTML report: one self-contained file beside the CSV (inline SVG charts drawn with
//! `plotters`, no scripts, no fonts or files from the internet), and the source of the PDF the
//! client files ([`super::pdf`]). In Japanese (`[report] language = "ja"`, the default) or English.
//! It shows data coverage per sensor, daily totals per array and direction, a weekday ×
//! time-of-day heat map with its colour scale, the month's alerts and fault reports, the
//! obligations with when each was met, and the pipeline's availability. Laid out for A4 landscape
//! print (`@page`), in a font stack that finds the IPA Gothic font (Debian's
//! `fonts-ipafont-gothic`).

use std::collections::BTreeMap;

use chrono::{Datelike, Timelike};
use plotters::prelude::*;

use super::format::{Cell, MonthGrid};
use super::monthly::MonthlyOutput;
// The kinds that are faults to report (the list `jinryu faults` drafts reports for).
use crate::alerts::faults::FAULT_KINDS;
use crate::config::Language;

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

/// One duty with a due date, as the report lists it (the caller supplies them: the month's CSV,
/// the report itself, fault reports, ...).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObligationRow {
    /// What is due (shown as given).
    pub what: String,
    pub due: chrono::NaiveDate,
    /// `open`, `delivered`, `overdue` (shown translated), or any other text (shown as given).
    pub status: String,
    /// When it was met (e.g. the delivery time), if it was.
    pub met_at: Option<String>,
}

/// What the report shows besides the month's cells.
#[derive(Debug, Clone, Copy)]
pub struct ReportInput<'a> {
    /// `facility.name`.
    pub facility: &'a str,
    /// `[report] language`.
    pub language: Language,
    /// The month's stored alerts (sensor checks and pipeline alerts).
    pub alerts: &'a [crate::alerts::Alert],
    /// The month's obligations and when each was met.
    pub obligations: &'a [ObligationRow],
    /// Share (0.0–1.0) of the month the pipeline was available, from the jobs' records; `None`:
    /// no record.
    pub availability: Option<f64>,
}

/// Alert kinds with their Japanese and English names: the data checks
/// ([`super::checks::CHECKS`]) and the pipeline's own alerts.
const KINDS: [(&str, &str, &str); 16] = [
    ("sensor_offline", "センサー停止", "sensor offline"),
    (
        "silent_but_alive",
        "計数なし（通信は正常）",
        "silent but alive",
    ),
    ("stuck_count", "計数値の固着", "counter stuck"),
    (
        "direction_dead",
        "片方向の計数停止",
        "one direction not counting",
    ),
    (
        "implausible_level",
        "計数値の異常",
        "implausible count level",
    ),
    (
        "array_share_drift",
        "アレイ内比率の変化",
        "share of its array drifted",
    ),
    (
        "clock_skew",
        "ゲートウェイ時刻のずれ",
        "gateway clock wrong",
    ),
    ("late_rate", "データ遅延到着の増加", "late deliveries"),
    (
        "quarantine_rate",
        "不正メッセージの増加",
        "many messages quarantined",
    ),
    ("pipeline_stalled", "処理の停滞", "pipeline stalled"),
    (
        "consumer_lag_growing",
        "受信遅延の増大",
        "consumer lag growing",
    ),
    (
        "partition_stopped",
        "パーティション処理停止",
        "partition stopped",
    ),
    ("obligation_overdue", "提出期限の超過", "obligation overdue"),
    (
        "obligation_due_soon",
        "提出期限の前日",
        "obligation due soon",
    ),
    ("job_failed", "定期処理の失敗", "job failed"),
    (
        "deliverable_revised",
        "納品データの改訂",
        "deliverable revised",
    ),
];

fn ja(lang: Language) -> bool {
    lang == Language::Ja
}

/// The text for the report's language.
fn tr(lang: Language, ja_text: &'static str, en_text: &'static str) -> &'static str {
    if ja(lang) { ja_text } else { en_text }
}

/// An alert kind's name in the report's language (the code itself when unknown).
fn kind_label(lang: Language, code: &str) -> String {
    KINDS
        .iter()
        .find(|k| k.0 == code)
        .map(|k| tr(lang, k.1, k.2).to_string())
        .unwrap_or_else(|| code.to_string())
}

fn severity_label(lang: Language, s: &str) -> String {
    match s {
        "critical" => tr(lang, "重大", "critical").to_string(),
        "warning" => tr(lang, "警告", "warning").to_string(),
        "info" => tr(lang, "情報", "info").to_string(),
        other => other.to_string(),
    }
}

fn alert_status_label(lang: Language, s: &str) -> String {
    match s {
        "open" => tr(lang, "継続中", "open").to_string(),
        "resolved" => tr(lang, "解消", "resolved").to_string(),
        other => other.to_string(),
    }
}

fn obligation_status_label(lang: Language, s: &str) -> String {
    match s {
        "open" => tr(lang, "未提出", "open").to_string(),
        "delivered" => tr(lang, "提出済", "delivered").to_string(),
        "overdue" => tr(lang, "期限超過", "overdue").to_string(),
        other => other.to_string(),
    }
}

/// `2026-10-07T10:00:00+09:00` → `2026-10-07 10:00` (local time as stored); other text as is.
fn local_time(rfc3339: &str) -> String {
    chrono::DateTime::parse_from_rfc3339(rfc3339)
        .map(|t| t.format("%Y-%m-%d %H:%M").to_string())
        .unwrap_or_else(|_| rfc3339.to_string())
}

/// A date in the report's language: `2026年11月6日` or `2026-11-06`.
fn date_label(lang: Language, d: chrono::NaiveDate) -> String {
    if ja(lang) {
        format!("{}年{}月{}日", d.year(), d.month(), d.day())
    } else {
        d.to_string()
    }
}

/// Colour of a heat-map cell: white (the month's lowest average) to blue (its highest).
fn heat_colour(t: f64) -> RGBColor {
    let t = t.clamp(0.0, 1.0);
    RGBColor(
        (255.0 - 200.0 * t) as u8,
        (255.0 - 120.0 * t) as u8,
        (255.0 - 30.0 * t) as u8,
    )
}

/// Grey: a weekday × time slot without a complete window.
const NO_DATA: RGBColor = RGBColor(225, 225, 225);

/// Daily totals per (array, direction), as an SVG line chart. A day on which any open window of
/// the group is missing has no point (a gap in the line), never a zero.
fn daily_chart(grid: &MonthGrid, lang: Language) -> DrawResult<String> {
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
            .x_desc(tr(
                lang,
                "日（線の途切れ: 欠測のある日）",
                "day of month (gaps: days with missing windows)",
            ))
            .y_desc(tr(lang, "1日の通行人数", "people per day"))
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

/// Average people per window by weekday and time of day, as an SVG heat map, with its colour
/// scale (the month's lowest and highest average at the ends, grey: no complete window).
fn heat_map(grid: &MonthGrid, lang: Language) -> DrawResult<String> {
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
    let values: Vec<f64> = avg.iter().flatten().flatten().copied().collect();
    let lo = values.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let (lo, hi) = if values.is_empty() {
        (0.0, 1.0)
    } else {
        (lo, hi)
    };
    let span = if hi > lo { hi - lo } else { 1.0 };
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (960, 320)).into_drawing_area();
        root.fill(&WHITE).map_err(err)?;
        let (plot, scale) = root.split_horizontally(820);
        let mut chart = ChartBuilder::on(&plot)
            .margin(16)
            .x_label_area_size(36)
            .y_label_area_size(50)
            .build_cartesian_2d(0f64..24f64, (0u32..7u32).into_segmented())
            .map_err(err)?;
        // Bottom to top (Monday on top).
        let names: [&str; 7] = if ja(lang) {
            ["日", "土", "金", "木", "水", "火", "月"]
        } else {
            ["Sun", "Sat", "Fri", "Thu", "Wed", "Tue", "Mon"]
        };
        chart
            .configure_mesh()
            .disable_mesh()
            .x_desc(tr(lang, "時刻（現地時間）", "local time of day"))
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
                        Some(v) => heat_colour((v - lo) / span),
                        None => NO_DATA,
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

        // The colour scale: a vertical bar from the highest average (top) to the lowest.
        let (bx, top, bottom) = (14i32, 44i32, 234i32);
        let steps = 48i32;
        let font = ("sans-serif", 14).into_font();
        scale
            .draw(&Text::new(
                tr(lang, "平均人数/枠", "people/window").to_string(),
                (2, 16),
                font.clone(),
            ))
            .map_err(err)?;
        for i in 0..steps {
            let y0 = top + (bottom - top) * i / steps;
            let y1 = top + (bottom - top) * (i + 1) / steps;
            let t = 1.0 - (i as f64 + 0.5) / steps as f64;
            scale
                .draw(&Rectangle::new(
                    [(bx, y0), (bx + 22, y1)],
                    heat_colour(t).filled(),
                ))
                .map_err(err)?;
        }
        scale
            .draw(&Rectangle::new(
                [(bx, top), (bx + 22, bottom)],
                BLACK.stroke_width(1),
            ))
            .map_err(err)?;
        for (y, v) in [
            (top, hi),
            ((top + bottom) / 2, (lo + hi) / 2.0),
            (bottom, lo),
        ] {
            scale
                .draw(&PathElement::new(vec![(bx + 22, y), (bx + 27, y)], BLACK))
                .map_err(err)?;
            scale
                .draw(&Text::new(
                    format!("{v:.1}"),
                    (bx + 31, y - 7),
                    font.clone(),
                ))
                .map_err(err)?;
        }
        let (hi_label, lo_label) = if ja(lang) {
            ("最大", "最小")
        } else {
            ("max", "min")
        };
        scale
            .draw(&Text::new(
                hi_label.to_string(),
                (bx + 31, top + 10),
                font.clone(),
            ))
            .map_err(err)?;
        scale
            .draw(&Text::new(
                lo_label.to_string(),
                (bx + 31, bottom - 24),
                font.clone(),
            ))
            .map_err(err)?;
        scale
            .draw(&Rectangle::new(
                [(bx, 256), (bx + 22, 272)],
                NO_DATA.filled(),
            ))
            .map_err(err)?;
        scale
            .draw(&Rectangle::new(
                [(bx, 256), (bx + 22, 272)],
                BLACK.stroke_width(1),
            ))
            .map_err(err)?;
        scale
            .draw(&Text::new(
                tr(lang, "データなし", "no data").to_string(),
                (bx + 31, 257),
                font.clone(),
            ))
            .map_err(err)?;
        root.present().map_err(err)?;
    }
    Ok(svg)
}

/// `<td>` cells of one table row, escaped.
fn row(cells: &[&str]) -> String {
    let mut r = String::from("<tr>");
    for c in cells {
        r.push_str("<td>");
        r.push_str(&escape(c));
        r.push_str("</td>");
    }
    r.push_str("</tr>\n");
    r
}

/// A table head.
fn head(cells: &[&str]) -> String {
    let mut r = String::from("<thead><tr>");
    for c in cells {
        r.push_str("<th>");
        r.push_str(&escape(c));
        r.push_str("</th>");
    }
    r.push_str("</tr></thead>\n");
    r
}

/// The month's alerts, one row each: the kind's name and its code in separate cells.
fn alerts_section(lang: Language, grid: &MonthGrid, alerts: &[crate::alerts::Alert]) -> String {
    if alerts.is_empty() {
        return if ja(lang) {
            format!(
                "<p>この月のアラートは記録されていません（確認するには <code>jinryu check --from {:04}-{:02}-01</code> を実行してください）。</p>",
                grid.year, grid.month
            )
        } else {
            format!(
                "<p>No alerts stored for this month (run <code>jinryu check --from {:04}-{:02}-01</code> to check it).</p>",
                grid.year, grid.month
            )
        };
    }
    let mut sorted: Vec<&crate::alerts::Alert> = alerts.iter().collect();
    sorted.sort_by(|a, b| {
        (a.start_ms, &a.sensor_id, &a.kind).cmp(&(b.start_ms, &b.sensor_id, &b.kind))
    });
    let mut t = String::from("<table>");
    t.push_str(&head(&[
        tr(lang, "重大度", "severity"),
        tr(lang, "種別", "kind"),
        tr(lang, "コード", "code"),
        tr(lang, "センサー", "sensor"),
        tr(lang, "開始", "start"),
        tr(lang, "終了", "end"),
        tr(lang, "状態", "status"),
        tr(lang, "内容", "evidence"),
    ]));
    t.push_str("<tbody>\n");
    for a in sorted {
        t.push_str(&row(&[
            &severity_label(lang, &a.severity),
            &kind_label(lang, &a.kind),
            &a.kind,
            a.sensor_id.as_deref().unwrap_or("-"),
            &local_time(&a.start),
            &local_time(&a.end),
            &alert_status_label(lang, &a.status),
            a.evidence["detail"].as_str().unwrap_or(""),
        ]));
    }
    t.push_str("</tbody></table>");
    t
}

/// Fault-report drafts: one per fault-kind alert, due the next business day after it began.
fn faults_section(lang: Language, alerts: &[crate::alerts::Alert]) -> String {
    let mut faults: Vec<&crate::alerts::Alert> = alerts
        .iter()
        .filter(|a| FAULT_KINDS.contains(&a.kind.as_str()))
        .collect();
    faults.sort_by(|a, b| (a.start_ms, &a.sensor_id).cmp(&(b.start_ms, &b.sensor_id)));
    if faults.is_empty() {
        return format!(
            "<p>{}</p>",
            tr(
                lang,
                "この月に報告すべき障害はありません。",
                "No faults to report this month."
            )
        );
    }
    let mut t = format!(
        "<p class=meta>{}</p><table>",
        tr(
            lang,
            "障害報告書の下書き（作業者・原因・対応は担当者が記入）: jinryu faults --month で CSV と Markdown に出力されます。報告期限は障害発生日の翌営業日です。",
            "Fault-report drafts (worker, cause and action taken are filled in by a person): jinryu faults --month writes them as CSV and Markdown. Each report is due the next business day after the fault."
        )
    );
    t.push_str(&head(&[
        tr(lang, "発生日時", "occurred"),
        tr(lang, "事象", "what happened"),
        tr(lang, "センサー", "sensor"),
        tr(lang, "継続時間", "duration"),
        tr(lang, "報告期限", "report due"),
        tr(lang, "状態", "status"),
    ]));
    t.push_str("<tbody>\n");
    for a in faults {
        let minutes = (a.end_ms - a.start_ms).max(0) / 60_000;
        let duration = if ja(lang) {
            format!("{}時間{:02}分", minutes / 60, minutes % 60)
        } else {
            format!("{}h{:02}m", minutes / 60, minutes % 60)
        };
        let due = chrono::DateTime::parse_from_rfc3339(&a.start)
            .map(|start| date_label(lang, crate::calendar::fault_report_due(start.date_naive())))
            .unwrap_or_else(|_| "-".to_string());
        let status = if a.status == "open" {
            tr(lang, "継続中", "continuing")
        } else {
            tr(lang, "終了", "ended")
        };
        // The kind's name with its code (not a cell of its own: the alert table has that).
        t.push_str(&format!(
            "<tr><td>{}</td><td>{} <span class=code>({})</span></td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>\n",
            escape(&local_time(&a.start)),
            escape(&kind_label(lang, &a.kind)),
            escape(&a.kind),
            escape(a.sensor_id.as_deref().unwrap_or("-")),
            escape(&duration),
            escape(&due),
            escape(status),
        ));
    }
    t.push_str("</tbody></table>");
    t
}

/// Obligations with their due dates, status and when each was met.
fn obligations_section(lang: Language, obligations: &[ObligationRow]) -> String {
    if obligations.is_empty() {
        return format!("<p>{}</p>", tr(lang, "記録なし", "no record"));
    }
    let mut t = String::from("<table>");
    t.push_str(&head(&[
        tr(lang, "義務", "obligation"),
        tr(lang, "期限", "due"),
        tr(lang, "状態", "status"),
        tr(lang, "履行日時", "met at"),
    ]));
    t.push_str("<tbody>\n");
    for o in obligations {
        t.push_str(&row(&[
            &o.what,
            &date_label(lang, o.due),
            &obligation_status_label(lang, &o.status),
            o.met_at.as_deref().unwrap_or("—"),
        ]));
    }
    t.push_str("</tbody></table>");
    t
}

/// The whole report as one HTML document, in `input.language`.
pub fn html(grid: &MonthGrid, out: &MonthlyOutput, input: &ReportInput<'_>) -> DrawResult<String> {
    let lang = input.language;
    let daily = daily_chart(grid, lang)?;
    let heat = heat_map(grid, lang)?;
    let mut coverage = String::new();
    for (s, c) in grid.series.iter().zip(grid.coverage()) {
        let pct = c.percent();
        coverage.push_str(&format!(
            "<tr><td>{}</td><td>{}</td><td>{}</td><td class=n>{}</td><td class=n>{}</td><td class=n>{}</td><td class=n>{}</td>\
             <td class=nowrap><span class=bar><span style=\"width:{pct:.1}%\"></span></span> {pct:.1} %</td></tr>\n",
            escape(&s.sensor_id),
            escape(&s.array),
            escape(&s.direction),
            c.open,
            c.measured,
            c.estimated,
            c.missing
        ));
    }
    let coverage_head = head(&[
        tr(lang, "センサー", "sensor"),
        tr(lang, "アレイ", "array"),
        tr(lang, "方向", "direction"),
        tr(lang, "営業時間内の枠", "open windows"),
        tr(lang, "計測", "measured"),
        tr(lang, "推計", "estimated"),
        tr(lang, "欠測", "missing"),
        tr(lang, "取得率", "coverage"),
    ]);
    let availability = match input.availability {
        Some(share) => format!(
            "<p><b>{:.2} %</b> {}</p>",
            100.0 * share.clamp(0.0, 1.0),
            tr(
                lang,
                "（この月にパイプラインが稼働していた時間の割合。ジョブの記録による）",
                "(share of the month the pipeline was available, from the jobs' records)"
            )
        ),
        None => format!(
            "<p>{}</p>",
            tr(
                lang,
                "記録なし（この月のジョブの記録がありません）",
                "no record (no jobs' records for this month)"
            )
        ),
    };
    let file = out
        .csv
        .file_name()
        .map(|f| f.to_string_lossy().to_string())
        .unwrap_or_default();
    let (title, meta) = if ja(lang) {
        (
            format!(
                "{} 人流計測 月次報告 {}年{}月",
                escape(input.facility),
                grid.year,
                grid.month
            ),
            format!(
                "納品ファイル <code>{}</code>（sha256 <code>{}</code>）、納品期限 {}{}。<br>\
                 集計枠（センサー × 方向 × 15分枠）: {} — 計測 {}、推計 {}、欠測 {}、営業時間外 {}。計測された通行人数: {} 人。",
                escape(&file),
                out.sha256,
                date_label(lang, out.due),
                if out.due_provisional {
                    "（暫定: 内閣府の祝日一覧の範囲外）"
                } else {
                    ""
                },
                out.rows,
                out.ok,
                out.estimated,
                out.missing,
                out.closed,
                out.people
            ),
        )
    } else {
        (
            format!(
                "{} — monthly report {:04}-{:02}",
                escape(input.facility),
                grid.year,
                grid.month
            ),
            format!(
                "Deliverable <code>{}</code> (sha256 <code>{}</code>), due {}{}.<br>\
                 Cells (sensor × direction × window): {} — measured {}, estimated {}, missing {}, closed {}. People measured: {}.",
                escape(&file),
                out.sha256,
                out.due,
                if out.due_provisional {
                    " (provisional)"
                } else {
                    ""
                },
                out.rows,
                out.ok,
                out.estimated,
                out.missing,
                out.closed,
                out.people
            ),
        )
    };
    let h = |ja_text: &'static str, en_text: &'static str| tr(lang, ja_text, en_text);
    Ok(format!(
        r#"<!DOCTYPE html>
<html lang="{html_lang}"><head><meta charset="utf-8">
<title>{title}</title>
<style>
@page {{ size: A4 landscape; margin: 12mm 12mm 14mm 12mm; }}
html {{ -webkit-print-color-adjust: exact; print-color-adjust: exact; }}
body {{ font-family: "IPAGothic", "IPAexGothic", "IPAPGothic", "Noto Sans CJK JP", sans-serif; margin: 24px; color: #222; max-width: 1000px; }}
svg text {{ font-family: "IPAGothic", "IPAexGothic", "IPAPGothic", "Noto Sans CJK JP", sans-serif; }}
svg {{ display: block; max-width: 100%; height: auto; }}
h1 {{ font-size: 22px; }} h2 {{ font-size: 17px; margin-top: 28px; border-bottom: 1px solid #ccc; }}
table {{ border-collapse: collapse; font-size: 13px; }} td, th {{ padding: 3px 8px; border-bottom: 1px solid #eee; text-align: left; vertical-align: top; }}
th {{ background: #f3f5f8; }}
td.n {{ text-align: right; }} .nowrap {{ white-space: nowrap; }}
.bar {{ display: inline-block; width: 120px; height: 10px; background: #eee; vertical-align: middle; }}
.bar span {{ display: block; height: 10px; background: #3a7bd5; }}
.meta {{ font-size: 13px; color: #555; }} .code {{ font-family: monospace; color: #555; }}
section {{ margin-top: 8px; }}
@media print {{
  body {{ margin: 0; max-width: none; }}
  h1, h2 {{ break-after: avoid; page-break-after: avoid; }}
  tr, .chart, .meta {{ break-inside: avoid; page-break-inside: avoid; }}
  thead {{ display: table-header-group; }}
  .chart {{ break-before: auto; }}
}}
</style></head><body>
<h1>{title}</h1>
<p class=meta>{meta}</p>
<section><h2>{h_coverage}</h2>
<table>{coverage_head}<tbody>
{coverage}</tbody></table></section>
<section class=chart><h2>{h_daily}</h2>
{daily}</section>
<section class=chart><h2>{h_heat}</h2>
<p class=meta>{heat_note}</p>
{heat}</section>
<section><h2>{h_alerts}</h2>
{alerts_html}</section>
<section><h2>{h_faults}</h2>
{faults_html}</section>
<section><h2>{h_obligations}</h2>
{obligations_html}</section>
<section><h2>{h_availability}</h2>
{availability}</section>
</body></html>
"#,
        html_lang = if ja(lang) { "ja" } else { "en" },
        h_coverage = h("1. センサー別データ取得率", "1. Data coverage per sensor"),
        h_daily = h(
            "2. アレイ・方向別の日別通行量",
            "2. Daily totals per array and direction"
        ),
        h_heat = h(
            "3. 曜日 × 時間帯別の平均通行量（15分枠あたり）",
            "3. Average people per window: weekday × time of day"
        ),
        heat_note = h(
            "全センサーの合計。色の目盛りは右側（この月の最小〜最大）。灰色: 営業時間外または欠測を含む枠。",
            "All sensors together; colour scale on the right (the month's lowest to highest average); grey: closed or incomplete."
        ),
        h_alerts = h("4. 当月のアラート", "4. Alerts of the month"),
        alerts_html = alerts_section(lang, grid, input.alerts),
        h_faults = h("5. 障害報告", "5. Fault reports"),
        faults_html = faults_section(lang, input.alerts),
        h_obligations = h(
            "6. 提出義務と履行状況",
            "6. Obligations and when each was met"
        ),
        obligations_html = obligations_section(lang, input.obligations),
        h_availability = h("7. パイプライン稼働率", "7. Pipeline availability"),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_check_and_fault_kind_has_a_japanese_name() {
        for c in &crate::jobs::checks::CHECKS {
            assert!(KINDS.iter().any(|k| k.0 == c.kind), "{}", c.kind);
        }
        for f in FAULT_KINDS {
            assert!(KINDS.iter().any(|k| k.0 == f), "{f}");
        }
        assert_eq!(kind_label(Language::Ja, "sensor_offline"), "センサー停止");
        assert_eq!(kind_label(Language::En, "unknown_kind"), "unknown_kind");
    }
}
