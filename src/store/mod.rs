//! Object stores behind URLs: local paths, `file://`, `memory://`, `s3://`, `gs://`, `az://`.
//!
//! A [`Store`] is an object store plus a key prefix; every step reads its inputs and writes
//! its output through one. Visibility of an output is atomic at the level of the whole
//! prefix, not of single objects: see [`commit`] for the protocol (files first,
//! `_MANIFEST.json` last).

pub mod commit;
pub mod lease;
pub mod location;
pub mod manifest;
mod upload;

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::TryStreamExt;
use object_store::buffered::BufWriter;
use object_store::local::LocalFileSystem;
use object_store::memory::InMemory;
use object_store::multipart::MultipartStore;
use object_store::path::Path;
use object_store::{ClientOptions, ObjectMeta, ObjectStore, ObjectStoreExt, PutMode, RetryConfig};
use tokio::io::AsyncBufRead;

use crate::error::{Error, Result};

/// Default for how long a failing store request is retried before the step gives up
/// (exit code 3). Long enough to ride out the restart of an S3-compatible server.
const DEFAULT_RETRY_TIMEOUT: Duration = Duration::from_secs(30);

/// The URL schemes of object stores, which pods on different machines can share (the
/// renderers and the Helm chart's values schema accept these and no others).
pub const REMOTE_SCHEMES: [&str; 4] = ["s3", "gs", "az", "azure"];

/// A prefix inside an object store, addressed by a URL.
#[derive(Clone)]
pub struct Store {
    url: String,
    inner: Arc<dyn ObjectStore>,
    /// The low-level multipart API of remote stores: uploads are recorded while in flight
    /// and aborted by the next run if a killed one left them (see [`Store::journal_uploads`]).
    multipart: Option<Arc<dyn MultipartStore>>,
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
        let Some((scheme, rest)) = url.split_once("://") else {
            let url = url.trim_end_matches('/');
            let url = if url.is_empty() { "/" } else { url };
            return local(url, url, create);
        };
        let rest = rest.trim_end_matches('/');
        if rest.is_empty() && scheme != "file" {
            return Err(Error::config(format!("{url}: names no bucket or container")));
        }
        let url = &url[..scheme.len() + 3 + rest.len()];
        if rest.contains('?') || rest.contains('#') {
            // Query strings carry credentials (SAS tokens, signatures): never echo them.
            let shown = url.split(['?', '#']).next().unwrap_or_default();
            return Err(Error::config(format!(
                "{shown}?…: store URLs take no query string or fragment; credentials come from the environment"
            )));
        }
        let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
        let prefix = Path::parse(path).map_err(|e| Error::config(format!("{url}: {e}")))?;
        fn both<T: ObjectStore + MultipartStore>(store: T) -> (Arc<dyn ObjectStore>, Option<Arc<dyn MultipartStore>>) {
            let store = Arc::new(store);
            (store.clone(), Some(store))
        }
        let (inner, multipart) = match scheme {
            "file" => {
                if !authority.is_empty() && authority != "localhost" {
                    return Err(Error::config(format!("{url}: file URLs take an absolute path (file:///dir)")));
                }
                return local(url, &format!("/{path}"), create);
            }
            "memory" => {
                let store = memory(authority);
                (store.clone() as Arc<dyn ObjectStore>, Some(store as Arc<dyn MultipartStore>))
            }
            "s3" => both(
                object_store::aws::AmazonS3Builder::from_env()
                    .with_bucket_name(authority)
                    .with_client_options(client_options(
                        std::env::var("AWS_ENDPOINT_URL").or_else(|_| std::env::var("AWS_ENDPOINT")).ok(),
                    ))
                    .with_virtual_hosted_style_request(false)
                    .with_retry(retry_config()?)
                    .build()
                    .map_err(|e| Error::store("open", url, e))?,
            ),
            "gs" => both(
                object_store::gcp::GoogleCloudStorageBuilder::from_env()
                    .with_bucket_name(authority)
                    .with_client_options(client_options(None))
                    .with_retry(retry_config()?)
                    .build()
                    .map_err(|e| Error::store("open", url, e))?,
            ),
            "az" | "azure" => both(
                object_store::azure::MicrosoftAzureBuilder::from_env()
                    .with_container_name(authority)
                    .with_client_options(client_options(None))
                    .with_retry(retry_config()?)
                    .build()
                    .map_err(|e| Error::store("open", url, e))?,
            ),
            other => {
                return Err(Error::config(format!(
                    "{url}: unsupported scheme `{other}` (expected a path, file://, memory://, {})",
                    REMOTE_SCHEMES.map(|s| format!("{s}://")).join(", ")
                )))
            }
        };
        Ok(Store { url: url.to_string(), inner, multipart, prefix, local: None })
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
            multipart: self.multipart.clone(),
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

    /// Reads the bytes `range` of an object (a ranged GET); a missing object is an input error.
    pub async fn get_range(&self, name: &str, range: std::ops::Range<u64>) -> Result<Bytes> {
        let url = self.url_of(name);
        self.inner.get_range(&self.path(name), range).await.map_err(|e| match e {
            object_store::Error::NotFound { .. } => Error::input(format!("{url}: no such file")),
            e => Error::store("read", url.clone(), e),
        })
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

    /// Writes a whole object unless one exists already: `false` when it does (a
    /// create-if-absent, the primitive of the lease).
    pub async fn put_if_absent(&self, name: &str, bytes: Bytes) -> Result<bool> {
        match self.inner.put_opts(&self.path(name), bytes.into(), PutMode::Create.into()).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::AlreadyExists { .. } | object_store::Error::Precondition { .. }) => Ok(false),
            Err(e) => Err(Error::store("write", self.url_of(name), e)),
        }
    }

    /// Deletes an object; deleting a missing one is not an error. On local disk the file is
    /// removed without following symbolic links (a link is removed, not its target) and a
    /// name under a linked folder is left alone.
    pub async fn delete(&self, name: &str) -> Result<()> {
        if let Some(dir) = &self.local {
            return local_delete(dir, name).map_err(|e| Error::store("delete", self.url_of(name), e));
        }
        match self.inner.delete(&self.path(name)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(Error::store("delete", self.url_of(name), e)),
        }
    }

    /// Every object under this prefix, as names relative to it, with sizes. On local disk
    /// symbolic links are listed as names and never followed, and the staging files of
    /// unfinished writes (`NAME#N`) are listed too.
    pub async fn list(&self) -> Result<Vec<(String, u64)>> {
        if let Some(dir) = &self.local {
            let dir = dir.clone();
            return tokio::task::spawn_blocking(move || local_list(&dir))
                .await
                .map_err(|e| Error::Other(format!("listing {}: {e}", self.url)))?
                .map_err(|e| Error::Io(std::io::Error::new(e.kind(), format!("listing {}: {e}", self.url))));
        }
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

    /// This store, with multipart uploads recorded under `journal` (a sub-prefix) while in
    /// flight, so that a later run can abort the uploads of a killed one
    /// ([`Store::abort_recorded_uploads`]). Local stores have no multipart uploads.
    pub fn journal_uploads(&self, journal: &str) -> Store {
        let Some(multipart) = &self.multipart else { return self.clone() };
        let mut store = self.clone();
        store.inner = Arc::new(upload::Journaled::new(self.inner.clone(), multipart.clone(), self.path(journal)));
        store
    }

    /// Aborts the multipart uploads recorded under `journal` (left by a killed run) and
    /// removes their records; returns how many there were.
    pub async fn abort_recorded_uploads(&self, journal: &str) -> Result<usize> {
        let Some(multipart) = &self.multipart else { return Ok(0) };
        upload::abort_recorded(&self.inner, multipart, &self.path(journal))
            .await
            .map_err(|e| Error::store("abort uploads", self.url_of(journal), e))
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
    Ok(Store {
        url: url.to_string(),
        inner: Arc::new(fs),
        multipart: None,
        prefix: Path::default(),
        local: Some(dir.to_path_buf()),
    })
}

/// The names under a local directory, relative, with sizes; symbolic links are names (size
/// 0), never followed.
fn local_list(dir: &std::path::Path) -> std::io::Result<Vec<(String, u64)>> {
    let mut names = Vec::new();
    if !dir.exists() {
        return Ok(names);
    }
    for entry in walkdir::WalkDir::new(dir).min_depth(1).follow_links(false) {
        let entry = entry.map_err(std::io::Error::other)?;
        if entry.file_type().is_dir() {
            continue;
        }
        let rel = entry.path().strip_prefix(dir).map_err(std::io::Error::other)?;
        let name: Vec<String> = rel.components().map(|c| c.as_os_str().to_string_lossy().into_owned()).collect();
        let size = if entry.file_type().is_file() { entry.metadata().map_err(std::io::Error::other)?.len() } else { 0 };
        names.push((name.join("/"), size));
    }
    names.sort();
    Ok(names)
}

/// Removes `name` under `dir` without following links: a link is removed itself, a name
/// under a linked folder is refused, and folders left empty are removed up to `dir`.
fn local_delete(dir: &std::path::Path, name: &str) -> std::result::Result<(), object_store::Error> {
    let generic =
        |source: std::io::Error| object_store::Error::Generic { store: "LocalFileSystem", source: Box::new(source) };
    let parts: Vec<&str> = name.split('/').collect();
    let mut path = dir.to_path_buf();
    for (i, part) in parts.iter().enumerate() {
        path.push(part);
        let meta = match std::fs::symlink_metadata(&path) {
            Ok(meta) => meta,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(generic(e)),
        };
        if i + 1 < parts.len() && !meta.is_dir() {
            // A link (or a file) where a folder should be: not ours to walk through.
            tracing::warn!(path = %path.display(), "not deleting under a symbolic link");
            return Ok(());
        }
    }
    match std::fs::remove_file(&path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(generic(e)),
    }
    let mut parent = path.parent();
    while let Some(p) = parent {
        if p == dir || std::fs::remove_dir(p).is_err() {
            break;
        }
        parent = p.parent();
    }
    Ok(())
}

/// `memory://NAME` stores live for the life of the process and are shared by name.
fn memory(name: &str) -> Arc<InMemory> {
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

/// Checks the environment variables the stores read: a bad value is a config error before
/// any work starts, not a surprise later.
pub fn check_environment() -> Result<()> {
    retry_timeout()?;
    lease::ttl()?;
    Ok(())
}

/// How long failing requests are retried: `TAFT_STORE_RETRY_TIMEOUT` seconds (a positive
/// number), 30 by default.
pub fn retry_timeout() -> Result<Duration> {
    let Ok(text) = std::env::var("TAFT_STORE_RETRY_TIMEOUT") else { return Ok(DEFAULT_RETRY_TIMEOUT) };
    match text.trim().parse::<f64>() {
        Ok(s) if s.is_finite() && s > 0.0 && s <= 86_400.0 => Ok(Duration::from_secs_f64(s)),
        _ => Err(Error::config(format!(
            "TAFT_STORE_RETRY_TIMEOUT={text:?}: expected a positive number of seconds (at most 86400)"
        ))),
    }
}

fn retry_config() -> Result<RetryConfig> {
    let timeout = retry_timeout()?;
    Ok(RetryConfig {
        max_retries: 30,
        retry_timeout: timeout,
        backoff: object_store::BackoffConfig {
            init_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(2),
            base: 2.0,
        },
    })
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
