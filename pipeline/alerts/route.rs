//! Where alerts go: JSON lines on stdout, an alert log file (appended), and an HTTP webhook (one
//! JSON POST per alert, with a timeout and retries with backoff). A failing route never stops the
//! run: it is reported on stderr and in the returned [`Delivery`].

use std::io::Write;
use std::path::Path;
use std::time::Duration;

use super::Alert;

/// Webhook settings.
#[derive(Debug, Clone)]
pub struct Webhook {
    pub url: String,
    pub timeout: Duration,
    /// Attempts per alert (1 = no retry); waits 0.5 s, 1 s, 2 s, … between attempts.
    pub attempts: u32,
}

/// What the routes did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Delivery {
    pub stdout: usize,
    pub logged: usize,
    pub webhook_delivered: usize,
    pub webhook_failed: usize,
    pub errors: Vec<String>,
}

/// Sends `alerts` to every configured route.
pub fn route(
    alerts: &[Alert],
    to_stdout: bool,
    log_file: Option<&Path>,
    webhook: Option<&Webhook>,
) -> Delivery {
    let mut d = Delivery::default();
    if to_stdout {
        let stdout = std::io::stdout();
        let mut out = stdout.lock();
        for a in alerts {
            if writeln!(
                out,
                "{}",
                serde_json::to_string(a).expect("alert serialises")
            )
            .is_ok()
            {
                d.stdout += 1;
            }
        }
    }
    if let Some(path) = log_file {
        match std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
        {
            Ok(mut f) => {
                for a in alerts {
                    match writeln!(f, "{}", serde_json::to_string(a).expect("alert serialises")) {
                        Ok(()) => d.logged += 1,
                        Err(e) => d.errors.push(format!("alert log {}: {e}", path.display())),
                    }
                }
            }
            Err(e) => d
                .errors
                .push(format!("cannot open the alert log {}: {e}", path.display())),
        }
    }
    if let Some(w) = webhook {
        let agent = ureq::AgentBuilder::new().timeout(w.timeout).build();
        for a in alerts {
            let body = serde_json::to_string(a).expect("alert serialises");
            let mut last_err = String::new();
            let mut ok = false;
            for attempt in 0..w.attempts.max(1) {
                if attempt > 0 {
                    std::thread::sleep(Duration::from_millis(500 << (attempt - 1).min(4)));
                }
                match agent
                    .post(&w.url)
                    .set("Content-Type", "application/json")
                    .send_string(&body)
                {
                    Ok(_) => {
                        ok = true;
                        break;
                    }
                    Err(e) => last_err = e.to_string(),
                }
            }
            if ok {
                d.webhook_delivered += 1;
            } else {
                d.webhook_failed += 1;
                d.errors.push(format!(
                    "webhook {}: alert {} not delivered after {} attempts: {last_err}",
                    w.url, a.id, w.attempts
                ));
            }
        }
    }
    d
}
