//! Configuration: `jinryu.toml` parsed once, validated with every problem reported at once, and
//! turned into the typed values the stages use ([`Config`], [`SensorRegistry`], [`WindowSpec`]).
//!
//! Rules: unknown keys are an error that names the key; each error carries its key path and what to
//! do about it; nothing else in the program reads the file or the environment for settings.

use std::collections::HashMap;
use std::fmt;
use std::path::Path;
use std::time::Duration;

use chrono_tz::Tz;
use serde::Deserialize;

use crate::window::time::{ClosedHours, WindowSpec};

/// The default configuration of the Chi-Ka-Ho deployment, used by `jinryu demo` and shipped as
/// `docker/jinryu.toml`.
pub const CHIKAHO_TOML: &str = include_str!("../docker/jinryu.toml");

/// The shortest `[retention] files` accepted: files of a commit in progress must outlive it.
pub const MIN_FILE_RETENTION_MS: i64 = 3_600_000;

/// Most directions a sensor may have (the window state keeps them in a fixed array).
pub const MAX_DIRECTIONS: usize = 8;

/// One problem in a configuration file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigProblem {
    /// Dotted key path, e.g. `sensors[2].directions`.
    pub key: String,
    /// What is wrong and what to do.
    pub message: String,
}

impl fmt::Display for ConfigProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.message)
    }
}

/// All problems found in one configuration file.
#[derive(Debug, thiserror::Error)]
#[error("{source_name}: {} problem(s) in the configuration:\n{}", problems.len(), list(problems))]
pub struct ConfigError {
    pub source_name: String,
    pub problems: Vec<ConfigProblem>,
}

fn list(problems: &[ConfigProblem]) -> String {
    problems
        .iter()
        .map(|p| format!("  - {p}"))
        .collect::<Vec<_>>()
        .join("\n")
}

// ---------------------------------------------------------------------------------------------
// The file as written (all optional, so that one pass can report every problem).

#[derive(Debug, Default, Deserialize)]
struct RawConfig {
    timezone: Option<String>,
    storage: Option<RawStorage>,
    window: Option<RawWindow>,
    facility: Option<RawFacility>,
    validation: Option<RawValidation>,
    sink: Option<RawSink>,
    checks: Option<crate::jobs::checks::Thresholds>,
    alerts: Option<RawAlerts>,
    #[serde(default)]
    sensors: Vec<RawSensor>,
    kafka: Option<RawKafka>,
    service: Option<RawService>,
    retention: Option<RawRetention>,
    report: Option<RawReport>,
    jobs: Option<RawJobs>,
}

#[derive(Debug, Default, Deserialize)]
struct RawReport {
    language: Option<String>,
    pdf: Option<String>,
}

/// Whether the monthly report is printed as PDF (`[report] pdf`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PdfMode {
    /// Printed with headless Chromium; without it the month's files are not built.
    Required,
    /// Printed when Chromium is there, else a warning (the demo; images without Chromium).
    IfAvailable,
    Off,
}

#[derive(Debug, Default, Deserialize)]
struct RawJobs {
    checks: Option<bool>,
    check_interval: Option<String>,
    check_days: Option<u32>,
    monthly: Option<bool>,
    monthly_format: Option<String>,
    monthly_after: Option<String>,
    obligations: Option<bool>,
}

/// Language of the monthly report (`[report] language`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Language {
    Ja,
    En,
}

/// `[jobs]`: what `jinryu run` does besides consuming (each can be turned off).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Jobs {
    /// Data-quality checks every `check_interval`.
    pub checks: bool,
    pub check_interval_ms: i64,
    /// Days before today always checked (besides every day that received data since the last
    /// run, however old).
    pub check_days: u32,
    /// The month's deliverable, once the month is closed.
    pub monthly: bool,
    /// Format file of the deliverable (`None`: the built-in long format).
    pub monthly_format: Option<std::path::PathBuf>,
    /// A month also counts as closed this long after its end (local time), even if a quiet
    /// partition's event time never passed it.
    pub monthly_after_ms: i64,
    /// Reminders and overdue alerts for the contract's deadlines.
    pub obligations: bool,
}

impl Default for Jobs {
    fn default() -> Self {
        Jobs {
            checks: true,
            check_interval_ms: 15 * 60_000,
            check_days: 2,
            monthly: true,
            monthly_format: None,
            monthly_after_ms: 6 * 3_600_000,
            obligations: true,
        }
    }
}

#[derive(Debug, Default, Deserialize)]
struct RawRetention {
    quarantine: Option<String>,
    files: Option<String>,
    compact_after: Option<String>,
}

/// `[retention]`: how long things are kept, and when a date is compacted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Retention {
    /// Quarantine rows older than this (by received date) are expired (`quarantine`, 400 days).
    pub quarantine_ms: i64,
    /// Files no commit needs any more are deleted once older than this (`files`, 7 days).
    pub files_ms: i64,
    /// A date is compacted this long after it closed (its end + allowed lateness;
    /// `compact_after`, 1 hour).
    pub compact_after_ms: i64,
}

#[derive(Debug, Default, Deserialize)]
struct RawService {
    listen: Option<String>,
    idle_timeout: Option<String>,
    flush_interval: Option<String>,
    checkpoint_interval: Option<String>,
    stall_after: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
struct RawStorage {
    url: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
struct RawWindow {
    size: Option<String>,
    allowed_lateness: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
struct RawFacility {
    name: Option<String>,
    #[serde(default)]
    closed: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
struct RawValidation {
    max_message_bytes: Option<usize>,
    max_count: Option<u64>,
    max_future: Option<String>,
    earliest: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
struct RawSink {
    roll_rows: Option<usize>,
    roll_quarantine_bytes: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
struct RawAlerts {
    log_file: Option<String>,
    webhook_url: Option<String>,
    webhook_timeout: Option<String>,
    webhook_attempts: Option<u32>,
    ca_file: Option<String>,
    email: Option<RawEmail>,
}

/// `[alerts.email]` as written.
#[derive(Debug, Default, Deserialize)]
struct RawEmail {
    smtp_host: Option<String>,
    smtp_port: Option<u16>,
    from: Option<String>,
    to: Option<Vec<String>>,
    username: Option<String>,
    password_env: Option<String>,
    password_file: Option<String>,
    timeout: Option<String>,
}

/// Where alerts go besides stdout (`[alerts]`).
#[derive(Debug, Clone, Default)]
pub struct AlertRoutes {
    pub log_file: Option<std::path::PathBuf>,
    pub webhook: Option<crate::alerts::route::Webhook>,
    pub email: Option<crate::alerts::route::Email>,
    /// Extra trusted root certificates (PEM) for https webhooks and SMTP, besides the system's.
    pub ca_file: Option<std::path::PathBuf>,
}

#[derive(Debug, Deserialize)]
struct RawSensor {
    id: Option<String>,
    array: Option<String>,
    directions: Option<Vec<String>>,
}

/// `[kafka]` as written.
#[derive(Debug, Clone, Default, Deserialize)]
struct RawKafka {
    brokers: Option<String>,
    topic: Option<String>,
    group: Option<String>,
    security_protocol: Option<String>,
    sasl_mechanism: Option<String>,
    sasl_username: Option<String>,
    sasl_password_env: Option<String>,
    sasl_password_file: Option<String>,
    ssl_ca_location: Option<String>,
    ssl_certificate_location: Option<String>,
    ssl_key_location: Option<String>,
    ssl_key_password_env: Option<String>,
    ssl_key_password_file: Option<String>,
    properties: Option<std::collections::BTreeMap<String, toml::Value>>,
}

/// Where a secret comes from. The value itself is read when the service starts and never appears
/// in the configuration, logs, errors or `--help`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Secret {
    /// An environment variable's name.
    Env(String),
    /// A file's path (its content, without a trailing newline).
    File(std::path::PathBuf),
}

impl Secret {
    /// Reads the secret; the error names where it was looked for, never a value.
    pub fn read(&self) -> Result<String, String> {
        match self {
            Secret::Env(name) => std::env::var(name)
                .map_err(|_| format!("the environment variable {name} is not set (or not UTF-8)")),
            Secret::File(path) => std::fs::read_to_string(path)
                .map(|s| s.trim_end_matches(['\r', '\n']).to_string())
                .map_err(|e| format!("cannot read the secret file {}: {e}", path.display())),
        }
    }
}

/// Validated `[kafka]`: what `jinryu run` and `jinryu simulate --kafka` connect with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KafkaSettings {
    pub brokers: String,
    pub topic: String,
    pub group: String,
    /// librdkafka properties (`security.protocol`, `sasl.mechanism`, `[kafka.properties]` ...),
    /// without secrets.
    pub properties: std::collections::BTreeMap<String, String>,
    /// librdkafka properties whose values are secrets, and where each comes from.
    pub secrets: Vec<(String, Secret)>,
}

/// The properties librdkafka itself marks sensitive (`_RK_SENSITIVE` in rdkafka_conf.c of the
/// librdkafka 2.12 that rdkafka-sys builds), and their aliases. Refused in `[kafka.properties]`
/// whatever their case (the `kafka.*_env` / `*_file` keys and `kafka.sasl_username`,
/// `kafka.ssl_key_location` carry what jinryu supports) and masked wherever properties are shown.
pub const SECRET_PROPERTIES: [&str; 15] = [
    "sasl.username",
    "sasl.password",
    "ssl.key.location",
    "ssl.key.password",
    "ssl.key.pem",
    "ssl_key",
    "ssl.ca.pem",
    "ssl.keystore.password",
    "sasl.oauthbearer.config",
    "sasl.oauthbearer.client.secret",
    "sasl.oauthbearer.client.credentials.client.secret", // alias of the previous
    "sasl.oauthbearer.assertion.private.key.file",
    "sasl.oauthbearer.assertion.private.key.passphrase",
    "sasl.oauthbearer.assertion.private.key.pem",
    "ssl.keystore.location",
];

/// librdkafka properties that make the process load or run code: plugin libraries, OpenSSL
/// engines and providers, a shell command for Kerberos. Refused in `[kafka.properties]`: a
/// configuration file must never be a way to run code as the service.
pub const CODE_LOADING_PROPERTIES: [&str; 5] = [
    "plugin.library.paths",
    "ssl.engine.location",
    "ssl.engine.id",
    "ssl.providers",
    "sasl.kerberos.kinit.cmd",
];

/// Whether a librdkafka property holds a secret (case-insensitive, aliases included).
pub fn is_secret_property(key: &str) -> bool {
    SECRET_PROPERTIES
        .iter()
        .any(|p| p.eq_ignore_ascii_case(key.trim()))
}

/// `[alerts.email]`: where, from and to whom, and the login (its password by reference only).
fn validate_email(
    e: RawEmail,
    problems: &mut Vec<ConfigProblem>,
) -> Option<crate::alerts::route::Email> {
    let before = problems.len();
    let host = e.smtp_host.filter(|h| !h.trim().is_empty());
    if host.is_none() {
        problem(
            problems,
            "alerts.email.smtp_host",
            "required: the SMTP server (STARTTLS on smtp_port, 587 by default)",
        );
    }
    let from = e.from.unwrap_or_default();
    if from.parse::<lettre::message::Mailbox>().is_err() {
        problem(
            problems,
            "alerts.email.from",
            format!("`{from}` is not an e-mail address (e.g. \"jinryu <jinryu@example.jp>\")"),
        );
    }
    let to = e.to.unwrap_or_default();
    if to.is_empty() {
        problem(problems, "alerts.email.to", "required: a list of addresses");
    }
    for t in &to {
        if t.parse::<lettre::message::Mailbox>().is_err() {
            problem(
                problems,
                "alerts.email.to",
                format!("`{t}` is not an e-mail address"),
            );
        }
    }
    let password = match (e.password_env, e.password_file) {
        (Some(_), Some(_)) => {
            problem(
                problems,
                "alerts.email.password_env",
                "set either password_env or password_file, not both",
            );
            None
        }
        (Some(name), None) if !env_name_ok(&name) => {
            problem(
                problems,
                "alerts.email.password_env",
                "must name an environment variable (letters, digits and _), e.g. \
                 \"JINRYU_SMTP_PASSWORD\"; what is written there is not shown, since it may be \
                 the secret itself",
            );
            None
        }
        (Some(name), None) => Some(Secret::Env(name)),
        (None, Some(path)) => Some(Secret::File(path.into())),
        (None, None) => None,
    };
    if password.is_some() && e.username.is_none() {
        problem(
            problems,
            "alerts.email.username",
            "a password is set without a username",
        );
    }
    let timeout = duration_ms(
        problems,
        "alerts.email.timeout",
        e.timeout.as_deref(),
        "10s",
    );
    (problems.len() == before).then(|| crate::alerts::route::Email {
        host: host.unwrap_or_default(),
        port: e.smtp_port.unwrap_or(587),
        from,
        to,
        username: e.username,
        password,
        timeout: std::time::Duration::from_millis(timeout.unwrap_or(10_000) as u64),
    })
}

/// Whether `name` can be an environment variable's name (letters, digits, `_`, not starting with
/// a digit). Anything else was probably the secret itself, written into a `*_env` key by mistake.
fn env_name_ok(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Validated `[service]`: the running service's clocks and its monitoring endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceSettings {
    /// Address of `/healthz` and `/metrics` (loopback by default).
    pub listen: std::net::SocketAddr,
    /// A partition that has been quiet this long moves its event time by wall clock.
    pub idle_timeout_ms: i64,
    /// Final rows wait at most this long before they are written.
    pub flush_interval_ms: i64,
    /// A partition that consumed anything is checkpointed at least this often.
    pub checkpoint_interval_ms: i64,
    /// Raise a pipeline alert when records wait but nothing was committed for this long.
    pub stall_after_ms: i64,
}

impl Default for ServiceSettings {
    fn default() -> Self {
        ServiceSettings {
            listen: "127.0.0.1:9464".parse().expect("address"),
            idle_timeout_ms: 120_000,
            flush_interval_ms: 10_000,
            checkpoint_interval_ms: 30_000,
            stall_after_ms: 600_000,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The validated configuration.

/// Limits applied when decoding a message (see `schemas/sensor-event.schema.json`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Larger messages are quarantined as `too_large`.
    pub max_message_bytes: usize,
    /// Largest `count` one message may carry.
    pub max_count: u64,
    /// How far ahead of the wall clock an event time may be, in milliseconds.
    pub max_future_ms: i64,
    /// Event times before this (epoch milliseconds) are quarantined as `timestamp_out_of_range`.
    pub earliest_ms: i64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_message_bytes: 4096,
            max_count: 1000,
            max_future_ms: 3_600_000,
            earliest_ms: 946_684_800_000, // 2000-01-01T00:00:00Z
        }
    }
}

/// One configured sensor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sensor {
    pub id: String,
    pub array: String,
    pub directions: Vec<String>,
}

/// The sensor registry: the only sensors whose events are accepted, in configuration order.
#[derive(Debug, Clone)]
pub struct SensorRegistry {
    sensors: Vec<Sensor>,
    /// id → index for ids of up to 15 bytes, packed into the key ([`short_key`]): this lookup
    /// runs once per message, and a key held inline needs no visit to a string on the heap.
    short: HashMap<u128, u32, foldhash::fast::RandomState>,
    /// id → index for longer ids.
    long: HashMap<String, u32, foldhash::fast::RandomState>,
}

/// An id of up to 15 bytes as one number: its bytes, then its length in the last byte (so that
/// no two ids share a key).
#[inline]
fn short_key(id: &str) -> Option<u128> {
    let b = id.as_bytes();
    if b.len() > 15 {
        return None;
    }
    let mut key = [0u8; 16];
    key[..b.len()].copy_from_slice(b);
    key[15] = b.len() as u8;
    Some(u128::from_le_bytes(key))
}

impl SensorRegistry {
    pub fn new(sensors: Vec<Sensor>) -> Self {
        let (mut short, mut long) = (HashMap::default(), HashMap::default());
        for (i, s) in sensors.iter().enumerate() {
            match short_key(&s.id) {
                Some(k) => short.insert(k, i as u32),
                None => long.insert(s.id.clone(), i as u32),
            };
        }
        SensorRegistry {
            sensors,
            short,
            long,
        }
    }
    /// Index of a sensor id, if registered.
    #[inline]
    pub fn lookup(&self, id: &str) -> Option<u32> {
        match short_key(id) {
            Some(k) => self.short.get(&k).copied(),
            None => self.long.get(id).copied(),
        }
    }
    #[inline]
    pub fn get(&self, idx: u32) -> &Sensor {
        &self.sensors[idx as usize]
    }
    /// Index of `direction` among the sensor's configured directions.
    #[inline]
    pub fn direction(&self, idx: u32, direction: &str) -> Option<u8> {
        self.sensors[idx as usize]
            .directions
            .iter()
            .position(|d| d == direction)
            .map(|p| p as u8)
    }
    pub fn sensors(&self) -> &[Sensor] {
        &self.sensors
    }
    pub fn len(&self) -> usize {
        self.sensors.len()
    }
    pub fn is_empty(&self) -> bool {
        self.sensors.is_empty()
    }
}

/// The whole validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// `facility.name`: shown in reports.
    pub facility_name: String,
    pub timezone: Tz,
    pub storage_url: String,
    pub window: WindowSpec,
    pub limits: Limits,
    /// `[sink] roll_rows`, `roll_quarantine_bytes`: when buffers are committed.
    pub roll: crate::driver::Roll,
    pub registry: SensorRegistry,
    /// `[kafka]`, if present.
    pub kafka: Option<KafkaSettings>,
    /// `[service]` (defaults when absent).
    pub service: ServiceSettings,
    /// `[retention]` (defaults when absent).
    pub retention: Retention,
    /// Thresholds of `jinryu check` (`[checks]`).
    pub checks: crate::jobs::checks::Thresholds,
    /// Alert routes (`[alerts]`).
    pub alerts: AlertRoutes,
    /// `[report] language` (default `ja`).
    pub language: Language,
    /// `[report] pdf` (default `required`).
    pub pdf: PdfMode,
    /// `[jobs]` of `jinryu run`.
    pub jobs: Jobs,
}

impl Config {
    /// Reads and validates a configuration file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let name = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            source_name: name.clone(),
            problems: vec![ConfigProblem {
                key: "(file)".into(),
                message: format!(
                    "cannot read the configuration file: {e}. Pass an existing file with --config \
                     (docker/jinryu.toml in the repository is a complete example)."
                ),
            }],
        })?;
        Config::parse(&text, &name)
    }

    /// Parses and validates configuration text; `source_name` names it in errors.
    pub fn parse(text: &str, source_name: &str) -> Result<Config, ConfigError> {
        let fail = |problems| ConfigError {
            source_name: source_name.to_string(),
            problems,
        };
        let mut unknown = Vec::new();
        let de = toml::Deserializer::parse(text).map_err(|e| {
            fail(vec![ConfigProblem {
                key: "(syntax)".into(),
                message: format!("not valid TOML: {}", e.to_string().trim_end()),
            }])
        })?;
        let raw: RawConfig = serde_ignored::deserialize(de, |path| unknown.push(path.to_string()))
            .map_err(|e| {
                fail(vec![ConfigProblem {
                    key: "(types)".into(),
                    message: format!(
                        "{} (see docker/jinryu.toml for the expected shape)",
                        e.to_string().trim_end()
                    ),
                }])
            })?;
        let mut problems: Vec<ConfigProblem> = unknown
            .into_iter()
            .map(|key| ConfigProblem {
                message: format!(
                    "unknown key `{key}`; remove it or check its spelling (known sections: timezone, \
                     storage, window, facility, validation, sink, checks, alerts, sensors, kafka, service, retention, report, jobs)"
                ),
                key,
            })
            .collect();
        let cfg = validate(raw, &mut problems);
        if problems.is_empty() {
            Ok(cfg.expect("validated config"))
        } else {
            Err(fail(problems))
        }
    }

    /// The embedded Chi-Ka-Ho configuration with its storage pointed at `storage_url`.
    pub fn chikaho(storage_url: &str) -> Config {
        let mut cfg = Config::parse(CHIKAHO_TOML, "docker/jinryu.toml").expect("embedded config");
        cfg.storage_url = storage_url.to_string();
        cfg
    }
}

fn problem(problems: &mut Vec<ConfigProblem>, key: impl Into<String>, message: impl Into<String>) {
    problems.push(ConfigProblem {
        key: key.into(),
        message: message.into(),
    });
}

fn duration_ms(
    problems: &mut Vec<ConfigProblem>,
    key: &str,
    value: Option<&str>,
    default: &str,
) -> Option<i64> {
    let text = value.unwrap_or(default);
    match humantime::parse_duration(text) {
        Ok(d) => Some(d.as_millis() as i64),
        Err(e) => {
            problem(
                problems,
                key,
                format!(
                    "`{text}` is not a duration ({e}); write it like \"15m\", \"90s\" or \"1h\""
                ),
            );
            None
        }
    }
}

fn validate(raw: RawConfig, problems: &mut Vec<ConfigProblem>) -> Option<Config> {
    let tz_name = raw.timezone.as_deref().unwrap_or("Asia/Tokyo");
    let timezone = match tz_name.parse::<Tz>() {
        Ok(tz) => Some(tz),
        Err(_) => {
            problem(
                problems,
                "timezone",
                format!("`{tz_name}` is not an IANA time zone name; write e.g. \"Asia/Tokyo\""),
            );
            None
        }
    };

    let storage_url = raw
        .storage
        .and_then(|s| s.url)
        .unwrap_or_else(|| "file://./jinryu-data".to_string());
    if let Err(msg) = crate::sink::store::check_url(&storage_url) {
        problem(problems, "storage.url", msg);
    }

    let w = raw.window.unwrap_or_default();
    let size_ms = duration_ms(problems, "window.size", w.size.as_deref(), "15m");
    let lateness_ms = duration_ms(
        problems,
        "window.allowed_lateness",
        w.allowed_lateness.as_deref(),
        "10m",
    );
    if let Some(size) = size_ms
        && (size < 60_000 || 86_400_000 % size != 0 || size % 60_000 != 0)
    {
        problem(
            problems,
            "window.size",
            "the window size must be whole minutes and divide a day evenly (e.g. \"15m\", \"30m\", \"1h\")",
        );
    }
    if let Some(l) = lateness_ms
        && !(0..=86_400_000).contains(&l)
    {
        problem(
            problems,
            "window.allowed_lateness",
            "allowed lateness must be between 0s and 24h",
        );
    }

    let facility = raw.facility.unwrap_or_default();
    let facility_name = facility
        .name
        .clone()
        .unwrap_or_else(|| "jinryu".to_string());
    let mut closed = Vec::new();
    for (i, range) in facility.closed.iter().enumerate() {
        match ClosedHours::parse(range) {
            Ok(c) => closed.push(c),
            Err(msg) => problem(problems, format!("facility.closed[{i}]"), msg),
        }
    }

    let v = raw.validation.unwrap_or_default();
    let defaults = Limits::default();
    let max_future_ms = duration_ms(
        problems,
        "validation.max_future",
        v.max_future.as_deref(),
        "1h",
    );
    let earliest_ms = match v.earliest.as_deref() {
        None => Some(defaults.earliest_ms),
        Some(text) => match chrono::DateTime::parse_from_rfc3339(text) {
            Ok(t) => Some(t.timestamp_millis()),
            Err(e) => {
                problem(
                    problems,
                    "validation.earliest",
                    format!(
                        "`{text}` is not an RFC 3339 time with offset ({e}); write e.g. \"2020-01-01T00:00:00+09:00\""
                    ),
                );
                None
            }
        },
    };
    let limits = Limits {
        max_message_bytes: v.max_message_bytes.unwrap_or(defaults.max_message_bytes),
        max_count: v.max_count.unwrap_or(defaults.max_count),
        max_future_ms: max_future_ms.unwrap_or(defaults.max_future_ms),
        earliest_ms: earliest_ms.unwrap_or(defaults.earliest_ms),
    };
    if !(64..=1 << 20).contains(&limits.max_message_bytes) {
        problem(
            problems,
            "validation.max_message_bytes",
            "must be between 64 and 1048576",
        );
    }
    if limits.max_count == 0 {
        problem(problems, "validation.max_count", "must be at least 1");
    }
    if limits.max_count > u64::from(u32::MAX) {
        problem(
            problems,
            "validation.max_count",
            format!(
                "{} is above 4294967295, the largest count the aggregates table holds per \
                 message; a real sensor reports far less (the Chi-Ka-Ho default is 1000)",
                limits.max_count
            ),
        );
    }

    let sink = raw.sink.unwrap_or_default();
    let roll = crate::driver::Roll {
        rows: sink.roll_rows.unwrap_or(1_000_000),
        quarantine_bytes: sink.roll_quarantine_bytes.unwrap_or(8 << 20),
    };
    if roll.rows == 0 {
        problem(problems, "sink.roll_rows", "must be at least 1");
    }
    if roll.quarantine_bytes < limits.max_message_bytes {
        problem(
            problems,
            "sink.roll_quarantine_bytes",
            format!(
                "{} is less than one message (validation.max_message_bytes = {}); the default is \
                 8388608 (8 MiB)",
                roll.quarantine_bytes, limits.max_message_bytes
            ),
        );
    }

    if raw.sensors.is_empty() {
        problem(
            problems,
            "sensors",
            "no sensors are configured; add one [[sensors]] table per counter with id, array and directions",
        );
    }
    let mut sensors = Vec::new();
    let mut seen = HashMap::new();
    for (i, s) in raw.sensors.into_iter().enumerate() {
        let key = format!("sensors[{i}]");
        let Some(id) = s.id.filter(|id| !id.trim().is_empty()) else {
            problem(
                problems,
                format!("{key}.id"),
                "every sensor needs a non-empty id",
            );
            continue;
        };
        if id.len() > 64 || id.chars().any(|c| c.is_control() || c == '/') {
            problem(
                problems,
                format!("{key}.id"),
                format!(
                    "sensor id `{id}` must be at most 64 characters, without '/' or control characters"
                ),
            );
        }
        if let Some(prev) = seen.insert(id.clone(), i) {
            problem(
                problems,
                format!("{key}.id"),
                format!("sensor id `{id}` is already used by sensors[{prev}]; ids must be unique"),
            );
        }
        let array = s.array.unwrap_or_default();
        if array.trim().is_empty() {
            problem(
                problems,
                format!("{key}.array"),
                format!("sensor `{id}` needs an array (e.g. \"J1\")"),
            );
        }
        let directions = s
            .directions
            .unwrap_or_else(|| vec!["north".into(), "south".into()]);
        if directions.is_empty() || directions.len() > MAX_DIRECTIONS {
            problem(
                problems,
                format!("{key}.directions"),
                format!("sensor `{id}` needs between 1 and {MAX_DIRECTIONS} directions"),
            );
        }
        let mut uniq = directions.clone();
        uniq.sort();
        uniq.dedup();
        if uniq.len() != directions.len() || directions.iter().any(|d| d.trim().is_empty()) {
            problem(
                problems,
                format!("{key}.directions"),
                format!("sensor `{id}` lists an empty or repeated direction"),
            );
        }
        sensors.push(Sensor {
            id,
            array,
            directions,
        });
    }

    let checks = raw.checks.unwrap_or_default();
    if checks.level_k <= 0.0 || !(0.0..=1.0).contains(&checks.late_rate) {
        problem(
            problems,
            "checks",
            "level_k must be positive and late_rate between 0 and 1",
        );
    }
    let a = raw.alerts.unwrap_or_default();
    let webhook_timeout = duration_ms(
        problems,
        "alerts.webhook_timeout",
        a.webhook_timeout.as_deref(),
        "5s",
    );
    let webhook = match a.webhook_url {
        None => None,
        Some(url) if url.starts_with("http://") || url.starts_with("https://") => {
            Some(crate::alerts::route::Webhook {
                url,
                timeout: std::time::Duration::from_millis(webhook_timeout.unwrap_or(5000) as u64),
                attempts: a.webhook_attempts.unwrap_or(3).max(1),
            })
        }
        Some(url) => {
            problem(
                problems,
                "alerts.webhook_url",
                format!(
                    "`{}`: an http:// or https:// URL",
                    crate::alerts::route::shown_url(&url)
                ),
            );
            None
        }
    };
    let ca_file = a.ca_file.map(std::path::PathBuf::from);
    if let Some(path) = &ca_file
        && let Err(e) = crate::alerts::route::read_ca_file(path)
    {
        problem(problems, "alerts.ca_file", e);
    }
    let email = a.email.and_then(|e| validate_email(e, problems));
    let alerts = AlertRoutes {
        log_file: a.log_file.map(std::path::PathBuf::from),
        webhook,
        email,
        ca_file,
    };

    let kafka = raw.kafka.map(|k| validate_kafka(k, problems));
    let service = validate_service(raw.service.unwrap_or_default(), problems);
    let r = raw.retention.unwrap_or_default();
    let quarantine_ms = duration_ms(
        problems,
        "retention.quarantine",
        r.quarantine.as_deref(),
        "400d",
    );
    let files_ms = duration_ms(problems, "retention.files", r.files.as_deref(), "7d");
    let compact_after_ms = duration_ms(
        problems,
        "retention.compact_after",
        r.compact_after.as_deref(),
        "1h",
    );
    if files_ms.is_some_and(|f| f < MIN_FILE_RETENTION_MS) {
        problem(
            problems,
            "retention.files",
            "must be at least 1h: a commit in progress has files that no commit names yet, and a \
             shorter retention could delete them",
        );
    }
    if quarantine_ms.is_some_and(|q| q < 86_400_000) {
        problem(problems, "retention.quarantine", "must be at least 1d");
    }

    let report = raw.report.unwrap_or_default();
    let pdf = match report.pdf.as_deref() {
        None | Some("required") => PdfMode::Required,
        Some("if_available") => PdfMode::IfAvailable,
        Some("off") => PdfMode::Off,
        Some(other) => {
            problem(
                problems,
                "report.pdf",
                format!("`{other}`: use \"required\" (the default), \"if_available\" or \"off\""),
            );
            PdfMode::Required
        }
    };
    let language = match report.language.as_deref() {
        None | Some("ja") => Language::Ja,
        Some("en") => Language::En,
        Some(other) => {
            problem(
                problems,
                "report.language",
                format!("`{other}`: use \"ja\" (Japanese, the default) or \"en\""),
            );
            Language::Ja
        }
    };
    let jobs = validate_jobs(raw.jobs.unwrap_or_default(), problems);

    Some(Config {
        facility_name,
        timezone: timezone?,
        storage_url,
        window: WindowSpec::new(size_ms?, lateness_ms?, timezone?, closed),
        limits,
        roll,
        registry: SensorRegistry::new(sensors),
        kafka: kafka.flatten(),
        service: service?,
        retention: Retention {
            quarantine_ms: quarantine_ms?,
            files_ms: files_ms?,
            compact_after_ms: compact_after_ms?,
        },
        checks,
        alerts,
        language,
        pdf,
        jobs: jobs?,
    })
}

fn validate_jobs(j: RawJobs, problems: &mut Vec<ConfigProblem>) -> Option<Jobs> {
    let d = Jobs::default();
    let interval = duration_ms(
        problems,
        "jobs.check_interval",
        j.check_interval.as_deref(),
        "15m",
    );
    if interval.is_some_and(|i| i < 1_000) {
        problem(
            problems,
            "jobs.check_interval",
            "must be at least 1s (the default is 15m)",
        );
    }
    let after = duration_ms(
        problems,
        "jobs.monthly_after",
        j.monthly_after.as_deref(),
        "6h",
    );
    Some(Jobs {
        checks: j.checks.unwrap_or(d.checks),
        check_interval_ms: interval?,
        check_days: j.check_days.unwrap_or(d.check_days),
        monthly: j.monthly.unwrap_or(d.monthly),
        monthly_format: j.monthly_format.map(std::path::PathBuf::from),
        monthly_after_ms: after?,
        obligations: j.obligations.unwrap_or(d.obligations),
    })
}

fn validate_kafka(k: RawKafka, problems: &mut Vec<ConfigProblem>) -> Option<KafkaSettings> {
    use std::collections::BTreeMap;
    let mut ok = true;
    let mut required = |key: &str, v: Option<String>, example: &str| match v {
        Some(v) if !v.trim().is_empty() => v,
        _ => {
            problem(
                problems,
                format!("kafka.{key}"),
                format!("is required for the Kafka service; e.g. {key} = \"{example}\""),
            );
            ok = false;
            String::new()
        }
    };
    let brokers = required("brokers", k.brokers, "127.0.0.1:9092");
    let topic = required("topic", k.topic, "jinryu.events");
    let group = k.group.unwrap_or_else(|| "jinryu".to_string());
    let mut properties = BTreeMap::new();
    let mut secrets = Vec::new();
    // Only what this build's librdkafka supports (SSL and SCRAM; no Kerberos/GSSAPI).
    for (key, prop, value, allowed) in [
        (
            "security_protocol",
            "security.protocol",
            k.security_protocol.map(|v| v.to_ascii_lowercase()),
            &["plaintext", "ssl", "sasl_plaintext", "sasl_ssl"][..],
        ),
        (
            "sasl_mechanism",
            "sasl.mechanism",
            k.sasl_mechanism.map(|v| v.to_ascii_uppercase()),
            &["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"][..],
        ),
    ] {
        let Some(v) = value else { continue };
        if allowed.contains(&v.as_str()) {
            properties.insert(prop.to_string(), v);
        } else {
            problem(
                problems,
                format!("kafka.{key}"),
                format!("`{v}`: use one of {}", allowed.join(", ")),
            );
            ok = false;
        }
    }
    if let Some(u) = k.sasl_username {
        properties.insert("sasl.username".to_string(), u);
    }
    for (key, value) in [
        ("ssl_ca_location", k.ssl_ca_location),
        ("ssl_certificate_location", k.ssl_certificate_location),
        ("ssl_key_location", k.ssl_key_location),
    ] {
        if let Some(v) = value {
            properties.insert(key.replace('_', "."), v);
        }
    }
    for (prop, env, file, key) in [
        (
            "sasl.password",
            k.sasl_password_env,
            k.sasl_password_file,
            "sasl_password",
        ),
        (
            "ssl.key.password",
            k.ssl_key_password_env,
            k.ssl_key_password_file,
            "ssl_key_password",
        ),
    ] {
        match (env, file) {
            (Some(_), Some(_)) => {
                problem(
                    problems,
                    format!("kafka.{key}_env"),
                    format!("set either {key}_env or {key}_file, not both"),
                );
                ok = false;
            }
            (Some(e), None) if !env_name_ok(&e) => {
                problem(
                    problems,
                    format!("kafka.{key}_env"),
                    "must name an environment variable (letters, digits and _), e.g. \
                     \"JINRYU_KAFKA_PASSWORD\"; what is written there is not shown, since it may \
                     be the secret itself",
                );
                ok = false;
            }
            (Some(e), None) => secrets.push((prop.to_string(), Secret::Env(e))),
            (None, Some(f)) => secrets.push((prop.to_string(), Secret::File(f.into()))),
            (None, None) => {}
        }
    }
    for (key, value) in k.properties.unwrap_or_default() {
        let path = format!("kafka.properties.\"{key}\"");
        if is_secret_property(&key) {
            problem(
                problems,
                path,
                "librdkafka treats this property as sensitive: it does not belong in the \
                 configuration file (its value is not shown); use kafka.sasl_username, \
                 sasl_password_env / sasl_password_file, ssl_key_location and \
                 ssl_key_password_env / ssl_key_password_file",
            );
            ok = false;
            continue;
        }
        if CODE_LOADING_PROPERTIES
            .iter()
            .any(|p| p.eq_ignore_ascii_case(key.trim()))
        {
            problem(
                problems,
                path,
                "makes librdkafka load a library or run a command; jinryu refuses it (the \
                 configuration must never be a way to run code as the service)",
            );
            ok = false;
            continue;
        }
        if key.bytes().any(|b| b.is_ascii_uppercase()) {
            problem(
                problems,
                path,
                "librdkafka property names are lower case (e.g. \"fetch.max.bytes\")",
            );
            ok = false;
            continue;
        }
        if ["group.id", "bootstrap.servers", "enable.auto.commit"].contains(&key.as_str()) {
            problem(
                problems,
                path,
                "is set by jinryu (use kafka.brokers / kafka.group; offsets are committed by \
                 jinryu after the data is stored)",
            );
            ok = false;
            continue;
        }
        let text = match value {
            toml::Value::String(s) => s,
            toml::Value::Integer(i) => i.to_string(),
            toml::Value::Boolean(b) => b.to_string(),
            toml::Value::Float(f) => f.to_string(),
            other => {
                problem(
                    problems,
                    path,
                    format!("`{other}`: librdkafka properties are strings, numbers or booleans"),
                );
                ok = false;
                continue;
            }
        };
        properties.insert(key, text);
    }
    ok.then_some(KafkaSettings {
        brokers,
        topic,
        group,
        properties,
        secrets,
    })
}

fn validate_service(s: RawService, problems: &mut Vec<ConfigProblem>) -> Option<ServiceSettings> {
    let d = ServiceSettings::default();
    let listen = match s.listen {
        None => Some(d.listen),
        Some(text) => match text.parse() {
            Ok(a) => Some(a),
            Err(_) => {
                problem(
                    problems,
                    "service.listen",
                    format!("`{text}` is not an address; write e.g. \"127.0.0.1:9464\""),
                );
                None
            }
        },
    };
    let idle = duration_ms(
        problems,
        "service.idle_timeout",
        s.idle_timeout.as_deref(),
        "2m",
    );
    let flush = duration_ms(
        problems,
        "service.flush_interval",
        s.flush_interval.as_deref(),
        "10s",
    );
    let ckpt = duration_ms(
        problems,
        "service.checkpoint_interval",
        s.checkpoint_interval.as_deref(),
        "30s",
    );
    let stall = duration_ms(
        problems,
        "service.stall_after",
        s.stall_after.as_deref(),
        "10m",
    );
    for (key, v) in [
        ("service.idle_timeout", idle),
        ("service.flush_interval", flush),
        ("service.checkpoint_interval", ckpt),
        ("service.stall_after", stall),
    ] {
        if v == Some(0) {
            problem(problems, key, "must be longer than zero");
        }
    }
    Some(ServiceSettings {
        listen: listen?,
        idle_timeout_ms: idle?,
        flush_interval_ms: flush?,
        checkpoint_interval_ms: ckpt?,
        stall_after_ms: stall?,
    })
}

/// Parses a human duration such as `"15m"` (used by command-line flags too).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text).map_err(|e| format!("`{text}` is not a duration ({e})"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_lookup_tells_short_long_and_look_alike_ids_apart() {
        let ids = [
            "S1",
            "S1\0",
            "S10",
            "exactly15bytes!",
            "sixteen-bytes-id",
            "a-very-long-sensor-id-0001",
        ];
        let registry = SensorRegistry::new(
            ids.iter()
                .map(|id| Sensor {
                    id: id.to_string(),
                    array: "A".into(),
                    directions: vec!["in".into()],
                })
                .collect(),
        );
        for (i, id) in ids.iter().enumerate() {
            assert_eq!(registry.lookup(id), Some(i as u32), "{id:?}");
        }
        for unknown in [
            "",
            "S",
            "S1\0\0",
            "S2",
            "exactly15bytes?",
            "a-very-long-sensor-id-0002",
        ] {
            assert_eq!(registry.lookup(unknown), None, "{unknown:?}");
        }
    }

    #[test]
    fn embedded_chikaho_config_is_valid() {
        let cfg = Config::chikaho("memory://");
        assert_eq!(cfg.registry.len(), 8);
        assert_eq!(cfg.timezone, chrono_tz::Asia::Tokyo);
        assert_eq!(cfg.window.size_ms, 900_000);
        let arrays: Vec<_> = cfg
            .registry
            .sensors()
            .iter()
            .map(|s| s.array.as_str())
            .collect();
        assert_eq!(arrays.iter().filter(|a| **a == "J1").count(), 3);
        assert_eq!(arrays.iter().filter(|a| **a == "J2").count(), 5);
    }

    #[test]
    fn every_problem_is_reported_with_its_key() {
        let text = r#"
timezone = "Mars/Olympus"
colour = "blue"
[window]
size = "7m"
allowed_lateness = "soon"
[facility]
closed = ["25:00-03:00"]
[[sensors]]
id = "A"
array = "X"
directions = ["in", "in"]
speed = 3
[[sensors]]
id = "A"
"#;
        let err = Config::parse(text, "t.toml").unwrap_err();
        let keys: Vec<_> = err.problems.iter().map(|p| p.key.as_str()).collect();
        for want in [
            "colour",
            "sensors.0.speed",
            "timezone",
            "window.size",
            "window.allowed_lateness",
            "facility.closed[0]",
            "sensors[0].directions",
            "sensors[1].id",
            "sensors[1].array",
        ] {
            assert!(keys.contains(&want), "missing {want} in {keys:?}");
        }
        assert!(err.to_string().contains("unknown key `colour`"));
    }

    #[test]
    fn syntax_and_type_errors_are_reported() {
        let err = Config::parse("timezone = ", "t.toml").unwrap_err();
        assert_eq!(err.problems[0].key, "(syntax)");
        let err = Config::parse("sensors = 3", "t.toml").unwrap_err();
        assert_eq!(err.problems[0].key, "(types)");
    }
}
