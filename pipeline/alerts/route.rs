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
    /// (alert id, route) for every delivery that succeeded: `stdout`, `log_file`, `webhook`.
    pub delivered: Vec<(String, &'static str)>,
}

impl Delivery {
    /// Adds the figures of another run of the routes.
    pub fn absorb(&mut self, other: Delivery) {
        self.stdout += other.stdout;
        self.logged += other.logged;
        self.webhook_delivered += other.webhook_delivered;
        self.webhook_failed += other.webhook_failed;
        self.errors.extend(other.errors);
        self.delivered.extend(other.delivered);
    }

    /// Some route failed for some alert.
    pub fn failed(&self) -> bool {
        !self.errors.is_empty()
    }
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
                d.delivered.push((a.id.clone(), "stdout"));
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
                        Ok(()) => {
                            d.logged += 1;
                            d.delivered.push((a.id.clone(), "log_file"));
                        }
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
        // Redirects are not followed: a 3xx would be re-sent as a GET without the alert, and
        // counted as delivered. Only a 2xx answer is a delivery.
        let agent = ureq::AgentBuilder::new()
            .timeout(w.timeout)
            .redirects(0)
            .build();
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
                    Ok(r) if (200..300).contains(&r.status()) => {
                        ok = true;
                        break;
                    }
                    Ok(r) => {
                        last_err = format!(
                            "HTTP status {} (only 2xx counts as delivered; redirects are not followed)",
                            r.status()
                        )
                    }
                    // ureq's own messages quote the URL, credentials included: not used.
                    Err(ureq::Error::Status(code, _)) => last_err = format!("HTTP status {code}"),
                    Err(ureq::Error::Transport(t)) => {
                        last_err = format!("{:?}: {}", t.kind(), t.message().unwrap_or("no detail"))
                    }
                }
            }
            if ok {
                d.webhook_delivered += 1;
                d.delivered.push((a.id.clone(), "webhook"));
            } else {
                d.webhook_failed += 1;
                d.errors.push(format!(
                    "webhook {}: alert {} not delivered after {} attempts: {last_err}",
                    shown_url(&w.url),
                    a.id,
                    w.attempts
                ));
            }
        }
    }
    d
}

/// A URL as logs and errors show it: without user info, query or fragment, which may carry
/// credentials (`https://user:pass@host/hook?token=...` → `https://host/hook?…`).
pub fn shown_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) => {
            let hidden = u.query().is_some() || u.fragment().is_some();
            let _ = u.set_username("");
            let _ = u.set_password(None);
            u.set_query(None);
            u.set_fragment(None);
            let mut s = u.to_string();
            if hidden {
                s.push_str("?…");
            }
            s
        }
        Err(_) => "(a URL that does not parse; not shown)".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::shown_url;

    #[test]
    fn urls_are_shown_without_credentials() {
        for url in [
            "http://alice:s3cret-pw@127.0.0.1:9000/hook?token=s3cret-tok#s3cret-frag",
            "https://s3cret-pw@example.org/hook?s3cret-tok",
            "http:// s3cret-pw not a url",
        ] {
            let shown = shown_url(url);
            assert!(!shown.contains("s3cret"), "{shown}");
            assert!(!shown.contains("alice"), "{shown}");
        }
        assert_eq!(
            shown_url("http://u:p@127.0.0.1:9000/hook?t=1"),
            "http://127.0.0.1:9000/hook?…"
        );
        assert_eq!(shown_url("http://127.0.0.1/hook"), "http://127.0.0.1/hook");
    }
}
