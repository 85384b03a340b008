//! Object storage chosen by URL. Every byte jinryu stores goes through the
//! [`object_store::ObjectStore`] held here — no `std::fs` in the storage path.
//!
//! * `file:///abs/dir`, `file://./rel/dir` or a plain path: a local directory (created if absent).
//! * `memory://`: in the process only (tests, `demo --storage memory://`).
//! * `s3://bucket/prefix`: Amazon S3 or an S3-compatible server. Credentials and region come from
//!   the standard AWS environment (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`,
//!   `AWS_REGION`, web identity / ECS / instance metadata); `AWS_ENDPOINT_URL` points at another
//!   S3-compatible endpoint (plain `http://` is allowed for such an endpoint). Requests are retried
//!   with exponential backoff on throttling, 5xx and timeouts.
//!
//! The table layout under the root:
//! `aggregates/date=YYYY-MM-DD/*.parquet`, `quarantine/date=YYYY-MM-DD/*.parquet`, and
//! `_sources/<source>.json` (what each input wrote, so a replay can replace it).

use std::path::PathBuf;
use std::sync::Arc;

use object_store::ObjectStore;
use object_store::local::LocalFileSystem;
use object_store::memory::InMemory;

/// The scheme DataFusion knows our store under: `jinryu://store/<table>/`.
pub const DATAFUSION_URL: &str = "jinryu://store";

/// Checks a storage URL without opening it (used by config validation).
pub fn check_url(url: &str) -> Result<(), String> {
    match scheme(url) {
        "file" | "memory" | "" => Ok(()),
        "s3" => {
            let rest = url.trim_start_matches("s3://");
            if rest.split('/').next().is_none_or(str::is_empty) {
                Err(format!(
                    "`{url}`: name the bucket, e.g. s3://my-bucket/jinryu"
                ))
            } else {
                Ok(())
            }
        }
        other => Err(format!(
            "`{url}`: unknown storage scheme `{other}://`; use file:///path, a plain directory path, or memory://"
        )),
    }
}

fn scheme(url: &str) -> &str {
    url.split_once("://").map(|(s, _)| s).unwrap_or("")
}

/// Local directory named by a `file://` URL or a plain path.
fn local_dir(url: &str) -> PathBuf {
    let path = url.strip_prefix("file://").unwrap_or(url);
    PathBuf::from(if path.is_empty() { "." } else { path })
}

/// An opened storage root.
#[derive(Debug, Clone)]
pub struct Storage {
    store: Arc<dyn ObjectStore>,
    /// What the user configured, for messages.
    pub url: String,
    /// The local directory, for `file://` storage (to print where the files are).
    pub local_dir: Option<PathBuf>,
}

impl Storage {
    /// Opens the storage named by `url`, creating a local directory if needed.
    pub fn open(url: &str) -> anyhow::Result<Storage> {
        check_url(url).map_err(anyhow::Error::msg)?;
        if scheme(url) == "s3" {
            return open_s3(url);
        }
        if scheme(url) == "memory" {
            return Ok(Storage {
                store: Arc::new(InMemory::new()),
                url: url.to_string(),
                local_dir: None,
            });
        }
        let dir = local_dir(url);
        std::fs::create_dir_all(&dir).map_err(|e| {
            anyhow::anyhow!(
                "cannot create the storage directory {}: {e}; set storage.url to a writable place",
                dir.display()
            )
        })?;
        let dir = dir.canonicalize()?;
        let store = LocalFileSystem::new_with_prefix(&dir)?;
        Ok(Storage {
            store: Arc::new(store),
            url: url.to_string(),
            local_dir: Some(dir),
        })
    }

    pub fn store(&self) -> &Arc<dyn ObjectStore> {
        &self.store
    }

    /// Where a table lives, for humans (a directory or a URL).
    pub fn describe(&self, table: &str) -> String {
        match &self.local_dir {
            Some(d) => d.join(table).display().to_string(),
            None => format!("{}/{table}", self.url.trim_end_matches('/')),
        }
    }
}

/// Opens `s3://bucket/prefix` with the AWS environment's credentials and region.
fn open_s3(url: &str) -> anyhow::Result<Storage> {
    use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
    use object_store::{BackoffConfig, ClientConfigKey, RetryConfig, prefix::PrefixStore};
    let rest = url.trim_start_matches("s3://");
    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    let mut builder = AmazonS3Builder::from_env().with_bucket_name(bucket);
    let endpoint = builder.get_config_value(&AmazonS3ConfigKey::Endpoint);
    if endpoint
        .as_deref()
        .is_some_and(|e| e.starts_with("http://"))
    {
        builder = builder.with_allow_http(true);
    }
    if std::env::var_os("AWS_TIMEOUT").is_none() {
        builder = builder.with_config(AmazonS3ConfigKey::Client(ClientConfigKey::Timeout), "30s");
    }
    let s3 = builder
        .with_retry(RetryConfig {
            backoff: BackoffConfig {
                init_backoff: std::time::Duration::from_millis(200),
                max_backoff: std::time::Duration::from_secs(15),
                base: 2.0,
            },
            max_retries: 10,
            retry_timeout: std::time::Duration::from_secs(180),
        })
        .build()
        .map_err(|e| {
            anyhow::anyhow!(
                "cannot open {url}: {e}. Set AWS_REGION (and AWS_ENDPOINT_URL for an S3-compatible \
                 server); credentials come from AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or the \
                 instance's role"
            )
        })?;
    let store: Arc<dyn ObjectStore> = if prefix.trim_matches('/').is_empty() {
        Arc::new(s3)
    } else {
        Arc::new(PrefixStore::new(s3, prefix.trim_matches('/')))
    };
    Ok(Storage {
        store,
        url: url.to_string(),
        local_dir: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert!(check_url("file:///var/lib/jinryu").is_ok());
        assert!(check_url("memory://").is_ok());
        assert!(check_url("./data").is_ok());
        assert!(check_url("s3://bucket/x").is_ok());
        assert!(check_url("s3://").unwrap_err().contains("name the bucket"));
        assert!(
            check_url("ftp://x")
                .unwrap_err()
                .contains("unknown storage scheme")
        );
        assert_eq!(local_dir("file://./rel"), PathBuf::from("./rel"));
        assert_eq!(local_dir("file:///abs"), PathBuf::from("/abs"));
    }
}
