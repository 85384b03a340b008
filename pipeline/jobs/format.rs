//! Deliverable formats: a small TOML file per client (`formats/*.toml`) decides the layout (long
//! or wide), columns and Japanese headers, date and time formats, encoding (UTF-8, UTF-8 with BOM,
//! Shift_JIS/CP932), line endings, how missing, closed and estimated values are written, and the
//! file name. Adding a client format is a file, not code.
//!
//! Rendering works on a [`MonthGrid`]: every window of the month × every sensor-direction series,
//! each cell `Ok`, `Estimated`, `Missing` or `Closed`. A sum over series (wide layout) is missing
//! when any of its inputs is missing — a partial sum is never shown as a count.

use std::io::Write;
use std::path::Path;

use chrono::{NaiveDate, NaiveTime};
use serde::Deserialize;

/// The default format (`formats/long.toml`).
pub const LONG_TOML: &str = include_str!("../../formats/long.toml");
/// The Sapporo-style wide format (`formats/sapporo-wide.toml`).
pub const SAPPORO_WIDE_TOML: &str = include_str!("../../formats/sapporo-wide.toml");

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Layout {
    Long,
    Wide,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Encoding {
    #[serde(rename = "utf-8")]
    Utf8,
    #[serde(rename = "utf-8-bom")]
    Utf8Bom,
    #[serde(rename = "shift_jis", alias = "cp932")]
    ShiftJis,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LineEnding {
    Crlf,
    Lf,
}

/// One output column.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Column {
    pub header: String,
    /// A named value (see [`VALUES_LONG`], [`VALUES_WIDE`]); absent in wide layout = a sum.
    pub value: Option<String>,
    /// Wide sums: restrict to an array, a sensor and/or a direction.
    pub array: Option<String>,
    pub sensor: Option<String>,
    pub direction: Option<String>,
}

/// Values a long-layout column may name.
pub const VALUES_LONG: [&str; 9] = [
    "date",
    "time",
    "time_slot",
    "sensor_id",
    "array",
    "direction",
    "count",
    "status",
    "estimated",
];
/// Values a wide-layout column may name (other columns are sums).
pub const VALUES_WIDE: [&str; 5] = ["date", "time", "time_slot", "status", "estimated"];

/// A deliverable format.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Format {
    pub name: String,
    pub layout: Layout,
    pub encoding: Encoding,
    pub line_ending: LineEnding,
    #[serde(default = "default_file_name")]
    pub file_name: String,
    pub date_format: String,
    pub time_format: String,
    #[serde(default)]
    pub missing: String,
    #[serde(default)]
    pub closed: String,
    #[serde(default)]
    pub estimate: bool,
    pub columns: Vec<Column>,
}

fn default_file_name() -> String {
    "{yyyy}_{mm}.csv".to_string()
}

/// One cell of the month.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cell {
    Ok(u64),
    Estimated(u64),
    Missing,
    Closed,
}

/// A series: one sensor and direction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Series {
    pub sensor_id: String,
    pub array: String,
    pub direction: String,
}

/// A window of the month in local time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WindowInfo {
    pub window_start: i64,
    pub date: NaiveDate,
    pub start: NaiveTime,
    pub end: NaiveTime,
    pub closed: bool,
}

/// Every window × every series of a month.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MonthGrid {
    pub year: i32,
    pub month: u32,
    pub windows: Vec<WindowInfo>,
    pub series: Vec<Series>,
    /// `cells[w * series.len() + s]`.
    pub cells: Vec<Cell>,
}

/// How much of a series' open time was measured.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Coverage {
    /// Windows not inside the closed hours.
    pub open: u64,
    pub measured: u64,
    pub estimated: u64,
    pub missing: u64,
}

impl Coverage {
    /// Measured share of the open windows, in percent.
    pub fn percent(&self) -> f64 {
        if self.open > 0 {
            100.0 * self.measured as f64 / self.open as f64
        } else {
            0.0
        }
    }
}

impl MonthGrid {
    pub fn cell(&self, w: usize, s: usize) -> Cell {
        self.cells[w * self.series.len() + s]
    }

    /// Coverage of each series, in series order.
    pub fn coverage(&self) -> Vec<Coverage> {
        let mut out = vec![Coverage::default(); self.series.len()];
        for (i, c) in self.cells.iter().enumerate() {
            let cov = &mut out[i % self.series.len()];
            match c {
                Cell::Closed => continue,
                Cell::Ok(_) => cov.measured += 1,
                Cell::Estimated(_) => cov.estimated += 1,
                Cell::Missing => cov.missing += 1,
            }
            cov.open += 1;
        }
        out
    }
}

impl Format {
    /// Parses and checks a format file's text.
    pub fn parse(text: &str, source: &str) -> Result<Format, String> {
        let f: Format =
            toml::from_str(text).map_err(|e| format!("{source}: {}", e.to_string().trim_end()))?;
        f.check().map_err(|e| format!("{source}: {e}"))?;
        Ok(f)
    }

    /// Reads a format file.
    pub fn load(path: &Path) -> Result<Format, String> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            format!(
                "cannot read the format file {}: {e} (formats/ in the repository has examples)",
                path.display()
            )
        })?;
        Format::parse(&text, &path.display().to_string())
    }

    /// The default long format.
    pub fn long() -> Format {
        Format::parse(LONG_TOML, "formats/long.toml").expect("embedded format")
    }

    fn check(&self) -> Result<(), String> {
        if self.columns.is_empty() {
            return Err("a format needs at least one column".into());
        }
        for (i, c) in self.columns.iter().enumerate() {
            let allowed: &[&str] = match self.layout {
                Layout::Long => &VALUES_LONG,
                Layout::Wide => &VALUES_WIDE,
            };
            match (&c.value, self.layout) {
                (Some(v), _) if !allowed.contains(&v.as_str()) => {
                    return Err(format!(
                        "columns[{i}] (`{}`): value `{v}` is not one of {}",
                        c.header,
                        allowed.join(", ")
                    ));
                }
                (None, Layout::Long) => {
                    return Err(format!(
                        "columns[{i}] (`{}`) needs a value ({})",
                        c.header,
                        VALUES_LONG.join(", ")
                    ));
                }
                _ => {}
            }
            if self.layout == Layout::Long
                && (c.array.is_some() || c.sensor.is_some() || c.direction.is_some())
            {
                return Err(format!(
                    "columns[{i}] (`{}`): array/sensor/direction filters are for the wide layout",
                    c.header
                ));
            }
        }
        // Each format is tried on the kind of value it renders: a date has no hour, a time of day
        // no year (chrono reports such a format as an error at render time, which used to panic).
        use std::fmt::Write;
        let date = chrono::NaiveDate::from_ymd_opt(2026, 1, 2).expect("date");
        let time = chrono::NaiveTime::from_hms_opt(3, 4, 5).expect("time");
        let mut s = String::new();
        if write!(s, "{}", date.format(&self.date_format)).is_err() {
            return Err(format!(
                "date_format `{}` cannot render a date (it must use date fields only, e.g. \
                 \"%Y/%m/%d\"; %H, %M, %S are for time_format)",
                self.date_format
            ));
        }
        if write!(s, "{}", time.format(&self.time_format)).is_err() {
            return Err(format!(
                "time_format `{}` cannot render a time of day (it must use time fields only, \
                 e.g. \"%H:%M\"; %Y, %m, %d are for date_format)",
                self.time_format
            ));
        }
        if !self.file_name.ends_with(".csv") || self.file_name.contains('/') {
            return Err(format!(
                "file_name `{}` must end in .csv and contain no '/'",
                self.file_name
            ));
        }
        Ok(())
    }

    /// The file name for a month.
    pub fn file_name(&self, year: i32, month: u32) -> String {
        self.file_name
            .replace("{yyyy}", &format!("{year:04}"))
            .replace("{mm}", &format!("{month:02}"))
    }

    /// Renders the month as the bytes of the file.
    pub fn render(&self, grid: &MonthGrid) -> Result<Vec<u8>, String> {
        let mut out = Vec::new();
        self.render_to(grid, &mut out)?;
        Ok(out)
    }

    /// Renders the month into `out` row by row, encoded on the way: the text of a month is never
    /// held whole (a 1,000-sensor month is 5.76 M rows). On an error, what was written is partial.
    pub fn render_to(&self, grid: &MonthGrid, out: &mut dyn Write) -> Result<(), String> {
        let terminator = match self.line_ending {
            LineEnding::Crlf => csv::Terminator::CRLF,
            LineEnding::Lf => csv::Terminator::Any(b'\n'),
        };
        let mut sink = Encoded::new(self, out);
        if self.encoding == Encoding::Utf8Bom {
            sink.write_all(b"\xEF\xBB\xBF").map_err(|e| e.to_string())?;
        }
        let mut w = csv::WriterBuilder::new()
            .terminator(terminator)
            .buffer_capacity(1 << 16)
            .from_writer(&mut sink);
        let err = |e: csv::Error| match e.into_kind() {
            csv::ErrorKind::Io(io) => io.to_string(),
            other => format!("{other:?}"),
        };
        w.write_record(self.columns.iter().map(|c| c.header.as_str()))
            .map_err(err)?;
        match self.layout {
            Layout::Long => {
                // Text that depends on the window only, made once per window.
                let per_window: Vec<[String; 3]> = grid
                    .windows
                    .iter()
                    .map(|win| {
                        [
                            win.date.format(&self.date_format).to_string(),
                            win.start.format(&self.time_format).to_string(),
                            self.slot(win),
                        ]
                    })
                    .collect();
                let mut number = String::new();
                for (wi, texts) in per_window.iter().enumerate() {
                    for (si, s) in grid.series.iter().enumerate() {
                        let cell = grid.cell(wi, si);
                        number.clear();
                        if let Cell::Ok(n) | Cell::Estimated(n) = cell {
                            use std::fmt::Write as _;
                            let _ = write!(number, "{n}");
                        }
                        for c in &self.columns {
                            let text: &str = match c.value.as_deref().unwrap_or("") {
                                "date" => &texts[0],
                                "time" => &texts[1],
                                "time_slot" => &texts[2],
                                "sensor_id" => &s.sensor_id,
                                "array" => &s.array,
                                "direction" => &s.direction,
                                "count" => match cell {
                                    Cell::Ok(_) | Cell::Estimated(_) => &number,
                                    Cell::Missing => &self.missing,
                                    Cell::Closed => &self.closed,
                                },
                                "status" => status(cell),
                                "estimated" => {
                                    if matches!(cell, Cell::Estimated(_)) {
                                        "1"
                                    } else {
                                        "0"
                                    }
                                }
                                _ => unreachable!("checked when the format was parsed"),
                            };
                            w.write_field(text).map_err(err)?;
                        }
                        w.write_record(None::<&[u8]>).map_err(err)?;
                    }
                }
            }
            Layout::Wide => {
                let members: Vec<Vec<usize>> = self
                    .columns
                    .iter()
                    .map(|c| {
                        grid.series
                            .iter()
                            .enumerate()
                            .filter(|(_, s)| {
                                c.array.as_ref().is_none_or(|a| *a == s.array)
                                    && c.sensor.as_ref().is_none_or(|x| *x == s.sensor_id)
                                    && c.direction.as_ref().is_none_or(|d| *d == s.direction)
                            })
                            .map(|(i, _)| i)
                            .collect()
                    })
                    .collect();
                for (i, (c, m)) in self.columns.iter().zip(&members).enumerate() {
                    if c.value.is_none() && m.is_empty() {
                        return Err(format!(
                            "columns[{i}] (`{}`) matches no configured sensor",
                            c.header
                        ));
                    }
                }
                let mut record: Vec<String> = Vec::with_capacity(self.columns.len());
                for (wi, win) in grid.windows.iter().enumerate() {
                    let all: Vec<Cell> = (0..grid.series.len()).map(|s| grid.cell(wi, s)).collect();
                    let row = sum(&all);
                    record.clear();
                    for (c, m) in self.columns.iter().zip(&members) {
                        let text = match c.value.as_deref() {
                            Some("date") => win.date.format(&self.date_format).to_string(),
                            Some("time") => win.start.format(&self.time_format).to_string(),
                            Some("time_slot") => self.slot(win),
                            Some("status") => status(row).to_string(),
                            Some("estimated") => {
                                let any = all.iter().any(|c| matches!(c, Cell::Estimated(_)));
                                if any { "1" } else { "0" }.to_string()
                            }
                            _ => {
                                let cells: Vec<Cell> = m.iter().map(|s| all[*s]).collect();
                                self.count_text(sum(&cells))
                            }
                        };
                        record.push(text);
                    }
                    w.write_record(&record).map_err(err)?;
                }
            }
        }
        w.flush().map_err(|e| e.to_string())?;
        drop(w);
        sink.finish()
    }

    fn slot(&self, win: &WindowInfo) -> String {
        format!(
            "{}-{}",
            win.start.format(&self.time_format),
            win.end.format(&self.time_format)
        )
    }

    fn count_text(&self, cell: Cell) -> String {
        match cell {
            Cell::Ok(n) | Cell::Estimated(n) => n.to_string(),
            Cell::Missing => self.missing.clone(),
            Cell::Closed => self.closed.clone(),
        }
    }

    /// `text` in Shift_JIS; `lines_before` lines of the file precede it (for the error's line).
    fn shift_jis(&self, text: &str, lines_before: usize) -> Result<Vec<u8>, String> {
        let (bytes, _, unmappable) = encoding_rs::SHIFT_JIS.encode(text);
        if unmappable {
            let mut buf = [0u8; 4];
            for (line_no, line) in text.lines().enumerate() {
                for ch in line.chars() {
                    let (_, _, bad) = encoding_rs::SHIFT_JIS.encode(ch.encode_utf8(&mut buf));
                    if bad {
                        return Err(format!(
                            "format `{}`: the character '{ch}' (U+{:04X}) on line {} cannot be written in Shift_JIS; \
                             rename it in the configuration or format, or use encoding = \"utf-8-bom\"",
                            self.name,
                            ch as u32,
                            lines_before + line_no + 1
                        ));
                    }
                }
            }
        }
        Ok(bytes.into_owned())
    }
}

/// Sum of cells: closed if any is closed, missing if any is missing, estimated if any is.
pub fn sum(cells: &[Cell]) -> Cell {
    let mut total = 0;
    let mut estimated = false;
    for c in cells {
        match c {
            Cell::Closed => return Cell::Closed,
            Cell::Missing => return Cell::Missing,
            Cell::Ok(n) => total += n,
            Cell::Estimated(n) => {
                total += n;
                estimated = true;
            }
        }
    }
    if estimated {
        Cell::Estimated(total)
    } else {
        Cell::Ok(total)
    }
}

fn status(cell: Cell) -> &'static str {
    match cell {
        Cell::Ok(_) => "ok",
        Cell::Estimated(_) => "estimated",
        Cell::Missing => "missing",
        Cell::Closed => "closed",
    }
}

/// The file's bytes in the format's encoding, written as the CSV writer produces text. Shift_JIS
/// text is encoded in runs of whole lines (a character Shift_JIS cannot hold is an error naming it
/// and its line in the file); UTF-8 passes through.
struct Encoded<'a> {
    format: &'a Format,
    out: &'a mut dyn Write,
    /// Shift_JIS only: text not yet encoded (up to the last line end written).
    pending: Vec<u8>,
    /// Lines encoded so far (for the error's line number).
    lines: usize,
    /// The first encoding error; later writes fail with it.
    failed: Option<String>,
}

impl<'a> Encoded<'a> {
    fn new(format: &'a Format, out: &'a mut dyn Write) -> Self {
        Encoded {
            format,
            out,
            pending: Vec::new(),
            lines: 0,
            failed: None,
        }
    }

    /// Encodes and writes the complete lines held.
    fn drain(&mut self, all: bool) -> std::io::Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let upto = if all {
            self.pending.len()
        } else {
            match memchr::memrchr(b'\n', &self.pending) {
                Some(i) => i + 1,
                None => return Ok(()),
            }
        };
        let text = std::str::from_utf8(&self.pending[..upto])
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        let bytes = self.format.shift_jis(text, self.lines).map_err(|e| {
            self.failed = Some(e.clone());
            std::io::Error::other(e)
        })?;
        self.lines += memchr::memchr_iter(b'\n', &self.pending[..upto]).count();
        self.out.write_all(&bytes)?;
        self.pending.drain(..upto);
        Ok(())
    }

    fn finish(mut self) -> Result<(), String> {
        if let Some(e) = self.failed.take() {
            return Err(e);
        }
        self.drain(true).map_err(|e| e.to_string())?;
        self.out.flush().map_err(|e| e.to_string())
    }
}

impl Write for Encoded<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if let Some(e) = &self.failed {
            return Err(std::io::Error::other(e.clone()));
        }
        if self.format.encoding != Encoding::ShiftJis {
            return self.out.write(buf);
        }
        self.pending.extend_from_slice(buf);
        if self.pending.len() >= 1 << 16 {
            self.drain(false)?;
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.out.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_formats_parse() {
        assert_eq!(Format::long().layout, Layout::Long);
        let wide = Format::parse(SAPPORO_WIDE_TOML, "sapporo").unwrap();
        assert_eq!(
            (wide.layout, wide.encoding, wide.estimate),
            (Layout::Wide, Encoding::ShiftJis, true)
        );
        assert_eq!(wide.file_name(2026, 11), "2026_11.csv");
    }

    #[test]
    fn bad_formats_say_what_is_wrong() {
        let base = LONG_TOML.replace(
            "{ header = \"status\", value = \"status\" },",
            "{ header = \"x\", value = \"colour\" },",
        );
        assert!(
            Format::parse(&base, "f")
                .unwrap_err()
                .contains("value `colour` is not one of")
        );
        let unknown = format!("{LONG_TOML}\nflavour = 1\n");
        assert!(
            Format::parse(&unknown, "f")
                .unwrap_err()
                .contains("flavour")
        );
    }

    #[test]
    fn sums_never_hide_missing_inputs() {
        assert_eq!(sum(&[Cell::Ok(2), Cell::Ok(3)]), Cell::Ok(5));
        assert_eq!(sum(&[Cell::Ok(2), Cell::Missing]), Cell::Missing);
        assert_eq!(sum(&[Cell::Ok(2), Cell::Estimated(3)]), Cell::Estimated(5));
        assert_eq!(sum(&[Cell::Closed, Cell::Ok(1)]), Cell::Closed);
    }

    #[test]
    fn unencodable_characters_are_named() {
        let f = Format {
            encoding: Encoding::ShiftJis,
            ..Format::long()
        };
        let err = f.shift_jis("date\r\n2026-11-02,🙂\r\n", 0).unwrap_err();
        assert!(err.contains("U+1F642") && err.contains("line 2"), "{err}");
        // A later chunk of the file names the file's line.
        let err = f.shift_jis("x\r\n🙂\r\n", 70_000).unwrap_err();
        assert!(err.contains("line 70002"), "{err}");
        assert_eq!(
            f.shift_jis("補正", 0).unwrap(),
            vec![0x95, 0xE2, 0x90, 0xB3]
        );
    }
}
