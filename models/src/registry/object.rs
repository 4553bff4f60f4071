//! The registry on an object store (`s3://bucket/prefix`, or any
//! [`ObjectStore`]): the same layout as on a file system, with the two things
//! a store lacks done differently.
//!
//! - **No rename.** A writer claims version `n` by creating
//!   `<model>/<n>/.claim` with a conditional put (`If-None-Match: *`), so two
//!   writers never share a number; it then uploads the files and writes
//!   `manifest.json` last. Readers see a version only once its manifest is
//!   there, so a half-uploaded version is never visible.
//! - **No local paths.** TorchScript and Parquet readers want files, so
//!   [`ObjectRegistry::fetch`] copies a version into a local cache folder
//!   (downloaded under a temporary name, then renamed). Versions never change
//!   once published, so a cached copy stays valid.
//!
//! The registry API is synchronous (training and the CLI call it from plain
//! threads, the model server from blocking tasks); object-store calls run on a
//! small runtime of their own, so they work from inside another runtime too.

use std::collections::BTreeSet;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use futures::TryStreamExt;
use object_store::aws::AmazonS3Builder;
use object_store::buffered::BufWriter;
use object_store::path::Path as Key;
use object_store::{
    ObjectMeta, ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload, UpdateVersion,
};
use tokio::io::AsyncWriteExt;

use super::{RegistryError as Error, Result, unique};

/// The runtime that drives object-store requests; it lives as long as the
/// process (dropping a runtime inside another one panics).
fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("encore-registry-io")
            .enable_all()
            .build()
            .expect("a tokio runtime for registry I/O")
    })
}

/// Runs `future` to completion from synchronous code, also when the caller
/// is itself on a tokio runtime thread (then on a helper thread).
fn block_on<F: Future + Send>(future: F) -> F::Output
where
    F::Output: Send,
{
    if tokio::runtime::Handle::try_current().is_err() {
        return runtime().block_on(future);
    }
    std::thread::scope(|scope| {
        scope
            .spawn(|| runtime().block_on(future))
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

/// A registry in an object store.
#[derive(Debug, Clone)]
pub struct ObjectRegistry {
    /// How users named it (`s3://bucket/prefix`), for messages.
    url: String,
    store: Arc<dyn ObjectStore>,
    /// The registry's root inside the store (may be empty).
    prefix: String,
    /// Local copies of fetched versions, and staging folders.
    cache: PathBuf,
}

/// The cache folder for a registry at `url`: `ENCORE_REGISTRY_CACHE`, else
/// the user's cache folder (`$XDG_CACHE_HOME` or `~/.cache`), under
/// `encore/registry/<host>/<path>`.
fn default_cache(url: &url::Url) -> PathBuf {
    let base = std::env::var_os("ENCORE_REGISTRY_CACHE")
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("XDG_CACHE_HOME").map(|d| PathBuf::from(d).join("encore/registry"))
        })
        .or_else(|| {
            std::env::var_os("HOME").map(|d| PathBuf::from(d).join(".cache/encore/registry"))
        })
        .unwrap_or_else(|| std::env::temp_dir().join("encore-registry"));
    let mut dir = base.join(url.scheme()).join(url.host_str().unwrap_or("_"));
    for part in url
        .path()
        .split('/')
        .filter(|p| !p.is_empty() && *p != "..")
    {
        dir.push(part);
    }
    dir
}

impl ObjectRegistry {
    /// The registry at `s3://bucket/prefix`. Credentials, region and endpoint
    /// come from the usual `AWS_*` environment variables (`AWS_ACCESS_KEY_ID`,
    /// `AWS_SECRET_ACCESS_KEY`, `AWS_REGION`, `AWS_ENDPOINT` for S3-compatible
    /// stores, `AWS_ALLOW_HTTP=true` for a plain-HTTP endpoint).
    pub fn s3(location: &str) -> Result<Self> {
        let invalid = |reason: String| Error::Invalid {
            path: PathBuf::from(location),
            reason,
        };
        let url = url::Url::parse(location).map_err(|e| invalid(format!("not a URL: {e}")))?;
        if url.host_str().is_none_or(str::is_empty) {
            return Err(invalid(
                "an s3:// registry needs a bucket: s3://bucket/prefix".into(),
            ));
        }
        // Registry requests are small and interactive: an unreachable or
        // failing endpoint is reported within about half a minute, not
        // object_store's default of three.
        let retry = object_store::RetryConfig {
            max_retries: 5,
            retry_timeout: std::time::Duration::from_secs(30),
            ..Default::default()
        };
        let store = AmazonS3Builder::from_env()
            .with_url(location)
            .with_retry(retry)
            .build()
            .map_err(|e| invalid(e.to_string()))?;
        Ok(Self::new(
            location,
            Arc::new(store),
            url.path(),
            default_cache(&url),
        ))
    }

    /// A registry under `prefix` of `store`, caching versions in `cache`.
    pub fn new(
        url: &str,
        store: Arc<dyn ObjectStore>,
        prefix: &str,
        cache: impl Into<PathBuf>,
    ) -> Self {
        Self {
            url: url.trim_end_matches('/').to_owned(),
            store,
            prefix: prefix.trim_matches('/').to_owned(),
            cache: cache.into(),
        }
    }

    /// The registry's URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The store key of `rel` (a `/`-separated path inside the registry).
    fn key(&self, rel: &str) -> Key {
        if self.prefix.is_empty() {
            Key::from(rel)
        } else {
            Key::from(format!("{}/{rel}", self.prefix))
        }
    }

    /// `rel` as users see it, for error messages.
    pub fn describe(&self, rel: &str) -> PathBuf {
        PathBuf::from(format!("{}/{rel}", self.url))
    }

    fn error(&self, rel: &str, e: impl std::fmt::Display) -> Error {
        Error::Invalid {
            path: self.describe(rel),
            reason: e.to_string(),
        }
    }

    /// The bytes of `rel`, or None if there is no such object.
    pub fn read(&self, rel: &str) -> Result<Option<Vec<u8>>> {
        Ok(self.get(rel)?.map(|(bytes, _)| bytes))
    }

    /// The bytes and metadata (ETag) of `rel`, or None if there is no such object.
    fn get(&self, rel: &str) -> Result<Option<(Vec<u8>, ObjectMeta)>> {
        let key = self.key(rel);
        block_on(async {
            match self.store.get(&key).await {
                Ok(got) => {
                    let meta = got.meta.clone();
                    Ok(Some((got.bytes().await?.to_vec(), meta)))
                }
                Err(object_store::Error::NotFound { .. }) => Ok(None),
                Err(e) => Err(e),
            }
        })
        .map_err(|e| self.error(rel, e))
    }

    /// Every object under `rel`: its key and its path parts below `rel`.
    fn list_under(&self, rel: &str) -> Result<Vec<(Key, Vec<String>)>> {
        let base = self.key(rel);
        let objects = block_on(self.store.list(Some(&base)).try_collect::<Vec<_>>())
            .map_err(|e| self.error(rel, e))?;
        Ok(objects
            .into_iter()
            .filter_map(|meta| {
                let parts = meta.location.prefix_match(&base)?;
                let parts = parts.map(|p| p.as_ref().to_owned()).collect();
                Some((meta.location, parts))
            })
            .collect())
    }

    /// Replaces `rel` with what `change` makes of its current bytes (None
    /// when absent), on condition that nobody changed it in between (ETag
    /// match, or create-if-absent); otherwise reads again and retries.
    pub fn update(
        &self,
        rel: &str,
        mut change: impl FnMut(Option<&[u8]>) -> Result<String>,
    ) -> Result<()> {
        let key = self.key(rel);
        for attempt in 0..50u64 {
            let current = self.get(rel)?;
            let next = change(current.as_ref().map(|(bytes, _)| bytes.as_ref()))?;
            let mode = match &current {
                Some((_, meta)) => PutMode::Update(UpdateVersion {
                    e_tag: meta.e_tag.clone(),
                    version: meta.version.clone(),
                }),
                None => PutMode::Create,
            };
            let put = self.store.put_opts(
                &key,
                PutPayload::from(next.into_bytes()),
                PutOptions::from(mode),
            );
            match block_on(put) {
                Ok(_) => return Ok(()),
                Err(
                    object_store::Error::Precondition { .. }
                    | object_store::Error::AlreadyExists { .. },
                ) => {
                    // Someone else wrote it first: back off a little, re-read.
                    std::thread::sleep(std::time::Duration::from_millis(5 + 7 * attempt));
                }
                Err(e) => return Err(self.error(rel, e)),
            }
        }
        Err(self.error(
            rel,
            "other writers kept changing it; gave up after 50 tries",
        ))
    }

    /// Names of the top-level folders (candidate models).
    pub fn model_names(&self) -> Result<Vec<String>> {
        let prefix = (!self.prefix.is_empty()).then(|| Key::from(self.prefix.as_str()));
        let listed = block_on(self.store.list_with_delimiter(prefix.as_ref()))
            .map_err(|e| self.error("", e))?;
        Ok(listed
            .common_prefixes
            .iter()
            .filter_map(|p| p.filename().map(str::to_owned))
            .collect())
    }

    /// The version numbers under `model`: those claimed by any writer, and
    /// those published (with a manifest). None when `model` has no objects.
    fn numbers(&self, model: &str) -> Result<Option<(BTreeSet<u64>, BTreeSet<u64>)>> {
        let objects = self.list_under(model)?;
        if objects.is_empty() {
            return Ok(None);
        }
        let (mut claimed, mut published) = (BTreeSet::new(), BTreeSet::new());
        for (_, parts) in objects {
            if let Some(Ok(n)) = parts.first().map(|p| p.parse::<u64>()) {
                claimed.insert(n);
                if parts.len() == 2 && parts[1] == "manifest.json" {
                    published.insert(n);
                }
            }
        }
        Ok(Some((claimed, published)))
    }

    /// Published versions of `model`, ascending.
    pub fn versions(&self, model: &str) -> Result<Vec<u64>> {
        let (_, published) = self
            .numbers(model)?
            .ok_or_else(|| Error::NotFound(format!("model '{model}' is not in the registry")))?;
        Ok(published.into_iter().collect())
    }

    /// The local folder version `version` of `model` is (or will be) cached in.
    pub fn cache_dir(&self, model: &str, version: u64) -> PathBuf {
        self.cache.join(model).join(version.to_string())
    }

    /// Claims the next free version number of `model`, uploads every file of
    /// `staged` into it, then the manifest `manifest(version)` returns, last.
    /// The staged folder becomes the cached copy. Returns the version.
    pub fn publish(
        &self,
        model: &str,
        staged: &Path,
        manifest: impl Fn(u64) -> Result<String>,
    ) -> Result<u64> {
        let version = self.claim(model)?;
        let path = staged.join("manifest.json");
        std::fs::write(&path, manifest(version)?).map_err(|e| Error::Invalid {
            path,
            reason: e.to_string(),
        })?;
        // The manifest goes last: it makes the version visible.
        self.upload_dir(staged, &format!("{model}/{version}"), "manifest.json")?;
        // The staged files are exactly what was published: keep them as the cache.
        let cached = self.cache_dir(model, version);
        if std::fs::rename(staged, &cached).is_err() {
            let _ = std::fs::remove_dir_all(staged);
        }
        Ok(version)
    }

    /// Creates `<model>/<n>/.claim` for the next free `n`, with a conditional
    /// put so that no other writer gets the same `n`.
    fn claim(&self, model: &str) -> Result<u64> {
        for _ in 0..100 {
            let next = self
                .numbers(model)?
                .and_then(|(claimed, _)| claimed.last().copied())
                .map_or(1, |n| n + 1);
            let rel = format!("{model}/{next}/.claim");
            let owner = format!(
                "{{\"pid\": {}, \"host\": \"{}\", \"at\": \"{}\"}}",
                std::process::id(),
                std::env::var("HOSTNAME").unwrap_or_default(),
                chrono::Utc::now().to_rfc3339()
            );
            let key = self.key(&rel);
            let put = self.store.put_opts(
                &key,
                PutPayload::from(owner.into_bytes()),
                PutOptions::from(PutMode::Create),
            );
            match block_on(put) {
                Ok(_) => return Ok(next),
                Err(object_store::Error::AlreadyExists { .. }) => continue,
                Err(e @ object_store::Error::NotImplemented { .. }) => {
                    return Err(self.error(
                        &rel,
                        format!(
                            "{e}: the registry needs a store with conditional put \
                             (on S3-compatible stores set AWS_CONDITIONAL_PUT=etag)"
                        ),
                    ));
                }
                Err(e) => return Err(self.error(&rel, e)),
            }
        }
        Err(self.error(model, "could not claim a version number after 100 tries"))
    }

    /// Streams the local `file` to `rel` (multipart for large files).
    fn upload(&self, file: &Path, rel: &str) -> Result<()> {
        let key = self.key(rel);
        block_on(async {
            let mut source = tokio::fs::File::open(file).await?;
            let mut sink = BufWriter::new(self.store.clone(), key);
            tokio::io::copy(&mut source, &mut sink).await?;
            sink.shutdown().await
        })
        .map_err(|e| self.error(rel, e))
    }

    /// The local folder holding version `version` of `model`: the cached
    /// copy, downloaded first if missing.
    pub fn fetch(&self, model: &str, version: u64) -> Result<PathBuf> {
        let dir = self.cache_dir(model, version);
        if dir.join("manifest.json").is_file() {
            return Ok(dir);
        }
        let tmp = self
            .cache
            .join(model)
            .join(unique(&format!(".download-{version}")));
        let files = self.download(&format!("{model}/{version}"), &tmp);
        if !files
            .as_ref()
            .is_ok_and(|f| f.iter().any(|rel| rel == "manifest.json"))
        {
            let _ = std::fs::remove_dir_all(&tmp);
            files?;
            return Err(Error::NotFound(format!(
                "model '{model}' has no version {version} in {}",
                self.url
            )));
        }
        match std::fs::rename(&tmp, &dir) {
            Ok(()) => Ok(dir),
            // Another process cached it first: use theirs.
            Err(_) if dir.join("manifest.json").is_file() => {
                let _ = std::fs::remove_dir_all(&tmp);
                Ok(dir)
            }
            Err(e) => {
                let _ = std::fs::remove_dir_all(&tmp);
                Err(Error::Invalid {
                    path: dir,
                    reason: e.to_string(),
                })
            }
        }
    }

    /// Removes the cached copy of one version; false if there was none.
    /// Processes sharing the cache see the folder whole or not at all: it
    /// is renamed away, then deleted (a later [`fetch`](Self::fetch)
    /// downloads it again). The store is not touched.
    pub fn evict(&self, model: &str, version: u64) -> Result<bool> {
        let dir = self.cache_dir(model, version);
        let gone = self
            .cache
            .join(model)
            .join(unique(&format!(".evict-{version}")));
        match std::fs::rename(&dir, &gone) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
            Err(e) => {
                return Err(Error::Invalid {
                    path: dir,
                    reason: format!("cannot evict the cached copy: {e}"),
                });
            }
        }
        std::fs::remove_dir_all(&gone).map_err(|e| Error::Invalid {
            path: gone,
            reason: format!("cannot delete the evicted copy: {e}"),
        })?;
        Ok(true)
    }

    /// The local folder this registry caches into.
    pub fn cache_root(&self) -> &Path {
        &self.cache
    }

    /// Downloads every object under `rel` into `dest` at the same relative
    /// paths (claim markers left out); returns those paths.
    pub fn download(&self, rel: &str, dest: &Path) -> Result<Vec<String>> {
        let mut files = Vec::new();
        for (key, parts) in self.list_under(rel)? {
            let file = parts.join("/");
            if file == ".claim" || parts.iter().any(|p| p == ".." || p.is_empty()) {
                continue;
            }
            let path = dest.join(&file);
            block_on(async {
                tokio::fs::create_dir_all(path.parent().unwrap_or(dest)).await?;
                let mut stream = self.store.get(&key).await?.into_stream();
                let mut out = tokio::fs::File::create(&path).await?;
                while let Some(chunk) = stream.try_next().await? {
                    out.write_all(&chunk).await?;
                }
                out.flush().await
            })
            .map_err(|e| self.error(&format!("{rel}/{file}"), e))?;
            files.push(file);
        }
        Ok(files)
    }

    /// Uploads every file of the local folder `dir` under `rel`, the file
    /// named `last` (if any) after all others.
    pub fn upload_dir(&self, dir: &Path, rel: &str, last: &str) -> Result<()> {
        let mut files = files_under(dir).map_err(|e| Error::Invalid {
            path: dir.to_path_buf(),
            reason: e.to_string(),
        })?;
        files.sort_by_key(|(_, name)| name == last);
        for (file, name) in files {
            self.upload(&file, &format!("{rel}/{name}"))?;
        }
        Ok(())
    }

    /// Deletes every object under `rel` whose path below it does not start
    /// with `keep`.
    pub fn remove_except(&self, rel: &str, keep: &str) -> Result<()> {
        self.remove_where(rel, |below| !below.starts_with(keep))
    }

    /// Deletes every object under `rel`.
    pub fn remove(&self, rel: &str) -> Result<()> {
        self.remove_where(rel, |_| true)
    }

    fn remove_where(&self, rel: &str, doomed: impl Fn(&str) -> bool) -> Result<()> {
        for (key, parts) in self.list_under(rel)? {
            if doomed(&parts.join("/")) {
                block_on(self.store.delete(&key)).map_err(|e| self.error(rel, e))?;
            }
        }
        Ok(())
    }
}

/// Every file under `dir`, with its `/`-separated path relative to `dir`.
fn files_under(dir: &Path) -> std::io::Result<Vec<(PathBuf, String)>> {
    let mut files = Vec::new();
    let mut pending = vec![(dir.to_path_buf(), String::new())];
    while let Some((folder, rel)) = pending.pop() {
        for entry in std::fs::read_dir(&folder)? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let child = if rel.is_empty() {
                name
            } else {
                format!("{rel}/{name}")
            };
            if entry.file_type()?.is_dir() {
                pending.push((entry.path(), child));
            } else {
                files.push((entry.path(), child));
            }
        }
    }
    files.sort_by(|a, b| a.1.cmp(&b.1));
    Ok(files)
}
