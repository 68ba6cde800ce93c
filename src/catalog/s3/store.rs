//! The object-store client behind [`S3Catalog`](super::S3Catalog): the
//! `s3://BUCKET/PREFIX` location, the client built from it and the
//! `AWS_*` environment, the bucket listing, and what a store error means
//! for the catalog.
//!
//! The client is [`object_store`]'s `AmazonS3` (Apache Arrow project):
//! SigV4 signing, credentials from `AWS_ACCESS_KEY_ID` /
//! `AWS_SECRET_ACCESS_KEY` / `AWS_SESSION_TOKEN` (and web-identity, ECS
//! and instance-metadata credentials) or else from the profile of the AWS
//! shared files ([`super::profile`]), paginated `ListObjectsV2`,
//! conditional ranged GETs (`If-Match`), and retries with exponential
//! backoff on throttling (429/503), other 5xx and connection errors. It was
//! chosen over `opendal` because it brings only the S3 client (opendal
//! carries a layer and service framework for ~50 backends) and reuses this
//! binary's TLS provider (aws-lc-rs), so it adds little to the build.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::list::{PaginatedListOptions, PaginatedListStore};
use object_store::path::Path as StorePath;
use object_store::{BackoffConfig, ClientOptions, ObjectMeta, RetryConfig};
use serde::{Deserialize, Serialize};

use super::profile::Profile;

/// Where the packages are: an `s3://BUCKET[/PREFIX]` location plus how to
/// reach the store. The credentials are not here: they come from the
/// standard `AWS_*` environment variables (see the module header).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Location {
    /// Bucket name.
    pub bucket: String,
    /// Key prefix the packages live under, without leading or trailing
    /// `/`; empty for the whole bucket. A package's catalog key is its
    /// object key less `PREFIX/`.
    pub prefix: String,
    /// Endpoint URL of a self-hosted store (`http://127.0.0.1:9000`);
    /// `None` = AWS (from `AWS_ENDPOINT` when set).
    pub endpoint: Option<String>,
    /// Region; `None` = `AWS_REGION`/`AWS_DEFAULT_REGION`, else `us-east-1`.
    pub region: Option<String>,
    /// Path-style requests (`ENDPOINT/BUCKET/KEY`), as most self-hosted
    /// stores need; otherwise virtual-hosted style (`BUCKET.ENDPOINT/KEY`).
    pub path_style: bool,
}

/// Why an `s3://` location is not usable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{url:?}: {why} (expected s3://BUCKET or s3://BUCKET/PREFIX)")]
pub struct LocationError {
    /// The location as given.
    pub url: String,
    /// What is wrong with it.
    pub why: &'static str,
}

impl S3Location {
    /// True when `arg` (the package argument) names an object store rather
    /// than a folder.
    pub fn is_s3_url(arg: &str) -> bool {
        arg.starts_with("s3://")
    }

    /// Parses `s3://BUCKET[/PREFIX]`; endpoint, region and addressing style
    /// are left at their defaults.
    ///
    /// # Errors
    /// [`LocationError`]: not `s3://`, no bucket, or a prefix with `..`,
    /// control characters or backslashes.
    pub fn parse(url: &str) -> Result<Self, LocationError> {
        let fail = |why| LocationError {
            url: url.to_string(),
            why,
        };
        let rest = url.strip_prefix("s3://").ok_or_else(|| fail("not s3://"))?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(fail("no bucket name"));
        }
        // S3's bucket naming rules, loosened to what self-hosted stores
        // also accept; checked here so a typo is a start-up error rather
        // than a store that answers 400 on every listing.
        let bucket_chars = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_');
        if !(3..=63).contains(&bucket.len()) || !bucket.chars().all(bucket_chars) {
            return Err(fail(
                "a bucket name is 3 to 63 letters, digits, '.', '-', '_'",
            ));
        }
        let prefix = crate::catalog::path::normalize(prefix)
            .map_err(|_| fail("the prefix is not a clean key path"))?;
        Ok(S3Location {
            bucket: bucket.to_string(),
            prefix,
            endpoint: None,
            region: None,
            path_style: false,
        })
    }

    /// `s3://BUCKET/PREFIX`, plus ` at ENDPOINT` for a self-hosted store.
    pub fn display(&self) -> String {
        let mut s = format!("s3://{}", self.bucket);
        if !self.prefix.is_empty() {
            s.push('/');
            s.push_str(&self.prefix);
        }
        if let Some(endpoint) = &self.endpoint {
            s.push_str(" at ");
            s.push_str(endpoint);
        }
        s
    }

    /// The client for this location, credentials from the environment.
    /// Retries: at most [`MAX_RETRIES`] per request with backoff from
    /// 100 ms to 2 s, within [`RETRY_WINDOW`], so a store that is down
    /// answers the catalog within seconds and the catalog's own backoff
    /// takes over. Connections time out after [`CONNECT_TIMEOUT`]; a
    /// transfer has no total time limit (packages can be large) but gives
    /// up after [`IDLE_TIMEOUT`] without data.
    ///
    /// # Errors
    /// A configuration the client refuses (a malformed endpoint URL), or a
    /// self-hosted endpoint (`--s3-endpoint` or `AWS_ENDPOINT`…) without
    /// credentials: the client would otherwise ask a cloud
    /// instance-metadata service for them.
    pub fn client(&self) -> Result<Arc<AmazonS3>, object_store::Error> {
        // object_store panics on an endpoint it cannot make a request URI
        // of: check it (and the variables it would read one from) first.
        let from_env = ["AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT", "AWS_ENDPOINT_URL"]
            .iter()
            .filter_map(|v| std::env::var(v).ok().filter(|s| !s.is_empty()));
        let mut self_hosted = false;
        for endpoint in self.endpoint.iter().cloned().chain(from_env) {
            check_endpoint(&endpoint).map_err(|why| object_store::Error::Generic {
                store: "S3",
                source: why.into(),
            })?;
            self_hosted = true;
        }
        let set = |var: &str| std::env::var_os(var).is_some_and(|v| !v.is_empty());
        let in_env = set("AWS_ACCESS_KEY_ID");
        // Credentials the client finds by itself: web identity (EKS),
        // the container's (ECS).
        let found_by_client = [
            "AWS_WEB_IDENTITY_TOKEN_FILE",
            "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
            "AWS_CONTAINER_CREDENTIALS_FULL_URI",
        ]
        .into_iter()
        .any(set);
        // The AWS_* variables win; else the shared files' profile.
        let profile = Profile::from_environment();
        let from_profile = if in_env {
            None
        } else {
            profile.as_ref().and_then(|p| p.credentials.clone())
        };
        if self_hosted && !in_env && !found_by_client && from_profile.is_none() {
            return Err(object_store::Error::Generic {
                store: "S3",
                source: "a self-hosted store needs AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY in the environment, or a profile with them in ~/.aws/credentials (AWS_PROFILE, AWS_SHARED_CREDENTIALS_FILE)".into(),
            });
        }
        let mut builder = AmazonS3Builder::from_env()
            .with_bucket_name(&self.bucket)
            .with_virtual_hosted_style_request(!self.path_style)
            .with_retry(RetryConfig {
                backoff: BackoffConfig {
                    init_backoff: Duration::from_millis(100),
                    max_backoff: Duration::from_secs(2),
                    base: 2.0,
                },
                max_retries: MAX_RETRIES,
                retry_timeout: RETRY_WINDOW,
            })
            .with_client_options(
                ClientOptions::new()
                    .with_connect_timeout(CONNECT_TIMEOUT)
                    .with_timeout_disabled()
                    .with_read_timeout(IDLE_TIMEOUT)
                    .with_pool_idle_timeout(IDLE_TIMEOUT),
            );
        if let Some(endpoint) = &self.endpoint {
            builder = builder
                .with_endpoint(endpoint)
                .with_allow_http(endpoint.starts_with("http://"));
        }
        if let Some((key_id, secret)) = from_profile {
            builder = builder
                .with_access_key_id(key_id)
                .with_secret_access_key(secret);
            if let Some(token) = profile.as_ref().and_then(|p| p.session_token.clone()) {
                builder = builder.with_token(token);
            }
        }
        let region_in_env = ["AWS_REGION", "AWS_DEFAULT_REGION"]
            .iter()
            .any(|v| std::env::var_os(v).is_some_and(|v| !v.is_empty()));
        let region = self.region.clone().or_else(|| {
            (!region_in_env)
                .then(|| profile.and_then(|p| p.region))
                .flatten()
        });
        if let Some(region) = region {
            builder = builder.with_region(region);
        }
        Ok(Arc::new(builder.build()?))
    }

    /// The prefix a listing asks for, as written (`%` and non-ASCII
    /// characters not encoded, or the listing would ask for another
    /// prefix and find nothing), with its `/`; empty for the whole bucket.
    fn list_prefix(&self) -> String {
        if self.prefix.is_empty() {
            String::new()
        } else {
            format!("{}/", self.prefix)
        }
    }

    /// The object path of catalog key `key`: the object key as it is
    /// (`Path::parse`, as the listing made it; `Path::from` would
    /// percent-encode `%` and non-ASCII characters into another key).
    pub fn object(&self, key: &str) -> StorePath {
        let full = if self.prefix.is_empty() {
            key.to_string()
        } else {
            format!("{}/{key}", self.prefix)
        };
        StorePath::parse(&full).unwrap_or_else(|_| StorePath::from(full))
    }

    /// Lists every object under the prefix (all pages), as catalog keys
    /// with what the listing says about each. A key the client cannot
    /// represent (a control character, an empty or `.` segment) is skipped
    /// with a warning instead of failing the listing: the page holding it
    /// is listed again one key at a time up to it. The marker of a folder
    /// holding objects (`Jun/` beside `Jun/a.zip`, made by consoles and
    /// sync tools, listed as `Jun`) is no object to serve.
    ///
    /// # Errors
    /// The listing failed after the client's retries, or a key the client
    /// cannot represent was met twice (a store that does not start a
    /// listing after a given key).
    pub async fn list(
        &self,
        store: &impl PaginatedListStore,
    ) -> Result<Vec<(String, Listed)>, object_store::Error> {
        let strip = self.list_prefix();
        let prefix = (!strip.is_empty()).then_some(strip.as_str());
        // By location: a key listed twice (a page listed again one key at
        // a time) counts once.
        let mut listed: std::collections::BTreeMap<String, ObjectMeta> = Default::default();
        let mut token = None;
        // Set after a page failed on a key: list one key at a time from
        // `offset` until that key is passed.
        let mut stepping = false;
        let mut offset: Option<String> = None;
        let mut skipped: HashSet<String> = HashSet::new();
        loop {
            let opts = PaginatedListOptions {
                offset: offset.clone(),
                page_token: token.clone(),
                max_keys: stepping.then_some(1),
                ..PaginatedListOptions::default()
            };
            match store.list_paginated(prefix, opts).await {
                Ok(page) => {
                    if let Some(last) = page.result.objects.last() {
                        offset = Some(last.location.to_string());
                    }
                    for meta in page.result.objects {
                        listed.insert(meta.location.to_string(), meta);
                    }
                    match page.page_token {
                        Some(next) => token = Some(next),
                        None => break,
                    }
                }
                Err(object_store::Error::InvalidPath { source }) if stepping => {
                    // The one key of this page: skip it, and list on after
                    // it in whole pages again. The same key twice means the
                    // store did not start after it (`start-after`
                    // unsupported): the listing fails as it would without
                    // the skip, instead of going round for good.
                    let Some(key) = raw_key(&source).map(str::to_string) else {
                        return Err(object_store::Error::InvalidPath { source });
                    };
                    if !skipped.insert(key.clone()) {
                        return Err(object_store::Error::InvalidPath { source });
                    }
                    tracing::warn!(key, %source, "object key cannot be served: skipped");
                    offset = Some(key);
                    token = None;
                    stepping = false;
                }
                Err(object_store::Error::InvalidPath { .. }) => {
                    // The page holds a key the client cannot represent:
                    // again from the last key listed, one at a time.
                    token = None;
                    stepping = true;
                }
                Err(e) => return Err(e),
            }
        }
        let metas: Vec<ObjectMeta> = listed.into_values().collect();
        let markers = folder_markers(&metas);
        Ok(metas
            .into_iter()
            .filter(|meta| !markers.contains(meta.location.as_ref()))
            .filter_map(|meta| {
                let key = meta.location.as_ref().strip_prefix(&strip)?.to_string();
                Some((
                    key,
                    Listed {
                        size: meta.size,
                        modified_ms: meta.last_modified.timestamp_millis(),
                        etag: meta.e_tag,
                    },
                ))
            })
            .collect())
    }
}

/// The listed objects that are markers of folders holding objects: empty,
/// and named as the folder of another (`Jun` beside `Jun/a.zip`; the
/// client lists the marker `Jun/` without its slash).
fn folder_markers(metas: &[ObjectMeta]) -> HashSet<String> {
    let folders: HashSet<&str> = metas
        .iter()
        .filter_map(|m| {
            m.location
                .as_ref()
                .rsplit_once('/')
                .map(|(folder, _)| folder)
        })
        .collect();
    metas
        .iter()
        .filter(|m| m.size == 0 && folders.contains(m.location.as_ref()))
        .map(|m| m.location.to_string())
        .collect()
}

/// The object key an invalid-path error names.
fn raw_key(error: &object_store::path::Error) -> Option<&str> {
    use object_store::path::Error as E;
    match error {
        E::EmptySegment { path } | E::BadSegment { path, .. } => Some(path),
        _ => None,
    }
}

/// Most retries of one request to the store.
pub const MAX_RETRIES: usize = 3;
/// Longest time one request to the store is retried for.
pub const RETRY_WINDOW: Duration = Duration::from_secs(10);
/// Longest wait for a TCP connection to the store.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest time an idle pooled connection to the store is kept.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// What a bucket listing says about one object: the change detector. An
/// object whose listing is unchanged is not read again; any change of
/// size, Last-Modified or ETag (when the store lists one) means a new
/// version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Listed {
    /// Size in bytes.
    pub size: u64,
    /// Last-Modified, milliseconds since the Unix epoch.
    pub modified_ms: i64,
    /// ETag as listed (quotes included), when the store lists one.
    pub etag: Option<String>,
}

impl Listed {
    /// Last-Modified as a [`SystemTime`] (the epoch for a time before it).
    pub fn modified(&self) -> SystemTime {
        u64::try_from(self.modified_ms)
            .map(|ms| SystemTime::UNIX_EPOCH + Duration::from_millis(ms))
            .unwrap_or(SystemTime::UNIX_EPOCH)
    }
}

/// What a failed store request means for the catalog.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// The store refused who we are (HTTP 401/403: wrong key or secret,
    /// no permission): a start-up error, not something to wait out.
    Credentials,
    /// The bucket does not exist (404 on the listing).
    NoBucket,
    /// The object changed between listing and reading (412 on `If-Match`).
    Changed,
    /// The store answers but refuses the request in a way waiting will
    /// not fix (a 4xx on the listing). Never returned by [`Failure::of`]:
    /// the catalog finds it out at start-up.
    Refused,
    /// Anything else (unreachable, 5xx after retries): wait and retry.
    Unavailable,
}

impl Failure {
    /// Sorts an [`object_store::Error`].
    pub fn of(err: &object_store::Error) -> Self {
        match err {
            object_store::Error::PermissionDenied { .. }
            | object_store::Error::Unauthenticated { .. } => Failure::Credentials,
            object_store::Error::NotFound { .. } => Failure::NoBucket,
            object_store::Error::Precondition { .. } => Failure::Changed,
            _ => Failure::Unavailable,
        }
    }
}

/// Checks an S3 endpoint URL: `http://` or `https://`, a host, a port
/// that fits (`http://minio.lan:9000`).
///
/// # Errors
/// What is wrong with it, naming it.
pub fn check_endpoint(endpoint: &str) -> Result<(), String> {
    let bad = |why: &str| Err(format!("S3 endpoint {endpoint:?}: {why}"));
    let Ok(uri) = endpoint.parse::<http::Uri>() else {
        return bad("not a URL (http://HOST[:PORT])");
    };
    if !matches!(uri.scheme_str(), Some("http" | "https")) {
        return bad("the scheme must be http:// or https://");
    }
    let Some(authority) = uri.authority().filter(|a| !a.host().is_empty()) else {
        return bad("no host");
    };
    // `http::Uri` keeps a port that does not fit 16 bits as text.
    let port = match authority.as_str().rsplit_once(':') {
        Some((_, port)) if !port.ends_with(']') => Some(port),
        _ => None,
    };
    if port.is_some_and(|p| p.parse::<u16>().is_err()) {
        return bad("the port must be 0-65535");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::ListResult;
    use object_store::list::PaginatedListResult;

    /// A bucket listed as S3 does (keys in order, `start-after`,
    /// continuation tokens, `max-keys`, pages of `page` keys), failing a
    /// page that holds a key the client cannot represent as object_store
    /// does; or one that ignores `start-after`.
    struct Scripted {
        keys: Vec<&'static str>,
        page: usize,
        honours_start_after: bool,
        requests: std::sync::atomic::AtomicUsize,
    }

    #[async_trait::async_trait]
    impl PaginatedListStore for Scripted {
        async fn list_paginated(
            &self,
            prefix: Option<&str>,
            opts: PaginatedListOptions,
        ) -> object_store::Result<PaginatedListResult> {
            let n = self
                .requests
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            assert!(n < 1000, "the listing went round");
            let mut keys: Vec<&str> = self.keys.clone();
            keys.sort_unstable();
            keys.retain(|k| k.starts_with(prefix.unwrap_or("")));
            let from = match (&opts.page_token, &opts.offset) {
                (Some(token), _) => token.parse().unwrap(),
                (None, Some(after)) if self.honours_start_after => {
                    keys.iter().take_while(|k| **k <= after.as_str()).count()
                }
                _ => 0,
            };
            let size = opts.max_keys.unwrap_or(self.page);
            let end = (from + size).min(keys.len());
            let objects = keys[from..end]
                .iter()
                .map(|k| {
                    Ok(ObjectMeta {
                        location: StorePath::parse(k)?,
                        last_modified: chrono::DateTime::UNIX_EPOCH,
                        size: 10,
                        e_tag: None,
                        version: None,
                    })
                })
                .collect::<Result<Vec<_>, object_store::path::Error>>()?;
            Ok(PaginatedListResult {
                result: ListResult {
                    common_prefixes: Vec::new(),
                    objects,
                    extensions: Default::default(),
                },
                page_token: (end < keys.len()).then(|| end.to_string()),
            })
        }
    }

    fn scripted(keys: &[&'static str], honours_start_after: bool) -> Scripted {
        Scripted {
            keys: keys.to_vec(),
            page: 3,
            honours_start_after,
            requests: Default::default(),
        }
    }

    /// Keys the client cannot represent, on the second page and later, are
    /// skipped; every other key of every page is listed once.
    #[tokio::test]
    async fn keys_the_client_cannot_represent_are_skipped_on_any_page() {
        let loc = S3Location::parse("s3://fota/fleet").unwrap();
        let store = scripted(
            &[
                "fleet/a.zip",
                "fleet/b.zip",
                "fleet/c.zip",
                "fleet/d.zip",
                "fleet/e\tnote.txt",
                "fleet/f.zip",
                "fleet/g//h.zip",
                "fleet/i.zip",
                "other/x.zip",
            ],
            true,
        );
        let listed = loc.list(&store).await.unwrap();
        let keys: Vec<&str> = listed.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, ["a.zip", "b.zip", "c.zip", "d.zip", "f.zip", "i.zip"]);
    }

    /// A store that ignores `start-after` cannot be listed past such a
    /// key: the listing fails as it did before the skip, instead of going
    /// round for good.
    #[tokio::test]
    async fn a_store_ignoring_start_after_fails_the_listing_instead_of_looping() {
        let loc = S3Location::parse("s3://fota/fleet").unwrap();
        let store = scripted(&["fleet/a.zip", "fleet/b\tc.zip", "fleet/d.zip"], false);
        let err = loc.list(&store).await.unwrap_err();
        assert!(
            matches!(err, object_store::Error::InvalidPath { .. }),
            "{err}"
        );
    }

    /// A console's or sync tool's `Jun/` marker beside `Jun/a.zip` is no
    /// package; an empty object that names no folder stays (and fails
    /// validation as any empty file does).
    #[test]
    fn markers_of_folders_with_objects_are_not_packages() {
        let meta = |key: &str, size: u64| ObjectMeta {
            location: StorePath::parse(key).unwrap(),
            last_modified: chrono::DateTime::UNIX_EPOCH,
            size,
            e_tag: None,
            version: None,
        };
        let metas = [
            meta("fleet/Jun/", 0),
            meta("fleet/Jun/a.zip", 10),
            meta("fleet/empty.zip", 0),
            meta("fleet/b.zip", 10),
        ];
        let markers = folder_markers(&metas);
        assert_eq!(markers, HashSet::from(["fleet/Jun".to_string()]));
    }

    /// Endpoints object_store would panic on are refused with a reason.
    #[test]
    fn endpoints_are_checked() {
        assert!(check_endpoint("http://127.0.0.1:9000").is_ok());
        assert!(check_endpoint("https://minio.lan").is_ok());
        for bad in [
            "not a url",
            "garbage:::/x",
            "http://",
            "http://127.0.0.1:99999",
            "ftp://127.0.0.1:21",
        ] {
            assert!(check_endpoint(bad).is_err(), "{bad}");
        }
    }

    /// A prefix is asked for as written, `%` and non-ASCII included.
    #[test]
    fn a_prefix_is_not_percent_encoded() {
        for prefix in ["flëet", "p%41x", "Jün/sub"] {
            let loc = S3Location::parse(&format!("s3://fota/{prefix}")).unwrap();
            assert_eq!(loc.list_prefix(), format!("{prefix}/"));
        }
    }

    #[test]
    fn locations_parse_bucket_and_clean_prefix() {
        let loc = S3Location::parse("s3://fota/fleet/2026/").unwrap();
        assert_eq!(
            (loc.bucket.as_str(), loc.prefix.as_str()),
            ("fota", "fleet/2026")
        );
        assert_eq!(loc.object("Jun/a.zip").as_ref(), "fleet/2026/Jun/a.zip");
        // Regression: keys with `%` or non-ASCII letters were re-encoded
        // into keys that do not exist (404 on every fetch).
        assert_eq!(loc.object("a%zz ü.zip").as_ref(), "fleet/2026/a%zz ü.zip");
        let whole = S3Location::parse("s3://fota").unwrap();
        assert_eq!(whole.prefix, "");
        assert_eq!(whole.object("a.zip").as_ref(), "a.zip");
        assert_eq!(whole.display(), "s3://fota");
        for bad in [
            "s3://",
            "s3:///x",
            "http://fota/x",
            "s3://fota/../x",
            "s3://fw",
            "s3://a b/x",
        ] {
            assert!(S3Location::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn listed_time_is_milliseconds_since_the_epoch() {
        let l = Listed {
            size: 1,
            modified_ms: 1500,
            etag: None,
        };
        assert_eq!(
            l.modified(),
            SystemTime::UNIX_EPOCH + Duration::from_millis(1500)
        );
    }
}
