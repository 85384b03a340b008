//! The monthly report as PDF, the file the client files: headless Chromium's print-to-PDF of the
//! HTML report (its `@page` rules set the paper: A4 landscape). Chromium is Debian's `chromium`
//! on `PATH`, or the program `JINRYU_CHROMIUM` names. Each run gets a throwaway profile directory
//! (removed afterwards), is killed after [`TIMEOUT`], and writes `<pdf>.tmp` first: a
//! half-written PDF never has the final name.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// How long one rendering may take before Chromium is killed.
pub const TIMEOUT: Duration = Duration::from_secs(120);

/// The environment variable that names the Chromium program (default: `chromium` on `PATH`).
pub const CHROMIUM_ENV: &str = "JINRYU_CHROMIUM";

/// The Chromium program to run.
pub fn chromium() -> PathBuf {
    std::env::var_os(CHROMIUM_ENV)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("chromium"))
}

/// A fresh, unique directory under the system's temporary directory.
fn scratch_dir() -> anyhow::Result<PathBuf> {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let dir = std::env::temp_dir().join(format!(
        "jinryu-chromium-{}-{nanos}-{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).map_err(|e| {
        anyhow::anyhow!(
            "cannot create Chromium's scratch profile {}: {e}",
            dir.display()
        )
    })?;
    Ok(dir)
}

/// Prints `html_path` to `pdf_path` with headless Chromium.
pub fn render(html_path: &Path, pdf_path: &Path) -> anyhow::Result<()> {
    let html = std::fs::canonicalize(html_path)
        .map_err(|e| anyhow::anyhow!("cannot read the report {}: {e}", html_path.display()))?;
    let pdf = std::path::absolute(pdf_path)?;
    let url = url::Url::from_file_path(&html)
        .map_err(|()| anyhow::anyhow!("{} cannot be made a file:// URL", html.display()))?;
    let tmp = PathBuf::from(format!("{}.tmp", pdf.display()));
    let _ = std::fs::remove_file(&tmp);
    let profile = scratch_dir()?;
    let result = print(&html, url.as_str(), &tmp, &profile);
    let _ = std::fs::remove_dir_all(&profile);
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    std::fs::rename(&tmp, &pdf).map_err(|e| {
        anyhow::anyhow!("cannot rename {} to {}: {e}", tmp.display(), pdf.display())
    })?;
    Ok(())
}

/// Runs Chromium once; `Ok` when `out` holds a PDF.
fn print(html: &Path, url: &str, out: &Path, profile: &Path) -> anyhow::Result<()> {
    use std::os::unix::process::CommandExt;
    let program = chromium();
    let log_path = profile.join("chromium.log");
    let log = std::fs::File::create(&log_path)?;
    let mut cmd = Command::new(&program);
    cmd.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-quic",
        "--no-pdf-header-footer",
        // The same switch in Chromium before 120.
        "--print-to-pdf-no-header",
    ])
    .arg(format!("--user-data-dir={}", profile.display()))
    .arg(format!("--print-to-pdf={}", out.display()))
    .arg(url)
    .stdin(Stdio::null())
    .stdout(Stdio::null())
    .stderr(Stdio::from(log))
    // Its own process group, so a timeout kills the browser's helper processes too.
    .process_group(0);
    if std::env::var_os("HOME").is_none() {
        // A service without a home: Chromium's caches go to the scratch profile.
        cmd.env("HOME", profile);
    }
    let mut child = cmd.spawn().map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            anyhow::anyhow!(
                "cannot print the monthly report as PDF: `{}` was not found. The PDF is made by \
                 headless Chromium: install Debian's chromium (apt-get install chromium \
                 fonts-ipafont-gothic), or set {CHROMIUM_ENV} to the Chromium program",
                program.display()
            )
        } else {
            anyhow::anyhow!(
                "cannot run `{}` to print the monthly report as PDF: {e} (install Debian's \
                 chromium, or set {CHROMIUM_ENV} to the Chromium program)",
                program.display()
            )
        }
    })?;
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if started.elapsed() > TIMEOUT {
            // The whole process group this function started (its id is the child's).
            let _ = Command::new("sh")
                .arg("-c")
                .arg(format!("kill -s KILL -- -{}", child.id()))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
            let _ = child.kill();
            let _ = child.wait();
            anyhow::bail!(
                "`{}` did not finish printing {} to PDF within {} s and was stopped",
                program.display(),
                html.display(),
                TIMEOUT.as_secs()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let tail = || {
        let text = std::fs::read_to_string(&log_path).unwrap_or_default();
        let lines: Vec<&str> = text
            .lines()
            .filter(|l| !l.contains("dbus") && !l.trim().is_empty())
            .collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    };
    anyhow::ensure!(
        status.success(),
        "`{}` failed printing {} to PDF ({status}):\n{}",
        program.display(),
        html.display(),
        tail()
    );
    let head = std::fs::read(out)
        .map(|b| b.get(..5).map(|h| h.to_vec()).unwrap_or_default())
        .unwrap_or_default();
    anyhow::ensure!(
        head == b"%PDF-",
        "`{}` exited without writing a PDF to {}:\n{}",
        program.display(),
        out.display(),
        tail()
    );
    Ok(())
}
