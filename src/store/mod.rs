//! Object stores behind URLs: local paths, `file://`, `memory://`, `s3://`, `gs://`, `az://`.
//!
//! A [`Store`] is an object store plus a key prefix; every step reads its inputs and writes
//! its output through one. Visibility of an output is atomic at the level of the whole
//! prefix, not of single objects: see [`commit`] for the protocol (files first,
//! `_MANIFEST.json` last).

pub mod commit;
pub mod manifest;

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::TryStreamExt;
use object_store::buffered::BufWriter;
use object_store::local::LocalFileSystem;
use object_store::memory::InMemory;
use object_store::path::Path;
use object_store::{ClientOptions, ObjectMeta, ObjectStore, ObjectStoreExt, RetryConfig};
use tokio::io::AsyncBufRead;

use crate::error::{Error, Result};

/// Default for how long a failing store request is retried before the step gives up
/// (exit code 3). Long enough to ride out the restart of an S3-compatible server.
const DEFAULT_RETRY_TIMEOUT: Duration = Duration::from_secs(30);

/// A prefix inside an object store, addressed by a URL.
#[derive(Clone)]
pub struct Store {
    url: String,
    inner: Arc<dyn ObjectStore>,
    prefix: Path,
    /// The directory behind a local store, for readers that do better with a plain file.
    local: Option<std::path::PathBuf>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Store({})", self.url)
    }
}

impl Store {
    /// Opens the prefix that `url` names, creating the directory for local paths.
    pub fn create(url: &str) -> Result<Self> {
        Self::open_with(url, true)
    }

    /// Opens the prefix that `url` names; a local directory must already exist.
    pub fn open(url: &str) -> Result<Self> {
        Self::open_with(url, false)
    }

    /// Opens the prefix holding the object `url` names, and returns it with the object's name.
    pub fn open_file(url: &str) -> Result<(Self, String)> {
        let trimmed = url.trim_end_matches('/');
        let (parent, name) = match trimmed.rsplit_once('/') {
            // `s3://bucket` alone names no object.
            Some((parent, name)) if !parent.ends_with(':') && !parent.ends_with(":/") => {
                (parent.to_string(), name.to_string())
            }
            Some(_) => return Err(Error::input(format!("{url}: names a bucket, not a file"))),
            None => (".".to_string(), trimmed.to_string()),
        };
        let parent = if parent.is_empty() { "/".to_string() } else { parent };
        let store = Self::open_with(&parent, false).map_err(|e| match e {
            Error::Input(_) => Error::input(format!("{url}: no such file")),
            other => other,
        })?;
        Ok((store.with_url(url.trim_end_matches(&name).trim_end_matches('/')), name))
    }

    fn with_url(mut self, url: &str) -> Self {
        self.url = url.to_string();
        self
    }

    fn open_with(url: &str, create: bool) -> Result<Self> {
        let url = url.trim_end_matches('/');
        let url = if url.is_empty() { "/" } else { url };
        let Some((scheme, rest)) = url.split_once("://") else {
            return local(url, url, create);
        };
        let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
        let prefix = Path::parse(path).map_err(|e| Error::config(format!("{url}: {e}")))?;
        let inner: Arc<dyn ObjectStore> = match scheme {
            "file" => {
                if !authority.is_empty() && authority != "localhost" {
                    return Err(Error::config(format!("{url}: file URLs take an absolute path (file:///dir)")));
                }
                return local(url, &format!("/{path}"), create);
            }
            "memory" => memory(authority),
            "s3" => Arc::new(
                object_store::aws::AmazonS3Builder::from_env()
                    .with_bucket_name(authority)
                    .with_client_options(client_options(
                        std::env::var("AWS_ENDPOINT_URL").or_else(|_| std::env::var("AWS_ENDPOINT")).ok(),
                    ))
                    .with_virtual_hosted_style_request(false)
                    .with_retry(retry_config())
                    .build()
                    .map_err(|e| Error::store("open", url, e))?,
            ),
            "gs" => Arc::new(
                object_store::gcp::GoogleCloudStorageBuilder::from_env()
                    .with_bucket_name(authority)
                    .with_client_options(client_options(None))
                    .with_retry(retry_config())
                    .build()
                    .map_err(|e| Error::store("open", url, e))?,
            ),
            "az" | "azure" => Arc::new(
                object_store::azure::MicrosoftAzureBuilder::from_env()
                    .with_container_name(authority)
                    .with_client_options(client_options(None))
                    .with_retry(retry_config())
                    .build()
                    .map_err(|e| Error::store("open", url, e))?,
            ),
            other => {
                return Err(Error::config(format!(
                    "{url}: unsupported scheme `{other}` (expected a path, file://, memory://, s3://, gs:// or az://)"
                )))
            }
        };
        Ok(Store { url: url.to_string(), inner, prefix, local: None })
    }

    /// The URL this store was opened with.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The URL of an object under this prefix.
    pub fn url_of(&self, name: &str) -> String {
        if self.url.is_empty() {
            // A file named relative to the current directory.
            return name.to_string();
        }
        format!("{}/{}", self.url.trim_end_matches('/'), name)
    }

    /// A store for the sub-prefix `key`, which must stay inside this prefix.
    pub fn join(&self, key: &str) -> Result<Store> {
        check_key(key)?;
        let mut prefix = self.prefix.clone();
        for part in key.split('/') {
            prefix = prefix.join(part);
        }
        Ok(Store {
            url: self.url_of(key),
            inner: self.inner.clone(),
            prefix,
            local: self.local.as_ref().map(|dir| dir.join(key)),
        })
    }

    fn path(&self, name: &str) -> Path {
        let mut path = self.prefix.clone();
        for part in name.split('/') {
            path = path.join(part);
        }
        path
    }

    /// Reads a whole object; `None` when it does not exist.
    pub async fn get(&self, name: &str) -> Result<Option<Bytes>> {
        match self.inner.get(&self.path(name)).await {
            Ok(result) => Ok(Some(result.bytes().await.map_err(|e| Error::store("read", self.url_of(name), e))?)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(Error::store("read", self.url_of(name), e)),
        }
    }

    /// Streams an object; a missing object is an input error.
    pub async fn reader(&self, name: &str) -> Result<impl AsyncBufRead + Send + Unpin + 'static> {
        let url = self.url_of(name);
        let result = self.inner.get(&self.path(name)).await.map_err(|e| match e {
            object_store::Error::NotFound { .. } => Error::input(format!("{url}: no such file")),
            e => Error::store("read", url.clone(), e),
        })?;
        let stream = result.into_stream().map_err(std::io::Error::other);
        Ok(tokio_util::io::StreamReader::new(stream))
    }

    /// The file behind an object of a local store (`None` for remote stores).
    pub fn local_path(&self, name: &str) -> Option<std::path::PathBuf> {
        self.local.as_ref().map(|dir| dir.join(name))
    }

    /// Size, modification time and entity tag of an object; `None` when it does not exist.
    pub async fn head(&self, name: &str) -> Result<Option<ObjectMeta>> {
        match self.inner.head(&self.path(name)).await {
            Ok(meta) => Ok(Some(meta)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(Error::store("stat", self.url_of(name), e)),
        }
    }

    /// Writes a whole object (atomically replacing any previous one).
    pub async fn put(&self, name: &str, bytes: Bytes) -> Result<()> {
        self.inner
            .put(&self.path(name), bytes.into())
            .await
            .map_err(|e| Error::store("write", self.url_of(name), e))?;
        Ok(())
    }

    /// Deletes an object; deleting a missing one is not an error.
    pub async fn delete(&self, name: &str) -> Result<()> {
        match self.inner.delete(&self.path(name)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(Error::store("delete", self.url_of(name), e)),
        }
    }

    /// Every object under this prefix, as names relative to it, with sizes.
    pub async fn list(&self) -> Result<Vec<(String, u64)>> {
        let metas: Vec<ObjectMeta> = self
            .inner
            .list(Some(&self.prefix))
            .try_collect()
            .await
            .map_err(|e| Error::store("list", self.url.clone(), e))?;
        let mut names: Vec<(String, u64)> = metas
            .into_iter()
            .filter_map(|meta| {
                let rel: Vec<_> = meta.location.prefix_match(&self.prefix)?.collect();
                let rel: Vec<&str> = rel.iter().map(|p| p.as_ref()).collect();
                Some((rel.join("/"), meta.size))
            })
            .collect();
        names.sort();
        Ok(names)
    }

    /// A buffered writer for one object (multipart upload for large objects).
    pub fn writer(&self, name: &str) -> BufWriter {
        BufWriter::new(self.inner.clone(), self.path(name))
    }
}

/// Checks a key given in a config: relative, no `..`, no empty segments.
pub fn check_key(key: &str) -> Result<()> {
    let bad = |why: &str| Err(Error::config(format!("key `{key}`: {why}")));
    if key.is_empty() {
        return bad("must not be empty");
    }
    if key.starts_with('/') || key.contains("://") || key.contains('\\') {
        return bad("must be relative to its prefix (no leading `/`, no scheme)");
    }
    for part in key.split('/') {
        match part {
            "" => return bad("must not contain empty segments (`//` or a trailing `/`)"),
            "." | ".." => return bad("must not contain `.` or `..` segments"),
            _ => {}
        }
    }
    Ok(())
}

fn local(url: &str, dir: &str, create: bool) -> Result<Store> {
    let dir = std::path::Path::new(dir);
    if create {
        std::fs::create_dir_all(dir).map_err(|e| Error::input(format!("{url}: cannot create directory: {e}")))?;
    } else if !dir.is_dir() {
        return Err(Error::input(format!("{url}: no such directory")));
    }
    let fs =
        LocalFileSystem::new_with_prefix(dir).map_err(|e| Error::store("open", url, e))?.with_automatic_cleanup(true);
    Ok(Store { url: url.to_string(), inner: Arc::new(fs), prefix: Path::default(), local: Some(dir.to_path_buf()) })
}

/// `memory://NAME` stores live for the life of the process and are shared by name.
fn memory(name: &str) -> Arc<dyn ObjectStore> {
    static STORES: LazyLock<Mutex<HashMap<String, Arc<InMemory>>>> = LazyLock::new(Default::default);
    let mut stores = STORES.lock().unwrap_or_else(|e| e.into_inner());
    stores.entry(name.to_string()).or_insert_with(|| Arc::new(InMemory::new())).clone()
}

fn client_options(endpoint: Option<String>) -> ClientOptions {
    // NOTE: allow_http must be set inside the ClientOptions: a later `with_client_options`
    // would reset a builder-level `with_allow_http`.
    let allow_http = endpoint.as_deref().is_some_and(|e| e.starts_with("http://"))
        || std::env::var("AWS_ALLOW_HTTP").is_ok_and(|v| v == "true" || v == "1");
    ClientOptions::new()
        .with_allow_http(allow_http)
        .with_connect_timeout(Duration::from_secs(5))
        .with_timeout(Duration::from_secs(120))
}

fn retry_config() -> RetryConfig {
    let timeout = std::env::var("TAFT_STORE_RETRY_TIMEOUT")
        .ok()
        .and_then(|s| s.parse::<f64>().ok())
        .map_or(DEFAULT_RETRY_TIMEOUT, Duration::from_secs_f64);
    RetryConfig {
        max_retries: 30,
        retry_timeout: timeout,
        backoff: object_store::BackoffConfig {
            init_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(2),
            base: 2.0,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_cannot_escape_their_prefix() {
        for bad in ["", "/abs", "a/../b", "..", "a//b", "a/", "./a", "s3://x", "a\\b"] {
            assert!(check_key(bad).is_err(), "{bad:?} accepted");
        }
        for good in ["prep", "models/init", "a.b/c-d_e"] {
            check_key(good).unwrap();
        }
    }

    #[test]
    fn file_urls_keep_the_name_the_user_gave() {
        for url in ["Cargo.toml", "src/lib.rs", "memory://m/a/b.jsonl", "s3://bucket/in/x.jsonl"] {
            let (store, name) = Store::open_file(url).unwrap();
            assert_eq!(store.url_of(&name), url);
        }
        assert!(Store::open_file("s3://bucket").is_err());
        assert!(Store::open_file("no/such/dir/x.jsonl").unwrap_err().to_string().contains("no such file"));
    }

    #[tokio::test]
    async fn memory_stores_are_shared_by_name_and_list_relative_names() {
        let a = Store::create("memory://unit-shared/root").unwrap();
        a.put("x/y.txt", Bytes::from_static(b"hi")).await.unwrap();
        let b = Store::open("memory://unit-shared/root/x").unwrap();
        assert_eq!(b.get("y.txt").await.unwrap().unwrap(), Bytes::from_static(b"hi"));
        assert_eq!(a.list().await.unwrap(), vec![("x/y.txt".to_string(), 2)]);
        assert!(b.get("missing").await.unwrap().is_none());
    }
}
