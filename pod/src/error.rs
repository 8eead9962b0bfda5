//! Why the pod loop ended unsuccessfully ([`RunError`]): each variant is one line for the
//! pod's termination log.

use std::time::Duration;

use crate::netlink::NetlinkError;

/// Why `init` or `sidecar` ended unsuccessfully, over the backend's error `E`.
#[derive(Debug, thiserror::Error)]
pub enum RunError<E: std::error::Error + 'static> {
    /// Netlink failed.
    #[error(transparent)]
    Netlink(#[from] NetlinkError),
    /// No address appeared in time.
    #[error(
        "no address on the pod's interfaces besides {primary} after {waited:?} (found {found}, waiting for {expected}); check the Multus network attachment, or raise --wait-seconds"
    )]
    NoAddresses {
        /// The excluded primary interface.
        primary: String,
        /// How long it waited.
        waited: Duration,
        /// How many it found.
        found: usize,
        /// How many it waited for.
        expected: usize,
    },
    /// The termination signal handler could not be installed.
    #[error("cannot install the SIGTERM handler: {0}")]
    Signal(std::io::Error),
    /// The ready file could not be written.
    #[error(
        "cannot write the ready file {path}: {source}; mount a writable emptyDir there (the webhook does in native-sidecar mode)"
    )]
    ReadyFile {
        /// The file.
        path: String,
        /// The IO error.
        source: std::io::Error,
    },
    /// The backend could not make the pod routable.
    #[error(transparent)]
    Routing(E),
}
