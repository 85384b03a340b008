//! The monthly report: in Japanese for the Chi-Ka-Ho configuration (English on request), rendered
//! in headless Chromium (Debian's `chromium`, installed by `.ci/setup`) without the network, with
//! its charts, and printed to the PDF the client files (checked with poppler's `pdfinfo` and
//! `pdftotext`). For a person to look at, the test prints where it kept the screenshot
//! (`report-screenshot.png`, or $JINRYU_SCREENSHOT) and a copy of the PDF (`report.pdf`), both
//! in Cargo's test tmp directory (`target/tmp/`).

use std::process::Command;

use jinryu::config::{Config, Language};
use jinryu::ingest::{IngestOptions, ingest};
use jinryu::jobs::{self, format::Format};
use jinryu::simulate::{self, Simulator};
use jinryu::sink::store::Storage;

/// Where the files for a person go (kept after the test).
/// `CARGO_TARGET_TMPDIR` is set when Cargo compiles an integration test (not when it runs it).
fn keep_dir() -> String {
    env!("CARGO_TARGET_TMPDIR").to_string()
}

/// Text without any white space (pdftotext spaces CJK text as it likes).
fn squeeze(s: &str) -> String {
    s.split_whitespace().collect()
}

#[tokio::test]
async fn monthly_report_is_japanese_self_contained_and_prints_to_pdf() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = Config::chikaho("memory://");
    assert_eq!(cfg.language, Language::Ja, "the Chi-Ka-Ho default");
    let storage = Storage::open("memory://").unwrap();
    let mut opts = simulate::options(2026, 10);
    opts.days = Some(14);
    ingest(
        &cfg,
        &storage,
        Box::new(Simulator::new(&cfg, opts)),
        &IngestOptions::new("report"),
    )
    .await
    .unwrap();
    let ctx = jobs::context(&cfg, &storage).await.unwrap();
    // The checks over the simulated days, so the report has alerts and fault reports to show.
    let from = chrono::NaiveDate::from_ymd_opt(2026, 10, 1).unwrap();
    let to = chrono::NaiveDate::from_ymd_opt(2026, 10, 14).unwrap();
    let incidents = jobs::checks::run_checks(&ctx, &cfg, &cfg.checks, from, to)
        .await
        .unwrap();
    let found = jinryu::alerts::alerts_from(&cfg, &incidents);
    let alerts = jinryu::alerts::merge(
        &storage,
        found,
        cfg.window.day_start(from),
        cfg.window.day_start(to.succ_opt().unwrap()),
    )
    .await
    .unwrap()
    .all;
    let format = Format::load(
        &std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("formats/sapporo-wide.toml"),
    )
    .unwrap();
    let m = jobs::monthly::write_monthly(&ctx, &cfg, 2026, 10, &format, dir.path())
        .await
        .unwrap();

    // The HTML.
    let html = std::fs::read_to_string(&m.report_file).unwrap();
    assert_eq!(
        html.matches("<svg").count(),
        2,
        "daily totals and heat map charts"
    );
    assert!(html.contains("<html lang=\"ja\">"));
    assert!(html.contains("J2 north") && html.contains("Sapporo Chi-Ka-Ho"));
    assert!(html.contains("J2-3"), "coverage table lists every sensor");
    for needle in [
        "月次報告",
        "センサー別データ取得率",
        "日別通行量",
        "曜日 × 時間帯",
        "当月のアラート",
        "障害報告",
        "提出義務と履行状況",
        "パイプライン稼働率",
        "記録なし",
        "未提出",
        "IPAGothic",
        "@page",
    ] {
        assert!(html.contains(needle), "the Japanese report has {needle}");
    }
    // Chart texts (plotters writes `<text ...>\nTEXT\n</text>`): the heat map's weekdays, its
    // colour scale, the axis descriptions.
    for label in [
        "月",
        "最大",
        "最小",
        "データなし",
        "平均人数/枠",
        "1日の通行人数",
    ] {
        assert!(
            html.contains(&format!(">\n{label}\n</text>")),
            "a chart shows {label}"
        );
    }
    for a in &alerts {
        assert!(
            html.contains(&format!("<td>{}</td>", a.kind)),
            "alert {} listed with its code",
            a.kind
        );
    }
    if alerts.iter().any(|a| a.kind == "sensor_offline") {
        assert!(html.contains("センサー停止"));
    }
    for needle in [
        "src=\"http",
        "href=\"http",
        "<script",
        "@import",
        "url(http",
    ] {
        assert!(
            !html.contains(needle),
            "report must be self-contained: found {needle}"
        );
    }

    // The PDF, written beside the HTML.
    assert_eq!(m.pdf_file, m.report_file.with_extension("pdf"));
    let pdf = std::fs::read(&m.pdf_file).expect("PDF written");
    assert_eq!(&pdf[..5], b"%PDF-");
    assert!(
        !std::path::PathBuf::from(format!("{}.tmp", m.pdf_file.display())).exists(),
        "no temporary file left"
    );
    let kept_pdf = format!("{}/report.pdf", keep_dir());
    std::fs::copy(&m.pdf_file, &kept_pdf).unwrap();
    let info = Command::new("pdfinfo")
        .arg(&m.pdf_file)
        .output()
        .expect("pdfinfo runs (apt-get install poppler-utils)");
    assert!(info.status.success());
    let info = String::from_utf8_lossy(&info.stdout).to_string();
    let pages: u32 = info
        .lines()
        .find_map(|l| l.strip_prefix("Pages:"))
        .expect("pdfinfo shows the page count")
        .trim()
        .parse()
        .unwrap();
    assert!(
        (1..=15).contains(&pages),
        "a report of a few pages, not {pages}: {info}"
    );
    assert!(info.contains("A4"), "printed on A4: {info}");
    let text = Command::new("pdftotext")
        .args(["-layout", "-enc", "UTF-8"])
        .arg(&m.pdf_file)
        .arg("-")
        .output()
        .expect("pdftotext runs (apt-get install poppler-utils)");
    assert!(text.status.success());
    let text = String::from_utf8_lossy(&text.stdout).to_string();
    let flat = squeeze(&text);
    for needle in [
        "月次報告",
        "センサー",
        "札幌駅前通地下歩行空間",
        "センサー別データ取得率",
        "パイプライン稼働率",
        "J2-3",
    ] {
        assert!(
            flat.contains(needle),
            "the PDF's text has {needle}:\n{text}"
        );
    }
    if alerts.iter().any(|a| a.kind == "sensor_offline") {
        assert!(flat.contains("センサー停止"), "{text}");
    }

    // The screenshot of the HTML.
    let shot = std::env::var("JINRYU_SCREENSHOT")
        .unwrap_or_else(|_| format!("{}/report-screenshot.png", keep_dir()));
    let _ = std::fs::remove_file(&shot);
    let profile = dir.path().join("chromium-profile");
    let out = Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
            "--window-size=1100,2600",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg(format!("--screenshot={shot}"))
        .arg(format!("file://{}", m.report_file.display()))
        .output()
        .expect("chromium runs (apt-get install chromium)");
    assert!(
        out.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let png = std::fs::read(&shot).expect("screenshot written");
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    assert!(
        png.len() > 30_000,
        "a page with charts, not a blank one ({} bytes)",
        png.len()
    );
    println!("screenshot: {shot}");
    println!("pdf: {kept_pdf} ({pages} pages)");

    // English on request.
    let mut en = cfg.clone();
    en.language = Language::En;
    let en_dir = dir.path().join("en");
    let m = jobs::monthly::write_monthly(&ctx, &en, 2026, 10, &format, &en_dir)
        .await
        .unwrap();
    let html = std::fs::read_to_string(&m.report_file).unwrap();
    assert!(html.contains("<html lang=\"en\">"));
    for needle in [
        "Data coverage per sensor",
        "Daily totals per array and direction",
        ">\nMon\n</text>",
        ">\nmax\n</text>",
        "Obligations and when each was met",
        "no record",
    ] {
        assert!(html.contains(needle), "the English report has {needle}");
    }
    assert!(!html.contains("月次報告"));
    assert!(m.pdf_file.exists());
}

#[test]
fn a_missing_chromium_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let html = dir.path().join("r.html");
    std::fs::write(&html, "<!DOCTYPE html><html><body>x</body></html>").unwrap();
    let pdf = dir.path().join("r.pdf");
    // JINRYU_CHROMIUM is set for a child process only (this test binary, running the one test
    // below): the other test of this process prints PDFs through Chromium at the same time.
    let out = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "missing_chromium_child", "--nocapture"])
        .env("JINRYU_CHROMIUM", dir.path().join("no-such-chromium"))
        .env("JINRYU_TEST_HTML", &html)
        .env("JINRYU_TEST_PDF", &pdf)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(stdout.contains("child ran"), "{stdout}");
    assert!(!pdf.exists(), "no PDF");
}

/// Run by [`a_missing_chromium_is_a_clear_error`] in a child process with `JINRYU_CHROMIUM`
/// pointing nowhere; passes trivially when run on its own.
#[test]
fn missing_chromium_child() {
    let (Ok(html), Ok(pdf)) = (
        std::env::var("JINRYU_TEST_HTML"),
        std::env::var("JINRYU_TEST_PDF"),
    ) else {
        return;
    };
    let e = jobs::pdf::render(std::path::Path::new(&html), std::path::Path::new(&pdf))
        .expect_err("no Chromium, no PDF")
        .to_string();
    assert!(e.contains("install Debian's chromium"), "{e}");
    assert!(e.contains("JINRYU_CHROMIUM"), "{e}");
    assert!(!std::path::Path::new(&format!("{pdf}.tmp")).exists());
    println!("child ran");
}
