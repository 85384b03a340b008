//! Where alerts go: JSON lines on stdout, an alert log file (appended), an http(s) webhook (one
//! JSON POST per alert, with a timeout and retries with backoff) and e-mail (SMTP with STARTTLS,
//! one message per alert). A failing route never stops the
//! run: it is reported on stderr and in the returned [`Delivery`].

use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

use super::Alert;
use crate::config::{AlertRoutes, Secret};

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
    pub email_sent: usize,
    pub email_failed: usize,
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
        self.email_sent += other.email_sent;
        self.email_failed += other.email_failed;
        self.errors.extend(other.errors);
        self.delivered.extend(other.delivered);
    }

    /// Some route failed for some alert.
    pub fn failed(&self) -> bool {
        !self.errors.is_empty()
    }
}

/// The routes `[alerts]` configures besides stdout (`log_file`, `webhook`, `email`), by the
/// names [`Delivery::delivered`] and [`send`] use.
pub fn configured(routes: &AlertRoutes) -> Vec<&'static str> {
    let mut names = Vec::new();
    if routes.log_file.is_some() {
        names.push("log_file");
    }
    if routes.webhook.is_some() {
        names.push("webhook");
    }
    if routes.email.is_some() {
        names.push("email");
    }
    names
}

/// Sends `alerts` to one route by its name (`stdout`, `log_file`, `webhook`, `email`); a route
/// that `routes` does not configure takes nothing.
pub fn send(route: &str, alerts: &[Alert], routes: &AlertRoutes) -> Delivery {
    let mut d = Delivery::default();
    match route {
        "stdout" => to_stdout(alerts, &mut d),
        "log_file" => {
            if let Some(p) = &routes.log_file {
                to_log_file(p, alerts, &mut d)
            }
        }
        "webhook" => {
            if let Some(w) = &routes.webhook {
                to_webhook(w, routes.ca_file.as_deref(), alerts, &mut d)
            }
        }
        "email" => {
            if let Some(e) = &routes.email {
                to_email(e, routes.ca_file.as_deref(), alerts, &mut d)
            }
        }
        other => unreachable!("no alert route {other}"),
    }
    d
}

fn to_stdout(alerts: &[Alert], d: &mut Delivery) {
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

fn to_log_file(path: &Path, alerts: &[Alert], d: &mut Delivery) {
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

/// The certificates of a PEM file (`[alerts] ca_file`); an error says what is wrong with it.
pub fn read_ca_file(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs: Result<Vec<_>, _> = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?
        .collect();
    match certs {
        Ok(c) if !c.is_empty() => Ok(c),
        Ok(_) => Err(format!(
            "{} holds no PEM certificate (-----BEGIN CERTIFICATE-----)",
            path.display()
        )),
        Err(e) => Err(format!(
            "{}: not a PEM certificate file: {e}",
            path.display()
        )),
    }
}

/// TLS for https webhooks: the system's trusted roots (Debian's ca-certificates) and those of
/// `[alerts] ca_file` (an internal CA). Certificates and host names are always verified.
fn client_tls(ca_file: Option<&Path>) -> Result<Arc<rustls::ClientConfig>, String> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
    if let Some(path) = ca_file {
        for c in read_ca_file(path)? {
            roots
                .add(c)
                .map_err(|e| format!("{}: {e}", path.display()))?;
        }
    }
    if roots.is_empty() {
        return Err(
            "no trusted root certificates: install ca-certificates or set [alerts] ca_file"
                .to_string(),
        );
    }
    // ring explicitly: the dependency tree enables two rustls providers, so none is the default.
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(Arc::new(
        rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots)
            .with_no_client_auth(),
    ))
}

fn to_webhook(w: &Webhook, ca_file: Option<&Path>, alerts: &[Alert], d: &mut Delivery) {
    let fail_all = |d: &mut Delivery, why: &str| {
        for a in alerts {
            d.webhook_failed += 1;
            d.errors.push(format!(
                "webhook {}: alert {} not delivered: {why}",
                shown_url(&w.url),
                a.id
            ));
        }
    };
    // Redirects are not followed: a 3xx would be re-sent as a GET without the alert, and
    // counted as delivered. Only a 2xx answer is a delivery.
    let mut agent = ureq::AgentBuilder::new().timeout(w.timeout).redirects(0);
    if w.url.starts_with("https://") {
        match client_tls(ca_file) {
            Ok(tls) => agent = agent.tls_config(tls),
            Err(e) => return fail_all(d, &e),
        }
    }
    let agent = agent.build();
    // Once the endpoint cannot be reached at all, the rest of this pass is not tried: a hundred
    // queued alerts must not hold the jobs for attempts × timeout each.
    let mut unreachable: Option<String> = None;
    for a in alerts {
        if let Some(why) = &unreachable {
            d.webhook_failed += 1;
            d.errors.push(format!(
                "webhook {}: alert {} not tried (the endpoint failed earlier in this pass: {why})",
                shown_url(&w.url),
                a.id
            ));
            continue;
        }
        let body = serde_json::to_string(a).expect("alert serialises");
        let mut last_err = String::new();
        let mut ok = false;
        let mut transport_failed = false;
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
                    transport_failed = false;
                    last_err = format!(
                        "HTTP status {} (only 2xx counts as delivered; redirects are not followed)",
                        r.status()
                    )
                }
                // ureq's own messages quote the URL, credentials included: not used.
                Err(ureq::Error::Status(code, _)) => {
                    transport_failed = false;
                    last_err = format!("HTTP status {code}")
                }
                Err(ureq::Error::Transport(t)) => {
                    // The causes (a TLS alert, "invalid peer certificate: UnknownIssuer", an
                    // I/O error) do not quote the URL; ureq's Display of `t` would.
                    let mut why = format!("{:?}: {}", t.kind(), t.message().unwrap_or("no detail"));
                    let mut cause = std::error::Error::source(&t);
                    while let Some(c) = cause {
                        why.push_str(&format!(": {c}"));
                        cause = c.source();
                    }
                    last_err = why;
                    transport_failed = true;
                }
            }
        }
        if !ok && transport_failed {
            unreachable = Some(last_err.clone());
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

/// E-mail settings (`[alerts.email]`): SMTP with STARTTLS, always.
#[derive(Debug, Clone)]
pub struct Email {
    pub host: String,
    pub port: u16,
    pub from: String,
    pub to: Vec<String>,
    pub username: Option<String>,
    pub password: Option<Secret>,
    pub timeout: Duration,
}

/// The text of an alert's e-mail: what, where, since when, what to do, and the alert as JSON.
fn email_text(a: &Alert) -> (String, String) {
    let subject = format!(
        "[jinryu] {} {} {}{}",
        a.severity,
        a.kind,
        a.status,
        a.sensor_id
            .as_deref()
            .map(|s| format!(" ({s})"))
            .unwrap_or_default()
    );
    let body = format!(
        "{kind} — {status}, severity {severity}\nsensor: {sensor}\nfrom {start} to {end}\n\n\
         What to do:\n{action}\n\nThe alert as JSON (id {id}):\n{json}\n",
        kind = a.kind,
        status = a.status,
        severity = a.severity,
        sensor = a.sensor_id.as_deref().unwrap_or("(the pipeline)"),
        start = a.start,
        end = a.end,
        action = a.action,
        id = a.id,
        json = serde_json::to_string_pretty(a).expect("alert serialises"),
    );
    (subject, body)
}

fn to_email(e: &Email, ca_file: Option<&Path>, alerts: &[Alert], d: &mut Delivery) {
    use lettre::transport::smtp::authentication::Credentials;
    use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
    use lettre::{Message, SmtpTransport, Transport};
    let mailer = (|| -> Result<SmtpTransport, String> {
        let mut tls = TlsParameters::builder(e.host.clone());
        if let Some(path) = ca_file {
            let pem = std::fs::read(path).map_err(|err| format!("{}: {err}", path.display()))?;
            let cert =
                Certificate::from_pem(&pem).map_err(|err| format!("{}: {err}", path.display()))?;
            tls = tls.add_root_certificate(cert);
        }
        let tls = tls.build_rustls().map_err(|err| err.to_string())?;
        // STARTTLS is required: a server that does not offer it gets nothing, not plain text.
        let mut b = SmtpTransport::builder_dangerous(&e.host)
            .port(e.port)
            .tls(Tls::Required(tls))
            .timeout(Some(e.timeout));
        if let Some(user) = &e.username {
            let password = match &e.password {
                Some(s) => s.read()?,
                None => String::new(),
            };
            b = b.credentials(Credentials::new(user.clone(), password));
        }
        Ok(b.build())
    })();
    let server = format!("{}:{}", e.host, e.port);
    let mailer = match mailer {
        Ok(m) => m,
        Err(why) => {
            for a in alerts {
                d.email_failed += 1;
                d.errors.push(format!(
                    "e-mail via {server}: alert {} not sent: {why}",
                    a.id
                ));
            }
            return;
        }
    };
    for a in alerts {
        let (subject, body) = email_text(a);
        let message = (|| -> Result<Message, String> {
            let mut m = Message::builder()
                .from(e.from.parse().map_err(|err| format!("from: {err}"))?)
                .subject(subject)
                .header(lettre::message::header::ContentType::TEXT_PLAIN);
            for to in &e.to {
                m = m.to(to.parse().map_err(|err| format!("to {to}: {err}"))?);
            }
            m.body(body).map_err(|err| err.to_string())
        })();
        match message.and_then(|m| mailer.send(&m).map_err(|err| err.to_string())) {
            Ok(_) => {
                d.email_sent += 1;
                d.delivered.push((a.id.clone(), "email"));
            }
            Err(why) => {
                d.email_failed += 1;
                d.errors.push(format!(
                    "e-mail via {server}: alert {} not sent: {why}",
                    a.id
                ));
            }
        }
    }
}

/// A URL as logs, errors and alerts show it: scheme, host and port only. User info, query and
/// fragment may carry credentials, and so may the path (Slack, Teams and Discord webhooks carry
/// their token there): `https://user:pass@hooks.example/services/T0/B0/s3cret?x` →
/// `https://hooks.example/…`.
pub fn shown_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(u) => {
            let host = u.host_str().unwrap_or("");
            let port = u.port().map(|p| format!(":{p}")).unwrap_or_default();
            format!("{}://{host}{port}/…", u.scheme())
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
            "http://127.0.0.1:9000/…"
        );
        assert_eq!(
            shown_url("https://hooks.slack.com/services/T0/B0/s3cretToken"),
            "https://hooks.slack.com/…"
        );
        assert_eq!(shown_url("http://127.0.0.1/hook"), "http://127.0.0.1/…");
    }
}
