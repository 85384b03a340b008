//! Issue #10: the network alert routes against real local servers that the test starts — an
//! https webhook (Python's http.server behind TLS) and an SMTP server with STARTTLS and a login
//! (aiosmtpd, from .ci/requirements-test.txt). Certificates come from a throw-away CA made with
//! `openssl`; jinryu trusts it only through `[alerts] ca_file`, so each route is also shown to
//! refuse a server it cannot verify, and e-mail to refuse a server without STARTTLS.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use jinryu::alerts::Alert;
use jinryu::alerts::route::send;
use jinryu::config::Config;
use support::free_port;

/// A CA and a certificate for 127.0.0.1 / localhost signed by it: (ca.pem, cert.pem, key.pem).
fn certificates(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let ca_key = dir.join("ca.key");
    let ca = dir.join("ca.pem");
    let key = dir.join("server.key");
    let csr = dir.join("server.csr");
    let cert = dir.join("server.pem");
    let ext = dir.join("server.ext");
    std::fs::write(
        &ext,
        "basicConstraints=critical,CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\n\
         extendedKeyUsage=serverAuth\nsubjectAltName=IP:127.0.0.1,DNS:localhost\n",
    )
    .unwrap();
    let openssl = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("openssl runs");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-subj",
        "/CN=jinryu test CA",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
    ]);
    openssl(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/CN=127.0.0.1",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
    ]);
    openssl(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        "server.ext",
        "-out",
        "server.pem",
    ]);
    assert!(ca_key.exists() && csr.exists());
    (ca, cert, key)
}

/// A child process killed when dropped.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wait_for_port(port: u16, server: &mut Server) {
    let t0 = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if let Some(status) = server.0.try_wait().unwrap() {
            panic!("the test server exited: {status}");
        }
        assert!(t0.elapsed() < Duration::from_secs(20), "server not up");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// An https server on `port` that keeps every POST body as a line of `bodies` and answers 200.
fn https_server(port: u16, cert: &Path, key: &Path, bodies: &Path) -> Server {
    let script = r#"
import http.server, ssl, sys
port, cert, key, bodies = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
class H(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers['Content-Length']))
        with open(bodies, 'ab') as f:
            f.write(body + b'\n')
        self.send_response(200)
        self.send_header('Content-Length', '0')
        self.end_headers()
    def log_message(self, *a):
        pass
s = http.server.HTTPServer(('127.0.0.1', port), H)
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(cert, key)
s.socket = ctx.wrap_socket(s.socket, server_side=True)
s.serve_forever()
"#;
    let mut s = Server(
        Command::new("python3")
            .args(["-c", script, &port.to_string()])
            .args([cert, key, bodies])
            .stdin(Stdio::null())
            .spawn()
            .expect("python3 runs"),
    );
    wait_for_port(port, &mut s);
    s
}

/// An SMTP server on `port` (aiosmtpd) that keeps every message it accepts in `mails/`, with
/// STARTTLS required and the login `jinryu` / `pw-for-test` when `tls` is on; plain SMTP
/// without STARTTLS when it is off.
fn smtp_server(port: u16, tls: bool, cert: &Path, key: &Path, mails: &Path) -> Server {
    let script = r#"
import asyncio, ssl, sys, os, time
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword
port, tls, cert, key, mails = int(sys.argv[1]), sys.argv[2] == 'tls', sys.argv[3], sys.argv[4], sys.argv[5]
class Keep:
    async def handle_DATA(self, server, session, envelope):
        n = len(os.listdir(mails))
        with open(os.path.join(mails, f'{n:04}.eml'), 'wb') as f:
            f.write(b'X-Test-Login: ' + str(session.authenticated).encode() + b'\r\n')
            f.write(b'X-Test-Rcpt: ' + ','.join(envelope.rcpt_tos).encode() + b'\r\n')
            f.write(envelope.content)
        return '250 OK'
def auth(server, session, envelope, mechanism, data):
    ok = isinstance(data, LoginPassword) and data.login == b'jinryu' and data.password == b'pw-for-test'
    return AuthResult(success=ok)
kw = {}
if tls:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    kw = dict(tls_context=ctx, require_starttls=True, authenticator=auth, auth_require_tls=True)
c = Controller(Keep(), hostname='127.0.0.1', port=port, **kw)
c.start()
while True:
    time.sleep(3600)
"#;
    let mut s = Server(
        Command::new("python3")
            .args(["-c", script, &port.to_string()])
            .arg(if tls { "tls" } else { "plain" })
            .args([cert, key, mails])
            .stdin(Stdio::null())
            .spawn()
            .expect("python3 runs"),
    );
    wait_for_port(port, &mut s);
    s
}

fn an_alert() -> Alert {
    let cfg = Config::chikaho("memory://");
    let mut a = jinryu::alerts::pipeline_alert(
        &cfg,
        "pipeline_unhealthy",
        1_793_600_000_000,
        1_793_600_900_000,
        true,
        serde_json::json!({"detail": "test"}),
        "Nothing to do: a test.",
    );
    a.sensor_id = Some("J2-3".into());
    a
}

/// The Chi-Ka-Ho configuration with `keys` in its `[alerts]` table and `tables` at the end.
fn config_text(keys: &str, tables: &str) -> String {
    let mut text = String::new();
    for line in jinryu::config::CHIKAHO_TOML.lines() {
        text.push_str(line);
        text.push('\n');
        if line.starts_with("[alerts]") {
            text.push_str(keys);
            text.push('\n');
        }
    }
    assert!(
        text.contains(keys),
        "the default configuration has an [alerts] table"
    );
    text.push_str(tables);
    text
}

fn config(keys: &str, tables: &str) -> Config {
    Config::parse(&config_text(keys, tables), "test").unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn https_webhook_verifies_the_server_and_delivers() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = certificates(dir.path());
    let port = free_port();
    let bodies = dir.path().join("bodies.jsonl");
    let _server = https_server(port, &cert, &key, &bodies);
    let alert = an_alert();

    // Trusted through ca_file: delivered, the body is the alert.
    let cfg = config(
        &format!(
            "webhook_url = \"https://127.0.0.1:{port}/hook\"\nca_file = \"{}\"",
            ca.display()
        ),
        "",
    );
    let d = send("webhook", std::slice::from_ref(&alert), &cfg.alerts);
    assert_eq!(
        (d.webhook_delivered, d.webhook_failed),
        (1, 0),
        "{:?}",
        d.errors
    );
    let got: Alert =
        serde_json::from_str(std::fs::read_to_string(&bodies).unwrap().trim()).unwrap();
    assert_eq!(got, alert);

    // Without the CA the server cannot be verified: not delivered, and it says why.
    let cfg = config(
        &format!("webhook_url = \"https://127.0.0.1:{port}/hook\""),
        "",
    );
    let d = send("webhook", std::slice::from_ref(&alert), &cfg.alerts);
    assert_eq!((d.webhook_delivered, d.webhook_failed), (0, 1));
    assert!(
        d.errors[0].to_lowercase().contains("certificate")
            || d.errors[0].to_lowercase().contains("issuer"),
        "{:?}",
        d.errors
    );
    assert_eq!(std::fs::read_to_string(&bodies).unwrap().lines().count(), 1);
}

#[test]
fn email_goes_out_over_starttls_with_a_login_and_never_in_plain_text() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = certificates(dir.path());
    let mails = dir.path().join("mails");
    std::fs::create_dir(&mails).unwrap();
    let port = free_port();
    let _server = smtp_server(port, true, &cert, &key, &mails);
    let alert = an_alert();
    // SAFETY: set before any thread of this test reads the environment; the variable is this
    // test's own.
    unsafe { std::env::set_var("JINRYU_TEST_SMTP_PASSWORD", "pw-for-test") };
    let email = |port: u16, trust_ca: bool| {
        let keys = if trust_ca {
            format!("ca_file = \"{}\"", ca.display())
        } else {
            String::new()
        };
        let table = format!(
            "\n[alerts.email]\nsmtp_host = \"127.0.0.1\"\nsmtp_port = {port}\n\
             from = \"jinryu <jinryu@example.jp>\"\nto = [\"ops@example.jp\", \"city@example.jp\"]\n\
             username = \"jinryu\"\npassword_env = \"JINRYU_TEST_SMTP_PASSWORD\"\ntimeout = \"5s\"\n"
        );
        config(&keys, &table)
    };

    let cfg = email(port, true);
    let d = send("email", std::slice::from_ref(&alert), &cfg.alerts);
    assert_eq!((d.email_sent, d.email_failed), (1, 0), "{:?}", d.errors);
    let sent: Vec<_> = std::fs::read_dir(&mails).unwrap().collect();
    assert_eq!(sent.len(), 1);
    let mail = std::fs::read_to_string(sent[0].as_ref().unwrap().path()).unwrap();
    assert!(mail.contains("X-Test-Login: True"), "logged in: {mail}");
    assert!(
        mail.contains("X-Test-Rcpt: ops@example.jp,city@example.jp"),
        "{mail}"
    );
    assert!(
        mail.contains("Subject: [jinryu] critical pipeline_unhealthy open (J2-3)"),
        "{mail}"
    );
    assert!(mail.contains(&alert.id), "{mail}");
    assert!(!mail.contains("pw-for-test"));

    // A server it cannot verify (no ca_file): refused, nothing sent.
    let cfg = email(port, false);
    let d = send("email", std::slice::from_ref(&alert), &cfg.alerts);
    assert_eq!((d.email_sent, d.email_failed), (0, 1));
    assert!(!d.errors[0].contains("pw-for-test"), "{:?}", d.errors);

    // A server without STARTTLS: refused before anything is sent (the password never travels
    // in plain text).
    let plain_port = free_port();
    let plain_mails = dir.path().join("plain");
    std::fs::create_dir(&plain_mails).unwrap();
    let _plain = smtp_server(plain_port, false, &cert, &key, &plain_mails);
    let cfg = email(plain_port, true);
    let d = send("email", std::slice::from_ref(&alert), &cfg.alerts);
    assert_eq!((d.email_sent, d.email_failed), (0, 1));
    assert!(
        d.errors[0].to_lowercase().contains("tls"),
        "says TLS was missing: {:?}",
        d.errors
    );
    assert_eq!(std::fs::read_dir(&plain_mails).unwrap().count(), 0);
    assert_eq!(std::fs::read_dir(&mails).unwrap().count(), 1);
}

#[test]
fn email_settings_are_checked_when_the_configuration_is_read() {
    let text = config_text(
        "webhook_url = \"ftp://example.jp/x\"\nca_file = \"/no/such/ca.pem\"",
        "\n[alerts.email]\nsmtp_host = \"\"\nfrom = \"not an address\"\nto = []\n\
         password_env = \"s3cret value\"\n",
    );
    let e = Config::parse(&text, "test").unwrap_err().to_string();
    for key in [
        "alerts.webhook_url",
        "alerts.ca_file",
        "alerts.email.smtp_host",
        "alerts.email.from",
        "alerts.email.to",
        "alerts.email.password_env",
    ] {
        assert!(e.contains(key), "{key} reported: {e}");
    }
    assert!(
        !e.contains("s3cret"),
        "the would-be secret is not echoed: {e}"
    );
}
