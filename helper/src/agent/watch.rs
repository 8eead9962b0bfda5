//! Changes of the runtime's netns directory (inotify), so that the agent scans when a pod
//! sandbox comes or goes rather than on a timer alone.

use std::path::Path;
use std::time::Duration;

use inotify::{Inotify, WatchMask};

use super::netns::ScanError;

/// How long the netns directory must be quiet before a scan: a sandbox is created and
/// mounted in a few steps.
pub(crate) const SETTLE: Duration = Duration::from_millis(200);

/// Changes of the netns directory, or none when it cannot be watched.
pub(crate) enum Changes {
    /// inotify on the directory.
    Watching(inotify::EventStream<Vec<u8>>),
    /// No watch: only the periodic scans.
    Closed,
}

/// Watches `dir` for pod sandboxes coming and going.
pub(crate) fn watch(dir: &Path) -> Result<Changes, ScanError> {
    let watch_error = |source| ScanError::directory(dir, source);
    let inotify = Inotify::init().map_err(watch_error)?;
    inotify
        .watches()
        .add(
            dir,
            WatchMask::CREATE | WatchMask::DELETE | WatchMask::MOVED_FROM | WatchMask::MOVED_TO,
        )
        .map_err(watch_error)?;
    let stream = inotify
        .into_event_stream(vec![0u8; 1024])
        .map_err(watch_error)?;
    Ok(Changes::Watching(stream))
}

impl Changes {
    /// Waits for the next change; false when the watch ended.
    pub(crate) async fn next_change(&mut self) -> bool {
        use futures::StreamExt as _;
        match self {
            Changes::Watching(stream) => matches!(stream.next().await, Some(Ok(_))),
            Changes::Closed => std::future::pending().await,
        }
    }

    /// Waits until the directory has been quiet for [`SETTLE`], draining the burst.
    pub(crate) async fn settle(&mut self) {
        loop {
            let quiet = tokio::time::timeout(SETTLE, self.next_change()).await;
            if !matches!(quiet, Ok(true)) {
                return;
            }
        }
    }
}

impl std::fmt::Debug for Changes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Changes::Watching(_) => "Changes::Watching",
            Changes::Closed => "Changes::Closed",
        })
    }
}
