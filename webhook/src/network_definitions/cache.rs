//! The definitions `serve` reads, cached for `--nad-cache-seconds`: a definition found is
//! read again only after that, one that is missing is never cached (one created after a
//! denial is seen at once), and the cache holds at most [`MAX_ENTRIES`].

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use ipmgr_injector::{NamedDefinition, NetworkDefinitions};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use tokio::time::Instant;

use super::{DefinitionSource, Found, ReadError, UnreadableDefinition};
use crate::metrics::{Metrics, ReadLabels};

/// The longest one read may take, within the request's own time: the API server gives the
/// webhook `timeoutSeconds` (5 by default) for its answer.
pub const READ_TIMEOUT: Duration = Duration::from_secs(2);

/// The most definitions kept; past it, those that expired go, then the oldest.
pub const MAX_ENTRIES: usize = 4096;

/// The most definitions read for one pod (a pod names a handful; its annotation could name
/// thousands).
pub const MAX_PER_POD: usize = 32;

/// Definitions read from a [`DefinitionSource`], cached.
#[derive(Debug)]
pub struct CachedDefinitions {
    source: Box<dyn DefinitionSource>,
    ttl: Duration,
    entries: Mutex<HashMap<(String, String), Entry>>,
    reads: Family<ReadLabels, Counter>,
    hits: Counter,
}

/// A definition found, and when.
#[derive(Debug)]
struct Entry {
    read_at: Instant,
    resource_name: Option<String>,
}

impl CachedDefinitions {
    /// Reads from `source`, keeping what it found for `ttl` (zero: not at all), counted in
    /// `metrics`.
    pub fn new(source: Box<dyn DefinitionSource>, ttl: Duration, metrics: &Metrics) -> Self {
        CachedDefinitions {
            source,
            ttl,
            entries: Mutex::new(HashMap::new()),
            reads: metrics.network_definition_reads.clone(),
            hits: metrics.network_definition_cache_hits.clone(),
        }
    }

    /// The definitions of `needed` that exist (those missing are left out), each read at
    /// most [`READ_TIMEOUT`] and by `deadline`; the first that cannot be read is the error,
    /// as is the first past [`MAX_PER_POD`].
    pub async fn look_up(
        &self,
        needed: &[NamedDefinition],
        deadline: Instant,
    ) -> Result<NetworkDefinitions, UnreadableDefinition> {
        if let Some(definition) = needed.get(MAX_PER_POD) {
            self.count("error");
            return Err(UnreadableDefinition {
                definition: definition.clone(),
                source: ReadError::TooMany,
            });
        }
        let mut found = NetworkDefinitions::new();
        for definition in needed {
            let key = (definition.namespace.clone(), definition.name.clone());
            if let Some(resource_name) = self.cached(&key) {
                self.hits.inc();
                found.insert(key, resource_name);
                continue;
            }
            let unreadable = |source| UnreadableDefinition {
                definition: definition.clone(),
                source,
            };
            let timeout = deadline
                .saturating_duration_since(Instant::now())
                .min(READ_TIMEOUT);
            if timeout.is_zero() {
                self.count("error");
                return Err(unreadable(ReadError::NoTimeLeft));
            }
            match self.source.read(&key.0, &key.1, timeout).await {
                Ok(Found::Definition(resource_name)) => {
                    self.count("found");
                    self.keep(key.clone(), resource_name.clone());
                    found.insert(key, resource_name);
                }
                Ok(Found::Missing) => self.count("missing"),
                Err(error) => {
                    self.count("error");
                    tracing::warn!(
                        definition = %format!("{}/{}", key.0, key.1),
                        %error,
                        "cannot read a NetworkAttachmentDefinition; denying the pod"
                    );
                    return Err(unreadable(error));
                }
            }
        }
        Ok(found)
    }

    fn count(&self, result: &'static str) {
        self.reads.get_or_create(&ReadLabels { result }).inc();
    }

    /// The resource name of `key` when it was found less than the TTL ago.
    fn cached(&self, key: &(String, String)) -> Option<Option<String>> {
        let entries = self
            .entries
            .lock()
            .expect("the cache lock is never poisoned");
        entries
            .get(key)
            .filter(|entry| entry.read_at.elapsed() < self.ttl)
            .map(|entry| entry.resource_name.clone())
    }

    fn keep(&self, key: (String, String), resource_name: Option<String>) {
        if self.ttl.is_zero() {
            return;
        }
        let mut entries = self
            .entries
            .lock()
            .expect("the cache lock is never poisoned");
        if entries.len() >= MAX_ENTRIES && !entries.contains_key(&key) {
            entries.retain(|_, entry| entry.read_at.elapsed() < self.ttl);
            if entries.len() >= MAX_ENTRIES
                && let Some(oldest) = entries
                    .iter()
                    .min_by_key(|(_, entry)| entry.read_at)
                    .map(|(key, _)| key.clone())
            {
                entries.remove(&oldest);
            }
        }
        entries.insert(
            key,
            Entry {
                read_at: Instant::now(),
                resource_name,
            },
        );
    }

    /// How many definitions are cached.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.entries
            .lock()
            .expect("the cache lock is never poisoned")
            .len()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::super::Reading;
    use super::*;

    /// A source of fixed definitions that counts its reads; `fail` turns every read into a
    /// refusal.
    #[derive(Debug, Default)]
    struct Counting {
        definitions: Mutex<NetworkDefinitions>,
        reads: AtomicUsize,
        fail: std::sync::atomic::AtomicBool,
    }

    impl DefinitionSource for std::sync::Arc<Counting> {
        fn read<'a>(&'a self, namespace: &'a str, name: &'a str, _: Duration) -> Reading<'a> {
            self.reads.fetch_add(1, Ordering::SeqCst);
            let key = (namespace.to_owned(), name.to_owned());
            let found = match self.definitions.lock().expect("lock").get(&key) {
                Some(resource_name) => Found::Definition(resource_name.clone()),
                None => Found::Missing,
            };
            let fail = self.fail.load(Ordering::SeqCst);
            Box::pin(async move {
                if fail {
                    Err(ReadError::Refused {
                        code: 503,
                        message: "unavailable".to_owned(),
                    })
                } else {
                    Ok(found)
                }
            })
        }
    }

    fn needed(names: &[&str]) -> Vec<NamedDefinition> {
        names
            .iter()
            .enumerate()
            .map(|(index, name)| NamedDefinition {
                namespace: "apps".to_owned(),
                name: (*name).to_owned(),
                position: index + 1,
                selection: (*name).to_owned(),
            })
            .collect()
    }

    fn cache(ttl: Duration) -> (std::sync::Arc<Counting>, CachedDefinitions, Metrics) {
        let source = std::sync::Arc::new(Counting::default());
        source.definitions.lock().expect("lock").insert(
            ("apps".to_owned(), "eth1".to_owned()),
            Some("multus-ipmgr.io/eth1".to_owned()),
        );
        let metrics = Metrics::default();
        let cache = CachedDefinitions::new(Box::new(source.clone()), ttl, &metrics);
        (source, cache, metrics)
    }

    fn later() -> Instant {
        Instant::now() + Duration::from_secs(5)
    }

    #[tokio::test]
    async fn a_definition_found_is_read_once_within_the_ttl() {
        let (source, cache, metrics) = cache(Duration::from_secs(60));
        for _ in 0..3 {
            let found = cache
                .look_up(&needed(&["eth1"]), later())
                .await
                .expect("read");
            assert_eq!(
                found.get(&("apps".to_owned(), "eth1".to_owned())),
                Some(&Some("multus-ipmgr.io/eth1".to_owned()))
            );
        }
        assert_eq!(source.reads.load(Ordering::SeqCst), 1);
        let text = metrics.render();
        assert!(
            text.contains(r#"ipmgr_webhook_network_definition_reads_total{result="found"} 1"#),
            "{text}"
        );
        assert!(
            text.contains("ipmgr_webhook_network_definition_cache_hits_total 2"),
            "{text}"
        );
    }

    #[tokio::test]
    async fn a_definition_is_read_again_after_the_ttl() {
        let (source, cache, _) = cache(Duration::from_millis(100));
        cache
            .look_up(&needed(&["eth1"]), later())
            .await
            .expect("read");
        tokio::time::sleep(Duration::from_millis(150)).await;
        cache
            .look_up(&needed(&["eth1"]), later())
            .await
            .expect("read");
        assert_eq!(source.reads.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_zero_ttl_caches_nothing() {
        let (source, cache, _) = cache(Duration::ZERO);
        for _ in 0..2 {
            cache
                .look_up(&needed(&["eth1"]), later())
                .await
                .expect("read");
        }
        assert_eq!(source.reads.load(Ordering::SeqCst), 2);
        assert_eq!(cache.len(), 0);
    }

    #[tokio::test]
    async fn a_missing_definition_is_not_cached_and_seen_once_created() {
        let (source, cache, _) = cache(Duration::from_secs(60));
        let found = cache
            .look_up(&needed(&["new"]), later())
            .await
            .expect("read");
        assert!(found.is_empty(), "missing: left out");
        source
            .definitions
            .lock()
            .expect("lock")
            .insert(("apps".to_owned(), "new".to_owned()), None);
        let found = cache
            .look_up(&needed(&["new"]), later())
            .await
            .expect("read");
        assert_eq!(
            found.get(&("apps".to_owned(), "new".to_owned())),
            Some(&None)
        );
        assert_eq!(source.reads.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn an_error_names_the_definition_and_is_not_cached() {
        let (source, cache, metrics) = cache(Duration::from_secs(60));
        source.fail.store(true, Ordering::SeqCst);
        let error = cache
            .look_up(&needed(&["eth1"]), later())
            .await
            .expect_err("refused");
        assert_eq!(
            error.to_string(),
            "pod network \"eth1\" (k8s.v1.cni.cncf.io/networks selection 1) names NetworkAttachmentDefinition apps/eth1, which the webhook cannot read: HTTP 503: unavailable; retry once the API server answers"
        );
        assert_eq!(cache.len(), 0);
        assert!(
            metrics
                .render()
                .contains(r#"ipmgr_webhook_network_definition_reads_total{result="error"} 1"#)
        );
        source.fail.store(false, Ordering::SeqCst);
        cache
            .look_up(&needed(&["eth1"]), later())
            .await
            .expect("read");
    }

    #[tokio::test]
    async fn no_read_is_made_past_the_deadline() {
        let (source, cache, _) = cache(Duration::from_secs(60));
        let error = cache
            .look_up(&needed(&["eth1"]), Instant::now())
            .await
            .expect_err("no time");
        assert!(matches!(error.source, ReadError::NoTimeLeft), "{error}");
        assert_eq!(source.reads.load(Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn the_cache_is_bounded() {
        let (source, cache, _) = cache(Duration::from_secs(60));
        let names: Vec<String> = (0..MAX_ENTRIES + 10).map(|i| format!("n{i}")).collect();
        {
            let mut definitions = source.definitions.lock().expect("lock");
            for name in &names {
                definitions.insert(("apps".to_owned(), name.clone()), None);
            }
        }
        for pod in names.chunks(MAX_PER_POD) {
            let refs: Vec<&str> = pod.iter().map(String::as_str).collect();
            cache.look_up(&needed(&refs), later()).await.expect("read");
        }
        assert_eq!(cache.len(), MAX_ENTRIES);
        assert_eq!(source.reads.load(Ordering::SeqCst), MAX_ENTRIES + 10);
    }

    #[tokio::test]
    async fn a_pod_naming_too_many_definitions_is_refused_reading_none() {
        let (source, cache, _) = cache(Duration::from_secs(60));
        let names: Vec<String> = (0..=MAX_PER_POD).map(|i| format!("n{i}")).collect();
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let error = cache
            .look_up(&needed(&refs), later())
            .await
            .expect_err("too many");
        assert_eq!(
            error.to_string(),
            "pod network \"n32\" (k8s.v1.cni.cncf.io/networks selection 33) names NetworkAttachmentDefinition apps/n32, which the webhook cannot read: the pod names more than 32 NetworkAttachmentDefinitions, the most the webhook reads for one pod; select fewer networks"
        );
        assert_eq!(source.reads.load(Ordering::SeqCst), 0);
    }
}
