//! The storage seam: the one place that turns a lake URL into object stores and Delta tables.
//!
//! Accepts a local path, `file:///abs/path` and `s3://bucket/prefix`. S3 and S3-compatible stores
//! (MinIO, Ceph, R2, s3s-fs) are configured from [`StorageConfig`]; requests are path-style unless
//! configured otherwise. Delta commits on S3 use conditional puts (`If-None-Match: *`), so two
//! writers can never both create the same log entry and no DynamoDB lock is needed.

use std::collections::HashMap;
use std::sync::Arc;

use deltalake::DeltaTable;
use object_store::path::Path as ObjectPath;
use object_store::ObjectStore;
use url::Url;

use crate::config::{Config, StorageConfig};
use crate::error::{Error, Result};
use crate::range_cache::RangeCache;

/// A validated lake location plus the options every store client is built with.
#[derive(Clone)]
pub struct Lake {
    root: Url,
    options: HashMap<String, String>,
    /// One client (and connection pool) for the lake's own store, built on first use.
    root_store: Arc<std::sync::OnceLock<(Arc<dyn ObjectStore>, ObjectPath)>>,
    /// A remote lake's Delta tables all read through one cache of immutable reads (built on
    /// first use; `None` locally).
    table_store: Arc<std::sync::OnceLock<Option<Arc<RangeCache>>>>,
    read_cache_bytes: usize,
}

/// The most a remote lake's read cache holds: a quarter of the memory budget, at most this.
const READ_CACHE_MAX: u64 = 256 << 20;

impl std::fmt::Debug for Lake {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Options hold credentials: never print them.
        f.debug_struct("Lake")
            .field("root", &self.root.as_str())
            .finish()
    }
}

impl Lake {
    /// Validates the lake URL from the config. No I/O.
    pub fn from_config(cfg: &Config) -> Result<Lake> {
        let root = parse_location(&cfg.lake, true).map_err(|e| {
            Error::config(format!(
                "lake {:?} (--lake / CLICKLAKE_LAKE / lake): {e}",
                cfg.lake
            ))
        })?;
        Ok(Lake {
            options: storage_options(&root, &cfg.storage),
            root,
            root_store: Default::default(),
            table_store: Default::default(),
            read_cache_bytes: (cfg.memory_limit / 4).min(READ_CACHE_MAX) as usize,
        })
    }

    /// The store Delta tables of a remote lake read and write through: deltalake's own client for
    /// the URL's scheme behind [`RangeCache`], one for the whole run. `None` for a local lake.
    fn table_store(&self) -> Result<Option<Arc<RangeCache>>> {
        if let Some(s) = self.table_store.get() {
            return Ok(s.clone());
        }
        let store = match self.is_local() {
            true => None,
            false => {
                use deltalake::logstore::{object_store_factories, StorageConfig};
                let scheme = Url::parse(&format!("{}://", self.root.scheme()))
                    .map_err(|e| Error::config(format!("{}: {e}", redact(&self.root))))?;
                let factories = object_store_factories();
                let factory = factories.get(&scheme).ok_or_else(|| {
                    Error::config(format!(
                        "{}: no object store for this scheme",
                        redact(&self.root)
                    ))
                })?;
                // The bucket's client, undecorated: deltalake adds its own layers per table.
                let config = StorageConfig::parse_options(self.storage_options())?;
                let (client, _) = factory.value().parse_url_opts(&self.root, &config)?;
                Some(Arc::new(RangeCache::new(client, self.read_cache_bytes)))
            }
        };
        let _ = self.table_store.set(store.clone());
        Ok(store)
    }

    /// A Delta table builder for `url` with the lake's options and store.
    fn table_builder(&self, url: Url) -> Result<deltalake::DeltaTableBuilder> {
        let builder = deltalake::DeltaTableBuilder::from_url(url.clone())?
            .with_storage_options(self.storage_options());
        Ok(match self.table_store()? {
            Some(store) => builder.with_storage_backend(store, url),
            None => builder,
        })
    }

    /// (ranges answered from the read cache, ranges requested from the store) so far.
    pub fn read_cache_stats(&self) -> Option<(u64, u64)> {
        self.table_store
            .get()
            .and_then(|s| s.as_ref().map(|c| c.stats()))
    }

    /// The lake root, always ending in `/`.
    pub fn root(&self) -> &Url {
        &self.root
    }

    pub fn is_local(&self) -> bool {
        self.root.scheme() == "file"
    }

    /// The URL of a table's directory under the root.
    pub fn table_url(&self, name: &str) -> Url {
        self.root
            .join(&format!("{name}/"))
            .expect("table names are URL-safe")
    }

    /// The options handed to deltalake and object_store (contains credentials).
    pub fn storage_options(&self) -> HashMap<String, String> {
        self.options.clone()
    }

    /// Creates the root directory of a local lake. Object stores need nothing.
    pub fn ensure_root(&self) -> Result<()> {
        if self.is_local() {
            let path = self
                .root
                .to_file_path()
                .map_err(|_| Error::config(format!("lake {} is not a local path", self.root)))?;
            std::fs::create_dir_all(&path).map_err(|e| {
                Error::runtime(format!(
                    "cannot create lake directory {}: {e}",
                    path.display()
                ))
            })?;
        }
        Ok(())
    }

    /// An object store client for any URL with this lake's settings (inputs on S3 use it too),
    /// and the path of the URL inside that store.
    pub fn store_for(&self, url: &Url) -> Result<(Arc<dyn ObjectStore>, ObjectPath)> {
        let options = if url.scheme() == "s3" || url.scheme() == "s3a" {
            self.options.clone()
        } else {
            HashMap::new()
        };
        let (store, path) = object_store::parse_url_opts(url, options)
            .map_err(|e| Error::config(format!("{}: {e}", redact(url))))?;
        Ok((Arc::from(store), path))
    }

    /// The client of the lake's own store (shared, built on first use) and the root's path in it.
    pub fn root_store(&self) -> Result<(Arc<dyn ObjectStore>, ObjectPath)> {
        if let Some(s) = self.root_store.get() {
            return Ok(s.clone());
        }
        let s = self.store_for(&self.root)?;
        let _ = self.root_store.set(s.clone());
        Ok(s)
    }

    /// Opens a table, or `None` when it has not been created yet.
    pub async fn open_table(&self, name: &str) -> Result<Option<DeltaTable>> {
        let url = self.table_url(name);
        if !self.table_exists(name).await? {
            return Ok(None);
        }
        match self.table_builder(url)?.load().await {
            Ok(t) => Ok(Some(t)),
            Err(deltalake::DeltaTableError::NotATable(_)) => Ok(None),
            Err(deltalake::DeltaTableError::InvalidTableLocation(_)) => Ok(None),
            Err(e) => Err(Error::Delta(e)),
        }
    }

    /// True when the table has a transaction log: one directory check locally, one LIST request
    /// on an object store (cheaper, and quieter, than letting a Delta load fail).
    pub async fn table_exists(&self, name: &str) -> Result<bool> {
        let url = self.table_url(name);
        if self.is_local() {
            return Ok(url
                .to_file_path()
                .is_ok_and(|p| p.join("_delta_log").is_dir()));
        }
        let (store, root) = self.root_store()?;
        let prefix = root.clone().join(name).join("_delta_log");
        let listed = store.list_with_delimiter(Some(&prefix)).await?;
        Ok(!listed.objects.is_empty() || !listed.common_prefixes.is_empty())
    }

    /// Opens a table at an older version (time travel).
    pub async fn open_table_at(&self, name: &str, version: i64) -> Result<Option<DeltaTable>> {
        self.open_table_as_of(name, TableAsOf::Version(version))
            .await
    }

    /// Opens a table as it was at a version or a time, or `None` when it did not exist then.
    pub async fn open_table_as_of(
        &self,
        name: &str,
        as_of: TableAsOf,
    ) -> Result<Option<DeltaTable>> {
        match as_of {
            // A version the table does not have yet is absent, not a failed load: check the
            // current version first.
            TableAsOf::Version(v) => match self.open_table(name).await? {
                Some(current) if current.version().is_some_and(|latest| v <= latest as i64) => {}
                _ => return Ok(None),
            },
            TableAsOf::Time(_) => {
                if !self.table_exists(name).await? {
                    return Ok(None);
                }
            }
        }
        let url = self.table_url(name);
        let builder = self.table_builder(url)?;
        let builder = match as_of {
            TableAsOf::Version(v) => builder.with_version(v as _),
            TableAsOf::Time(t) => builder.with_timestamp(t),
        };
        match builder.load().await {
            // For a time before the oldest commit the log holds (before the table was created,
            // or before log retention removed the older ones), deltalake loads that oldest
            // commit; the table as it was then is unknown, so it is absent, as Delta's own
            // time travel refuses it.
            Ok(t) => match as_of {
                TableAsOf::Time(at) => Ok(committed_ms(&t)
                    .await
                    .is_none_or(|ms| ms <= at.timestamp_millis())
                    .then_some(t)),
                TableAsOf::Version(_) => Ok(Some(t)),
            },
            Err(deltalake::DeltaTableError::NotATable(_)) => Ok(None),
            // No commit that early (or that version was cleaned up): it did not exist then.
            Err(deltalake::DeltaTableError::InvalidVersion(_)) => Ok(None),
            Err(e) => Err(Error::Delta(e)),
        }
    }
}

/// When the loaded version of `table` was committed, in milliseconds since the epoch: the commit
/// file's time, or for a version read from a checkpoint (no commit file is listed then) its
/// commit info's `timestamp`.
pub async fn committed_ms(table: &DeltaTable) -> Option<i64> {
    let version = table.version()?;
    match table.snapshot().ok()?.version_timestamp(version) {
        Some(ms) => Some(ms),
        None => commit_timestamp(table, version as i64).await,
    }
}

/// The `timestamp` of commit `version`'s commit info, if the log still holds it.
async fn commit_timestamp(table: &DeltaTable, version: i64) -> Option<i64> {
    let actions = crate::delta::commit_actions(table, version).await.ok()??;
    actions
        .iter()
        .find_map(|action| action["commitInfo"]["timestamp"].as_i64())
}

/// A point in a table's history.
#[derive(Debug, Clone, Copy)]
pub enum TableAsOf {
    Version(i64),
    Time(chrono::DateTime<chrono::Utc>),
}

/// Parses a user-given location. `dir` makes the URL end in `/`.
pub fn parse_location(text: &str, dir: bool) -> std::result::Result<Url, String> {
    let text = text.trim();
    if let Some((scheme, _)) = text.split_once("://") {
        let mut url = Url::parse(text).map_err(|e| format!("not a valid URL: {e}"))?;
        match scheme {
            "s3" | "s3a" => {
                if url.host_str().is_none_or(|h| h.is_empty()) {
                    return Err("an s3:// URL needs a bucket: s3://bucket/prefix".into());
                }
            }
            "file" => {
                if url.to_file_path().is_err() {
                    return Err("a file:// URL needs an absolute path: file:///path".into());
                }
            }
            other => {
                return Err(format!(
                    "unsupported scheme {other}:// (use a local path, file:// or s3://)"
                ))
            }
        }
        if dir && !url.path().ends_with('/') {
            let p = format!("{}/", url.path());
            url.set_path(&p);
        }
        Ok(url)
    } else {
        if text.contains(':') && text.split(':').next().is_some_and(|s| s.len() > 1) {
            return Err("looks like a URL without :// (use s3://bucket/prefix or a path)".into());
        }
        let path = std::path::Path::new(text);
        let abs = if path.is_absolute() {
            path.to_path_buf()
        } else {
            std::env::current_dir()
                .map_err(|e| format!("cannot read the current directory: {e}"))?
                .join(path)
        };
        let normalized = normalize_path(&abs);
        let url = if dir {
            Url::from_directory_path(&normalized)
        } else {
            Url::from_file_path(&normalized)
        };
        url.map_err(|_| "not a valid path".to_string())
    }
}

/// Removes `.` and `..` components without touching the file system.
fn normalize_path(p: &std::path::Path) -> std::path::PathBuf {
    use std::path::Component;
    let mut out = std::path::PathBuf::new();
    for c in p.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            other => out.push(other.as_os_str()),
        }
    }
    out
}

fn storage_options(root: &Url, s: &StorageConfig) -> HashMap<String, String> {
    let mut o = HashMap::new();
    if root.scheme() != "s3" && root.scheme() != "s3a" {
        // Inputs may still live on S3 while the lake is local.
    }
    if let Some(ep) = &s.endpoint {
        o.insert("aws_endpoint".into(), ep.clone());
    }
    let region = s.region.clone().unwrap_or_else(|| "us-east-1".to_string());
    o.insert("aws_region".into(), region);
    o.insert("aws_allow_http".into(), s.allow_http.to_string());
    o.insert(
        "aws_virtual_hosted_style_request".into(),
        s.virtual_hosted_style.to_string(),
    );
    // Commits rely on put-if-absent; S3 and the S3-compatible stores honour If-None-Match.
    o.insert("aws_conditional_put".into(), "etag".into());
    if let (Some(k), Some(sk)) = (&s.access_key_id, &s.secret_access_key) {
        o.insert("aws_access_key_id".into(), k.expose().to_string());
        o.insert("aws_secret_access_key".into(), sk.expose().to_string());
    }
    if let Some(t) = &s.session_token {
        o.insert("aws_session_token".into(), t.expose().to_string());
    }
    if s.no_connection_reuse {
        o.insert("pool_max_idle_per_host".into(), "0".into());
    }
    // Server-side encryption applies to every PUT and multipart upload of every client.
    if let Some(sse) = &s.server_side_encryption {
        o.insert("aws_server_side_encryption".into(), sse.clone());
    }
    if let Some(k) = &s.sse_kms_key_id {
        o.insert("aws_sse_kms_key_id".into(), k.clone());
    }
    o
}

/// A URL with any userinfo removed, safe for messages.
pub fn redact(url: &Url) -> String {
    let mut u = url.clone();
    let _ = u.set_username("");
    let _ = u.set_password(None);
    u.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_side_encryption_reaches_every_client() {
        let cfg = StorageConfig {
            server_side_encryption: Some("aws:kms".into()),
            sse_kms_key_id: Some("key-1".into()),
            ..Default::default()
        };
        let root = parse_location("s3://b/p", true).unwrap();
        let o = storage_options(&root, &cfg);
        assert_eq!(o["aws_server_side_encryption"], "aws:kms");
        assert_eq!(o["aws_sse_kms_key_id"], "key-1");
        assert!(!storage_options(&root, &StorageConfig::default())
            .contains_key("aws_server_side_encryption"));
    }

    #[test]
    fn connections_are_reused_unless_configured_not_to_be() {
        let root = parse_location("s3://b/p", true).unwrap();
        let default = storage_options(&root, &StorageConfig::default());
        assert!(!default.contains_key("pool_max_idle_per_host"));
        let cfg = StorageConfig {
            no_connection_reuse: true,
            ..Default::default()
        };
        assert_eq!(storage_options(&root, &cfg)["pool_max_idle_per_host"], "0");
    }

    #[test]
    fn locations_parse_or_explain() {
        assert_eq!(
            parse_location("s3://b/p", true).unwrap().as_str(),
            "s3://b/p/"
        );
        assert!(parse_location("s3:///p", true)
            .unwrap_err()
            .contains("bucket"));
        assert!(parse_location("gs://b/p", true)
            .unwrap_err()
            .contains("unsupported scheme"));
        assert!(parse_location("file://relative", true).is_err());
        let local = parse_location("/tmp/x/../lake", true).unwrap();
        assert_eq!(local.as_str(), "file:///tmp/lake/");
        assert!(parse_location("s3:bucket", true)
            .unwrap_err()
            .contains("://"));
    }
}

/// The object stores of an ad-hoc SQL session (`clicklake sql`): local paths as DataFusion has
/// them, and a client with the lake's settings (endpoint, region, credentials) for each `s3://`
/// bucket a statement names (`FROM 's3://bucket/file.parquet'`, `COPY … TO 's3://…'`), built on
/// first use. Any other scheme is a plan error naming it, instead of DataFusion's "internal
/// error … please file a bug report".
#[derive(Debug)]
pub struct SessionStores {
    lake: Lake,
    inner: datafusion::execution::object_store::DefaultObjectStoreRegistry,
}

impl SessionStores {
    pub fn new(lake: &Lake) -> Self {
        SessionStores {
            lake: lake.clone(),
            inner: Default::default(),
        }
    }
}

impl datafusion::execution::object_store::ObjectStoreRegistry for SessionStores {
    fn register_store(
        &self,
        url: &Url,
        store: Arc<dyn ObjectStore>,
    ) -> Option<Arc<dyn ObjectStore>> {
        self.inner.register_store(url, store)
    }

    fn deregister_store(&self, url: &Url) -> datafusion::error::Result<Arc<dyn ObjectStore>> {
        self.inner.deregister_store(url)
    }

    fn get_store(&self, url: &Url) -> datafusion::error::Result<Arc<dyn ObjectStore>> {
        use datafusion::error::DataFusionError;
        if let Ok(store) = self.inner.get_store(url) {
            return Ok(store);
        }
        match url.scheme() {
            "s3" | "s3a" => {
                let (store, _) = self
                    .lake
                    .store_for(url)
                    .map_err(|e| DataFusionError::Plan(e.to_string()))?;
                self.inner.register_store(url, store.clone());
                Ok(store)
            }
            other => Err(DataFusionError::Plan(format!(
                "{other}:// is not a store clicklake reads or writes (use a local path or s3://)"
            ))),
        }
    }
}
