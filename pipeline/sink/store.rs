//! Object storage chosen by URL. Every byte jinryu stores goes through the
//! [`object_store::ObjectStore`] held here — no `std::fs` in the storage path.
//!
//! * `file:///abs/dir`, `file://./rel/dir` or a plain path: a local directory (created if absent).
//! * `memory://`: in the process only (tests, `demo --storage memory://`).
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
        "s3" => Err(format!(
            "`{url}`: s3:// storage is not in this build yet (it lands with the Kafka service); \
             use file:///path or memory:// for now"
        )),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert!(check_url("file:///var/lib/jinryu").is_ok());
        assert!(check_url("memory://").is_ok());
        assert!(check_url("./data").is_ok());
        assert!(
            check_url("s3://bucket/x")
                .unwrap_err()
                .contains("not in this build")
        );
        assert!(
            check_url("ftp://x")
                .unwrap_err()
                .contains("unknown storage scheme")
        );
        assert_eq!(local_dir("file://./rel"), PathBuf::from("./rel"));
        assert_eq!(local_dir("file:///abs"), PathBuf::from("/abs"));
    }
}
