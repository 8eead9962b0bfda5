//! A local mirror of one kind of Kubernetes object: list, then watch with bookmarks from the
//! list's resourceVersion, and list again after a watch error, a 410 Gone, or a watch that
//! stays quiet for longer than the freshness bound.
//!
//! Why not kube's `watcher`: it swallows bookmarks, so nothing above it can tell a quiet but
//! current watch from one that stopped delivering (a proxy or API server that hangs). Here
//! every list, event and bookmark is a confirmation that the mirror is current
//! ([`Sink::confirm`]); the agent's readiness and its releases use that.
//!
//! The API server sends a BOOKMARK about every minute and 2 s before a watch's deadline
//! (k8s.io/apiserver, storage/cacher/cache_watcher.go `nextBookmarkTime`), so each watch
//! asks for a deadline of two thirds of the bound: a live watch confirms at least once per
//! deadline.

use std::fmt::Debug;
use std::time::Duration;

use futures::StreamExt as _;
use ipmgr_eni::Backoff;
use kube::api::{ListParams, WatchEvent, WatchParams};
use kube::{Api, Resource};
use serde::de::DeserializeOwned;

/// Spacing of the lists after failures (kube's watcher backs off the same way).
const LIST_BACKOFF: Backoff = Backoff {
    initial: Duration::from_millis(800),
    factor: 2,
    max: Duration::from_secs(30),
};

/// Where a mirror puts what it sees.
pub(super) trait Sink<K>: Send + Sync {
    /// A complete list: every object there is now.
    fn replace(&self, objects: Vec<K>);
    /// An object added or changed.
    fn apply(&self, object: K);
    /// An object deleted.
    fn delete(&self, object: K);
    /// The mirror is current as of now (a list, an event or a bookmark arrived).
    fn confirm(&self);
}

/// Mirrors the objects of `api` (restricted by the field selector `fields`) into `sink` for
/// the agent's lifetime; `what` names them in the logs. Never returns.
pub(super) async fn mirror<K, S>(
    api: Api<K>,
    fields: Option<String>,
    stale: Duration,
    sink: S,
    what: &str,
) where
    K: Resource + Clone + DeserializeOwned + Debug + Send + 'static,
    S: Sink<K>,
{
    let deadline = u32::try_from((stale.as_secs() * 2 / 3).clamp(1, 290)).unwrap_or(290);
    let mut list_params = ListParams::default();
    let mut watch_params = WatchParams::default().timeout(deadline);
    if let Some(fields) = &fields {
        list_params = list_params.fields(fields);
        watch_params = watch_params.fields(fields);
    }
    let mut failures = 0u32;
    loop {
        let list = match api.list(&list_params).await {
            Ok(list) => list,
            Err(error) => {
                failures += 1;
                tracing::warn!(%error, what, "cannot list from the API server; trying again");
                tokio::time::sleep(LIST_BACKOFF.jittered(failures, fastrand::f64())).await;
                continue;
            }
        };
        failures = 0;
        let mut version = list.metadata.resource_version.clone().unwrap_or_default();
        tracing::info!(what, objects = list.items.len(), "listed");
        sink.replace(list.items);
        sink.confirm();
        if let Err(reason) = follow(&api, &watch_params, &mut version, stale, &sink).await {
            tracing::warn!(what, reason, "the watch ended; listing again");
        }
    }
}

/// Watches from `version` (kept current) until something calls for a new list; the reason.
async fn follow<K, S>(
    api: &Api<K>,
    params: &WatchParams,
    version: &mut String,
    stale: Duration,
    sink: &S,
) -> Result<(), String>
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + 'static,
    S: Sink<K>,
{
    loop {
        let events = match tokio::time::timeout(stale, api.watch(params, version)).await {
            Ok(Ok(events)) => events,
            Ok(Err(error)) => return Err(format!("cannot watch: {error}")),
            Err(_) => return Err(format!("the watch did not start within {stale:?}")),
        };
        let mut events = std::pin::pin!(events);
        loop {
            let event = match tokio::time::timeout(stale, events.next()).await {
                Err(_) => {
                    return Err(format!(
                        "no event and no bookmark for {stale:?}: the watch stopped delivering"
                    ));
                }
                // The server ended the watch at its deadline: watch again from `version`.
                Ok(None) => break,
                Ok(Some(Err(error))) => return Err(format!("the watch failed: {error}")),
                Ok(Some(Ok(event))) => event,
            };
            match event {
                WatchEvent::Added(object) | WatchEvent::Modified(object) => {
                    *version = resource_version(&object);
                    sink.apply(object);
                }
                WatchEvent::Deleted(object) => {
                    *version = resource_version(&object);
                    sink.delete(object);
                }
                WatchEvent::Bookmark(bookmark) => {
                    version.clone_from(&bookmark.metadata.resource_version);
                }
                WatchEvent::Error(status) => {
                    return Err(format!(
                        "the API server ended the watch: {} {}",
                        status.code, status.message
                    ));
                }
            }
            sink.confirm();
        }
    }
}

fn resource_version<K: Resource>(object: &K) -> String {
    object.meta().resource_version.clone().unwrap_or_default()
}
