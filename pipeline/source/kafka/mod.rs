//! Stage 0 for the service — Kafka records in. Builds librdkafka's configuration from `[kafka]`
//! (secrets resolved here, at start, and never shown) and classifies each record: a tombstone or a
//! key that is not UTF-8 is rejected before the value is decoded; the value goes through the same
//! [`Decoder`] as file input. [`consumer`] holds the group member's callbacks (rebalances, lag,
//! client errors) and [`batch`] the polling loop that copies records out in batches.

pub mod batch;
pub mod consumer;

use rdkafka::ClientConfig;

use crate::config::{KafkaSettings, is_secret_property};
use crate::event::{Decoder, Event, Reason, Rejection};

/// librdkafka configuration for `settings`, plus `extra` properties (consumer or producer ones).
/// Secrets are read from their environment variable or file now; errors never contain a value.
pub fn client_config(
    settings: &KafkaSettings,
    extra: &[(&str, &str)],
) -> Result<ClientConfig, String> {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &settings.brokers);
    for (k, v) in extra {
        c.set(*k, *v);
    }
    for (k, v) in &settings.properties {
        c.set(k, v);
    }
    for (prop, secret) in &settings.secrets {
        let value = secret
            .read()
            .map_err(|e| format!("kafka: cannot read the secret for {prop}: {e}"))?;
        c.set(prop, value);
    }
    Ok(c)
}

/// Why librdkafka refused to create a client, without any configured value: librdkafka's own
/// messages quote the value they refused (`Invalid value "..." for configuration property`), and
/// that value may be a secret. Names the property and removes every configured value from the text.
pub fn client_error(
    what: &str,
    settings: &KafkaSettings,
    e: &rdkafka::error::KafkaError,
) -> String {
    use rdkafka::error::KafkaError;
    let text = match e {
        KafkaError::ClientConfig(_, desc, key, _) => {
            format!("librdkafka refused the property `{key}` (its value is not shown): {desc}")
        }
        other => other.to_string(),
    };
    let mut values: Vec<String> = settings
        .properties
        .values()
        .filter(|v| v.len() >= 3)
        .cloned()
        .collect();
    values.extend(settings.secrets.iter().filter_map(|(_, s)| s.read().ok()));
    values.sort_by_key(|v| std::cmp::Reverse(v.len()));
    let mut text = text;
    for v in values.iter().filter(|v| !v.is_empty()) {
        text = text.replace(v.as_str(), "****");
    }
    format!("cannot create the Kafka {what}: {text}")
}

/// A partition's end (high watermark) as librdkafka last saw it in a fetch response — no request
/// is sent. `None` before the partition's first fetch response.
///
/// The service only lets wall-clock time close a partition's windows when it has consumed up to
/// this offset: "nothing arrived for a while" must mean "nothing is waiting", not "the consumer
/// was busy" (see `service::Shared::tick`). rdkafka 0.39 has no safe wrapper for this call.
pub fn cached_high_watermark<C: rdkafka::ClientContext>(
    client: &rdkafka::client::Client<C>,
    topic: &str,
    partition: i32,
) -> Option<i64> {
    let topic = std::ffi::CString::new(topic).ok()?;
    let (mut low, mut high) = (-1_i64, -1_i64);
    // SAFETY: `client` owns the live librdkafka handle for the duration of the call; `topic` is a
    // NUL-terminated string that outlives it; `low` and `high` are valid for writes. The function
    // reads librdkafka's cached partition state under its own lock (rdkafka.h,
    // rd_kafka_get_watermark_offsets) and keeps no pointer.
    let err = unsafe {
        rdkafka::bindings::rd_kafka_get_watermark_offsets(
            client.native_ptr(),
            topic.as_ptr(),
            partition,
            &mut low,
            &mut high,
        )
    };
    (err == rdkafka::bindings::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR && high >= 0)
        .then_some(high)
}

/// The connection settings for logs: every property, secrets masked.
pub fn describe(settings: &KafkaSettings) -> String {
    let mut parts = vec![
        format!("brokers={}", settings.brokers),
        format!("topic={}", settings.topic),
        format!("group={}", settings.group),
    ];
    for (k, v) in &settings.properties {
        if is_secret_property(k) {
            parts.push(format!("{k}=****"));
        } else {
            parts.push(format!("{k}={v}"));
        }
    }
    for (k, _) in &settings.secrets {
        parts.push(format!("{k}=****"));
    }
    parts.join(" ")
}

/// Decodes one record: its key (the sensor id, optional) and value (one JSON event).
pub fn decode_record(
    decoder: &Decoder,
    key: Option<&[u8]>,
    value: Option<&[u8]>,
    now_ms: i64,
) -> Result<Event, Rejection> {
    if let Some(k) = key
        && std::str::from_utf8(k).is_err()
    {
        return Err(Rejection::new(
            Reason::InvalidKey,
            format!(
                "the record key ({} bytes) is not UTF-8; gateways key records by sensor_id",
                k.len()
            ),
        ));
    }
    match value {
        None => Err(Rejection::new(
            Reason::Tombstone,
            "the record has no value (a tombstone); events are never deleted",
        )),
        Some(v) => decoder.decode(v, now_ms),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, Secret};
    use std::sync::Arc;

    #[test]
    fn records_without_value_or_with_a_bad_key_are_rejected() {
        let cfg = Config::chikaho("memory://");
        let d = Decoder::new(Arc::new(cfg.registry), cfg.limits);
        let ok = br#"{"sensor_id":"J1-1","ts":"2026-11-02T08:15:03+09:00","direction":"north","count":2}"#;
        let now = 1_800_000_000_000;
        assert!(decode_record(&d, Some(b"J1-1"), Some(ok), now).is_ok());
        assert!(decode_record(&d, None, Some(ok), now).is_ok());
        let e = decode_record(&d, Some(b"J1-1"), None, now).unwrap_err();
        assert_eq!(e.reason, Reason::Tombstone);
        let e = decode_record(&d, Some(&[0xff, 0xfe]), Some(ok), now).unwrap_err();
        assert_eq!(e.reason, Reason::InvalidKey);
        let e = decode_record(&d, None, Some(b""), now).unwrap_err();
        assert_eq!(e.reason, Reason::Empty);
    }

    #[test]
    fn secrets_are_read_at_start_and_never_described() {
        let cfg = Config::parse(
            &format!(
                "{}\n[kafka]\nbrokers = \"b:9092\"\ntopic = \"t\"\nsecurity_protocol = \"SASL_SSL\"\n\
                 sasl_mechanism = \"scram-sha-512\"\nsasl_username = \"u\"\n\
                 sasl_password_env = \"JINRYU_TEST_KAFKA_SECRET\"\n",
                crate::config::CHIKAHO_TOML.split("[kafka]").next().unwrap()
            ),
            "t.toml",
        )
        .unwrap();
        let k = cfg.kafka.unwrap();
        assert_eq!(
            k.secrets,
            vec![(
                "sasl.password".to_string(),
                Secret::Env("JINRYU_TEST_KAFKA_SECRET".into())
            )]
        );
        let err = client_config(&k, &[]).unwrap_err();
        assert!(err.contains("JINRYU_TEST_KAFKA_SECRET is not set"), "{err}");
        // SAFETY: this test is the only user of this variable.
        unsafe { std::env::set_var("JINRYU_TEST_KAFKA_SECRET", "hunter2-s3cret") };
        let c = client_config(&k, &[]).unwrap();
        assert_eq!(c.get("sasl.password"), Some("hunter2-s3cret"));
        assert_eq!(c.get("security.protocol"), Some("sasl_ssl"));
        assert_eq!(c.get("sasl.mechanism"), Some("SCRAM-SHA-512"));
        let shown = describe(&k);
        assert!(shown.contains("sasl.password=****"), "{shown}");
        assert!(!shown.contains("hunter2"), "{shown}");
    }

    #[test]
    fn secrets_in_properties_are_refused() {
        let text = format!(
            "{}\n[kafka]\nbrokers = \"b\"\ntopic = \"t\"\nsasl_mechanism = \"GSSAPI\"\n[kafka.properties]\n\"sasl.password\" = \"x\"\n\"enable.auto.commit\" = true\n\"fetch.max.bytes\" = 1000\n",
            crate::config::CHIKAHO_TOML.split("[kafka]").next().unwrap()
        );
        let err = Config::parse(&text, "t.toml").unwrap_err();
        let keys: Vec<_> = err.problems.iter().map(|p| p.key.as_str()).collect();
        assert!(
            keys.contains(&"kafka.properties.\"sasl.password\""),
            "{keys:?}"
        );
        assert!(
            keys.contains(&"kafka.properties.\"enable.auto.commit\""),
            "{keys:?}"
        );
        assert!(!err.to_string().contains("= \"x\""));
        // Kerberos is not in this build: refused at load, not at connect time.
        assert!(keys.contains(&"kafka.sasl_mechanism"), "{keys:?}");
    }
}
