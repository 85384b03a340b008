//! The monthly HTML report renders in headless Chromium (Debian's `chromium`, installed by
//! `.ci/run`) without the network, with its charts. The screenshot is kept at
//! `target/report-screenshot.png` (or $JINRYU_SCREENSHOT) for a person to look at.

use std::process::Command;

use jinryu::config::Config;
use jinryu::ingest::{IngestOptions, ingest};
use jinryu::jobs::{self, format::Format};
use jinryu::simulate::{self, Simulator};
use jinryu::sink::store::Storage;

#[tokio::test]
async fn monthly_report_is_self_contained_and_renders_in_chromium() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = Config::chikaho("memory://");
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
    let format = Format::load(
        &std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("formats/sapporo-wide.toml"),
    )
    .unwrap();
    let m = jobs::monthly::write_monthly(&ctx, &cfg, 2026, 10, &format, dir.path())
        .await
        .unwrap();
    let html = std::fs::read_to_string(&m.report_file).unwrap();
    assert_eq!(
        html.matches("<svg").count(),
        2,
        "daily totals and heat map charts"
    );
    assert!(html.contains("J2 north") && html.contains("Sapporo Chi-Ka-Ho"));
    assert!(html.contains("J2-3"), "coverage table lists every sensor");
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

    let shot = std::env::var("JINRYU_SCREENSHOT").unwrap_or_else(|_| {
        format!(
            "{}/report-screenshot.png",
            std::env::var("CARGO_TARGET_TMPDIR")
                .unwrap_or_else(|_| dir.path().display().to_string())
        )
    });
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
            "--window-size=1100,1500",
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
}
