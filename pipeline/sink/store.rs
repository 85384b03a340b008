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
            store: Arc::new(Guarded {
                inner: Arc::new(store),
                local_root: Some(dir.clone()),
                read_only: false,
            }),
            url: url.to_string(),
            local_dir: Some(dir),
        })
    }

    pub fn store(&self) -> &Arc<dyn ObjectStore> {
        &self.store
    }

    /// The same storage through a store that refuses every write, copy, rename and delete
    /// (`jinryu sql`, `monthly`, `check`: readers must not be able to change the tables).
    pub fn read_only(&self) -> Storage {
        Storage {
            store: Arc::new(Guarded {
                inner: self.store.clone(),
                local_root: None,
                read_only: true,
            }),
            url: self.url.clone(),
            local_dir: self.local_dir.clone(),
        }
    }

    /// Writes `bytes` to `path` only if nothing is there (`If-None-Match: *` on S3, an exclusive
    /// create on disk): false when another writer created it first. Claims, locks and evidence
    /// that must never be overwritten are written this way.
    pub async fn create_if_absent(
        &self,
        path: &object_store::path::Path,
        bytes: Vec<u8>,
    ) -> object_store::Result<bool> {
        let opts = object_store::PutOptions {
            mode: object_store::PutMode::Create,
            ..object_store::PutOptions::default()
        };
        match self.store.put_opts(path, bytes.into(), opts).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::AlreadyExists { .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Where a table lives, for humans (a directory or a URL).
    pub fn describe(&self, table: &str) -> String {
        match &self.local_dir {
            Some(d) => d.join(table).display().to_string(),
            None => format!("{}/{table}", self.url.trim_end_matches('/')),
        }
    }
}

/// The object store every other part of jinryu sees: the backend, plus two guards.
///
/// * On a local directory (`local_root`) every object stored is fsynced, with the directory that
///   holds it, before the write returns — a Delta commit is only "done" once its data files,
///   state object and log entry survive a power cut — and listings come in lexicographic order, as
///   the Delta log reader expects from object stores (directories list in any order).
/// * `read_only` refuses every write, copy, rename and delete with `PermissionDenied` (the
///   sessions of `jinryu sql`, `monthly` and `check`).
#[derive(Debug)]
struct Guarded {
    inner: Arc<dyn ObjectStore>,
    local_root: Option<PathBuf>,
    read_only: bool,
}

impl std::fmt::Display for Guarded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mode = if self.read_only { "read-only " } else { "" };
        write!(f, "{mode}{}", self.inner)
    }
}

type ObjPath = object_store::path::Path;
type Listing = futures::stream::BoxStream<'static, object_store::Result<object_store::ObjectMeta>>;

fn refused(path: &ObjPath, what: &str) -> object_store::Error {
    object_store::Error::PermissionDenied {
        path: path.to_string(),
        source: format!("{what} refused: this session reads the tables and cannot change them")
            .into(),
    }
}

/// fsyncs the object at `location` under `root` and its directory (on a blocking thread).
async fn sync_object(root: &std::path::Path, location: &ObjPath) -> object_store::Result<()> {
    let file = root.join(location.as_ref());
    let generic = |source: Box<dyn std::error::Error + Send + Sync>| object_store::Error::Generic {
        store: "LocalFileSystem",
        source,
    };
    tokio::task::spawn_blocking(move || -> std::io::Result<()> {
        std::fs::File::open(&file)?.sync_all()?;
        if let Some(dir) = file.parent() {
            std::fs::File::open(dir)?.sync_all()?;
        }
        Ok(())
    })
    .await
    .map_err(|e| generic(Box::new(e)))?
    .map_err(|e| generic(format!("fsync of {location}: {e}").into()))
}

/// A multipart upload whose completion is fsynced.
#[derive(Debug)]
struct DurableUpload {
    inner: Box<dyn object_store::MultipartUpload>,
    root: PathBuf,
    location: ObjPath,
}

#[async_trait::async_trait]
impl object_store::MultipartUpload for DurableUpload {
    fn put_part(&mut self, data: object_store::PutPayload) -> object_store::UploadPart {
        self.inner.put_part(data)
    }

    async fn complete(&mut self) -> object_store::Result<object_store::PutResult> {
        let done = self.inner.complete().await?;
        sync_object(&self.root, &self.location).await?;
        Ok(done)
    }

    async fn abort(&mut self) -> object_store::Result<()> {
        self.inner.abort().await
    }
}

impl Guarded {
    fn writable(&self, location: &ObjPath, what: &str) -> object_store::Result<()> {
        if self.read_only {
            Err(refused(location, what))
        } else {
            Ok(())
        }
    }

    async fn sync(&self, location: &ObjPath) -> object_store::Result<()> {
        match &self.local_root {
            Some(root) => sync_object(root, location).await,
            None => Ok(()),
        }
    }

    fn listing(&self, listing: Listing) -> Listing {
        use futures::{StreamExt, TryStreamExt};
        if self.local_root.is_none() {
            return listing;
        }
        futures::stream::once(async move {
            let mut all: Vec<object_store::ObjectMeta> = listing.try_collect().await?;
            all.sort_by(|a, b| a.location.cmp(&b.location));
            Ok::<_, object_store::Error>(futures::stream::iter(all.into_iter().map(Ok)))
        })
        .try_flatten()
        .boxed()
    }
}

#[async_trait::async_trait]
impl ObjectStore for Guarded {
    async fn put_opts(
        &self,
        location: &ObjPath,
        payload: object_store::PutPayload,
        opts: object_store::PutOptions,
    ) -> object_store::Result<object_store::PutResult> {
        self.writable(location, "writing")?;
        let done = self.inner.put_opts(location, payload, opts).await?;
        self.sync(location).await?;
        Ok(done)
    }

    async fn put_multipart_opts(
        &self,
        location: &ObjPath,
        opts: object_store::PutMultipartOptions,
    ) -> object_store::Result<Box<dyn object_store::MultipartUpload>> {
        self.writable(location, "writing")?;
        let inner = self.inner.put_multipart_opts(location, opts).await?;
        Ok(match &self.local_root {
            Some(root) => Box::new(DurableUpload {
                inner,
                root: root.clone(),
                location: location.clone(),
            }),
            None => inner,
        })
    }

    async fn get_opts(
        &self,
        location: &ObjPath,
        options: object_store::GetOptions,
    ) -> object_store::Result<object_store::GetResult> {
        self.inner.get_opts(location, options).await
    }

    async fn get_ranges(
        &self,
        location: &ObjPath,
        ranges: &[std::ops::Range<u64>],
    ) -> object_store::Result<Vec<bytes::Bytes>> {
        self.inner.get_ranges(location, ranges).await
    }

    fn delete_stream(
        &self,
        locations: futures::stream::BoxStream<'static, object_store::Result<ObjPath>>,
    ) -> futures::stream::BoxStream<'static, object_store::Result<ObjPath>> {
        use futures::StreamExt;
        if self.read_only {
            return locations
                .map(|p| p.and_then(|p| Err(refused(&p, "deleting"))))
                .boxed();
        }
        self.inner.delete_stream(locations)
    }

    fn list(&self, prefix: Option<&ObjPath>) -> Listing {
        self.listing(self.inner.list(prefix))
    }

    fn list_with_offset(&self, prefix: Option<&ObjPath>, offset: &ObjPath) -> Listing {
        self.listing(self.inner.list_with_offset(prefix, offset))
    }

    async fn list_with_delimiter(
        &self,
        prefix: Option<&ObjPath>,
    ) -> object_store::Result<object_store::ListResult> {
        let mut l = self.inner.list_with_delimiter(prefix).await?;
        l.objects.sort_by(|a, b| a.location.cmp(&b.location));
        l.common_prefixes.sort();
        Ok(l)
    }

    async fn copy_opts(
        &self,
        from: &ObjPath,
        to: &ObjPath,
        options: object_store::CopyOptions,
    ) -> object_store::Result<()> {
        self.writable(to, "copying")?;
        self.inner.copy_opts(from, to, options).await?;
        self.sync(to).await
    }

    async fn rename_opts(
        &self,
        from: &ObjPath,
        to: &ObjPath,
        options: object_store::RenameOptions,
    ) -> object_store::Result<()> {
        self.writable(to, "renaming")?;
        self.inner.rename_opts(from, to, options).await?;
        self.sync(to).await
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

/// This process, as claims and locks name their holder: `jinryu on HOST (pid N)`.
pub fn holder() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "unknown-host".into());
    format!("jinryu on {host} (pid {})", std::process::id())
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
