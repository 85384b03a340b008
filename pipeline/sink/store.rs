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
            store: Arc::new(Durable {
                inner: Arc::new(store),
                root: dir.clone(),
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
            store: Arc::new(ReadOnly(self.store.clone())),
            url: self.url.clone(),
            local_dir: self.local_dir.clone(),
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

/// A local directory as an object store that (1) fsyncs every object it stores, and the
/// directory that holds it, before the write returns — a Delta commit is only "done" once its data
/// files, state object and log entry survive a power cut — and (2) lists in lexicographic order,
/// as the Delta log reader expects from object stores (directories list in any order).
#[derive(Debug)]
struct Durable {
    inner: Arc<dyn ObjectStore>,
    root: PathBuf,
}

impl std::fmt::Display for Durable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Durable({})", self.root.display())
    }
}

/// fsyncs the object at `location` under `root` and its directory.
fn sync_object(
    root: &std::path::Path,
    location: &object_store::path::Path,
) -> object_store::Result<()> {
    let file = root.join(location.as_ref());
    let io = |e: std::io::Error| object_store::Error::Generic {
        store: "LocalFileSystem",
        source: format!("fsync of {}: {e}", file.display()).into(),
    };
    std::fs::File::open(&file)
        .and_then(|f| f.sync_all())
        .map_err(io)?;
    if let Some(dir) = file.parent() {
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io)?;
    }
    Ok(())
}

/// A multipart upload whose completion is fsynced.
#[derive(Debug)]
struct DurableUpload {
    inner: Box<dyn object_store::MultipartUpload>,
    root: PathBuf,
    location: object_store::path::Path,
}

#[async_trait::async_trait]
impl object_store::MultipartUpload for DurableUpload {
    fn put_part(&mut self, data: object_store::PutPayload) -> object_store::UploadPart {
        self.inner.put_part(data)
    }

    async fn complete(&mut self) -> object_store::Result<object_store::PutResult> {
        let done = self.inner.complete().await?;
        let (root, location) = (self.root.clone(), self.location.clone());
        tokio::task::spawn_blocking(move || sync_object(&root, &location))
            .await
            .map_err(|e| object_store::Error::Generic {
                store: "LocalFileSystem",
                source: Box::new(e),
            })??;
        Ok(done)
    }

    async fn abort(&mut self) -> object_store::Result<()> {
        self.inner.abort().await
    }
}

impl Durable {
    async fn sync(&self, location: &object_store::path::Path) -> object_store::Result<()> {
        let (root, location) = (self.root.clone(), location.clone());
        tokio::task::spawn_blocking(move || sync_object(&root, &location))
            .await
            .map_err(|e| object_store::Error::Generic {
                store: "LocalFileSystem",
                source: Box::new(e),
            })?
    }
}

fn sorted(
    listing: futures::stream::BoxStream<'static, object_store::Result<object_store::ObjectMeta>>,
) -> futures::stream::BoxStream<'static, object_store::Result<object_store::ObjectMeta>> {
    use futures::{StreamExt, TryStreamExt};
    futures::stream::once(async move {
        let mut all: Vec<object_store::ObjectMeta> = listing.try_collect().await?;
        all.sort_by(|a, b| a.location.cmp(&b.location));
        Ok::<_, object_store::Error>(futures::stream::iter(all.into_iter().map(Ok)))
    })
    .try_flatten()
    .boxed()
}

#[async_trait::async_trait]
impl ObjectStore for Durable {
    async fn put_opts(
        &self,
        location: &object_store::path::Path,
        payload: object_store::PutPayload,
        opts: object_store::PutOptions,
    ) -> object_store::Result<object_store::PutResult> {
        let done = self.inner.put_opts(location, payload, opts).await?;
        self.sync(location).await?;
        Ok(done)
    }

    async fn put_multipart_opts(
        &self,
        location: &object_store::path::Path,
        opts: object_store::PutMultipartOptions,
    ) -> object_store::Result<Box<dyn object_store::MultipartUpload>> {
        let inner = self.inner.put_multipart_opts(location, opts).await?;
        Ok(Box::new(DurableUpload {
            inner,
            root: self.root.clone(),
            location: location.clone(),
        }))
    }

    async fn get_opts(
        &self,
        location: &object_store::path::Path,
        options: object_store::GetOptions,
    ) -> object_store::Result<object_store::GetResult> {
        self.inner.get_opts(location, options).await
    }

    async fn get_ranges(
        &self,
        location: &object_store::path::Path,
        ranges: &[std::ops::Range<u64>],
    ) -> object_store::Result<Vec<bytes::Bytes>> {
        self.inner.get_ranges(location, ranges).await
    }

    fn delete_stream(
        &self,
        locations: futures::stream::BoxStream<
            'static,
            object_store::Result<object_store::path::Path>,
        >,
    ) -> futures::stream::BoxStream<'static, object_store::Result<object_store::path::Path>> {
        self.inner.delete_stream(locations)
    }

    fn list(
        &self,
        prefix: Option<&object_store::path::Path>,
    ) -> futures::stream::BoxStream<'static, object_store::Result<object_store::ObjectMeta>> {
        sorted(self.inner.list(prefix))
    }

    fn list_with_offset(
        &self,
        prefix: Option<&object_store::path::Path>,
        offset: &object_store::path::Path,
    ) -> futures::stream::BoxStream<'static, object_store::Result<object_store::ObjectMeta>> {
        sorted(self.inner.list_with_offset(prefix, offset))
    }

    async fn list_with_delimiter(
        &self,
        prefix: Option<&object_store::path::Path>,
    ) -> object_store::Result<object_store::ListResult> {
        let mut l = self.inner.list_with_delimiter(prefix).await?;
        l.objects.sort_by(|a, b| a.location.cmp(&b.location));
        l.common_prefixes.sort();
        Ok(l)
    }

    async fn copy_opts(
        &self,
        from: &object_store::path::Path,
        to: &object_store::path::Path,
        options: object_store::CopyOptions,
    ) -> object_store::Result<()> {
        self.inner.copy_opts(from, to, options).await?;
        self.sync(to).await
    }

    async fn rename_opts(
        &self,
        from: &object_store::path::Path,
        to: &object_store::path::Path,
        options: object_store::RenameOptions,
    ) -> object_store::Result<()> {
        self.inner.rename_opts(from, to, options).await?;
        self.sync(to).await
    }
}

/// An object store that only reads: every change is refused with `PermissionDenied`.
#[derive(Debug)]
struct ReadOnly(Arc<dyn ObjectStore>);

impl std::fmt::Display for ReadOnly {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ReadOnly({})", self.0)
    }
}

fn refused(path: &object_store::path::Path, what: &str) -> object_store::Error {
    object_store::Error::PermissionDenied {
        path: path.to_string(),
        source: format!("{what} refused: this session reads the tables and cannot change them")
            .into(),
    }
}

#[async_trait::async_trait]
impl ObjectStore for ReadOnly {
    async fn put_opts(
        &self,
        location: &object_store::path::Path,
        _payload: object_store::PutPayload,
        _opts: object_store::PutOptions,
    ) -> object_store::Result<object_store::PutResult> {
        Err(refused(location, "writing"))
    }

    async fn put_multipart_opts(
        &self,
        location: &object_store::path::Path,
        _opts: object_store::PutMultipartOptions,
    ) -> object_store::Result<Box<dyn object_store::MultipartUpload>> {
        Err(refused(location, "writing"))
    }

    async fn get_opts(
        &self,
        location: &object_store::path::Path,
        options: object_store::GetOptions,
    ) -> object_store::Result<object_store::GetResult> {
        self.0.get_opts(location, options).await
    }

    async fn get_ranges(
        &self,
        location: &object_store::path::Path,
        ranges: &[std::ops::Range<u64>],
    ) -> object_store::Result<Vec<bytes::Bytes>> {
        self.0.get_ranges(location, ranges).await
    }

    fn delete_stream(
        &self,
        locations: futures::stream::BoxStream<
            'static,
            object_store::Result<object_store::path::Path>,
        >,
    ) -> futures::stream::BoxStream<'static, object_store::Result<object_store::path::Path>> {
        use futures::StreamExt;
        locations
            .map(|p| p.and_then(|p| Err(refused(&p, "deleting"))))
            .boxed()
    }

    fn list(
        &self,
        prefix: Option<&object_store::path::Path>,
    ) -> futures::stream::BoxStream<'static, object_store::Result<object_store::ObjectMeta>> {
        self.0.list(prefix)
    }

    fn list_with_offset(
        &self,
        prefix: Option<&object_store::path::Path>,
        offset: &object_store::path::Path,
    ) -> futures::stream::BoxStream<'static, object_store::Result<object_store::ObjectMeta>> {
        self.0.list_with_offset(prefix, offset)
    }

    async fn list_with_delimiter(
        &self,
        prefix: Option<&object_store::path::Path>,
    ) -> object_store::Result<object_store::ListResult> {
        self.0.list_with_delimiter(prefix).await
    }

    async fn copy_opts(
        &self,
        _from: &object_store::path::Path,
        to: &object_store::path::Path,
        _options: object_store::CopyOptions,
    ) -> object_store::Result<()> {
        Err(refused(to, "copying"))
    }

    async fn rename_opts(
        &self,
        _from: &object_store::path::Path,
        to: &object_store::path::Path,
        _options: object_store::RenameOptions,
    ) -> object_store::Result<()> {
        Err(refused(to, "renaming"))
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
