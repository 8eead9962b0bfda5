//! Which addresses the node's pods carry: every network namespace in the container runtime's
//! netns directory, entered in turn on a thread of its own (setns needs CAP_SYS_ADMIN), and
//! the node's own namespace, through netlink.
//!
//! A request's caller is found by looking into one namespace: the one the node routes its
//! pod IP to, by the namespace id remembered for that route; without such a route, those
//! the last scan saw carrying the pod IP and those made since (the inotify watcher starts
//! a scan when the directory changes). A request never walks every namespace.

use std::collections::{BTreeSet, HashMap};
use std::fs::File;
use std::io;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use nix::errno::Errno;
use nix::sched::{CloneFlags, setns};

use ipmgr_eni::PodAddress;

use ipmgr_pod::netlink::{
    NetlinkError, addresses_in_this_namespace, interface_addresses_in_this_namespace,
};

use crate::netlink::{NamespaceIds, routed_namespace};

/// What one scan found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Scan {
    /// Every global-scope address of every pod namespace, and of the node's own.
    pub in_use: BTreeSet<IpAddr>,
    /// Pod namespaces read.
    pub namespaces: usize,
    /// Entries that could not be read (a sandbox being made or removed): while there are
    /// any, the scan is incomplete and nothing is released (`ipmgr_eni::ScanVerdict`).
    pub unreadable: Vec<PathBuf>,
    /// The global-scope addresses of each pod namespace read.
    pub by_entry: HashMap<PathBuf, Vec<IpAddr>>,
}

/// Where to look for the runtime's namespace directory, for the errors that name it.
const FIND_THE_DIRECTORY: &str = "the agent must see the directory where the container runtime mounts pod network namespaces: containerd and CRI-O use /var/run/netns by default (containerd with netns_mounts_under_state_dir = true: /run/containerd/io.containerd.grpc.v1.cri/netns; CRI-O: namespaces_dir/netns of crio.conf); `findmnt -t nsfs` on the node lists where they are. Set --netns-dir (IPMGR_NETNS_DIR) and the DaemonSet's hostPath volume to that directory, mounted with mountPropagation HostToContainer";

/// A scan that could not be made at all.
#[derive(Debug, thiserror::Error)]
pub enum ScanError {
    /// The netns directory does not exist.
    #[error("the netns directory {dir} does not exist; {FIND_THE_DIRECTORY}")]
    Missing {
        /// The directory.
        dir: PathBuf,
    },
    /// The netns directory is not readable.
    #[error("cannot read the netns directory {dir}: {source}; {FIND_THE_DIRECTORY}")]
    Directory {
        /// The directory.
        dir: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// Entering a namespace was refused.
    #[error(
        "cannot enter the network namespace {entry}: permission denied; the agent needs CAP_SYS_ADMIN (securityContext.capabilities.add: [SYS_ADMIN])"
    )]
    Permission {
        /// The namespace file.
        entry: PathBuf,
    },
    /// Netlink failed in the agent's own namespace.
    #[error(transparent)]
    Netlink(#[from] NetlinkError),
    /// The scanning thread or its runtime could not start.
    #[error("cannot start the scanning thread: {0}")]
    Thread(io::Error),
}

impl ScanError {
    /// The error for `dir` that `source` makes: missing, or unreadable.
    pub fn directory(dir: &Path, source: io::Error) -> ScanError {
        if source.kind() == io::ErrorKind::NotFound {
            ScanError::Missing {
                dir: dir.to_owned(),
            }
        } else {
            ScanError::Directory {
                dir: dir.to_owned(),
                source,
            }
        }
    }
}

/// A pod's network namespace, found by the address of its primary interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodNamespace {
    /// The namespace file in the netns directory.
    pub path: PathBuf,
    /// Every global-scope address on its interfaces.
    pub addresses: Vec<PodAddress>,
}

/// Which pod namespace a connection from a pod IP comes from, by the kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// This one: the namespace the node routes the pod IP to (its veth's other end), which
    /// carries it on its primary interface; or, where the node's routes do not lead to a
    /// pod namespace, the only namespace that carries it there.
    Found(PodNamespace),
    /// No pod namespace of the node.
    Absent,
    /// Several pod namespaces carry it on their primary interface (a pod with NET_ADMIN
    /// added a neighbour's pod IP to its own) and the node's routes do not tell them apart.
    Ambiguous(Vec<PathBuf>),
}

impl Caller {
    /// The caller among the namespaces that carry its pod IP on the primary interface.
    pub fn among(mut carriers: Vec<PodNamespace>) -> Caller {
        match carriers.len() {
            0 => Caller::Absent,
            1 => Caller::Found(carriers.remove(0)),
            _ => Caller::Ambiguous(
                carriers
                    .into_iter()
                    .map(|namespace| namespace.path)
                    .collect(),
            ),
        }
    }
}

/// Where the agent learns which addresses the node's pods carry: the seam between the
/// agent and the kernel ([`NetnsDirectory`]; tests script the scans).
pub trait PodScanner: Send + Sync {
    /// One scan of every pod namespace and of the node's own.
    fn scan(&self) -> impl std::future::Future<Output = Result<Scan, ScanError>> + Send;

    /// The pod namespace a connection from `pod_ip` comes from, whose interface `primary`
    /// carries it.
    fn find(
        &self,
        pod_ip: IpAddr,
        primary: &str,
    ) -> impl std::future::Future<Output = Result<Caller, ScanError>> + Send;
}

/// The runtime's netns directory, scanned on a blocking thread; which of its entries has
/// which namespace id in the agent's namespace (learnt on a miss, checked on a hit); and
/// the addresses each entry carried at the last scan.
#[derive(Debug, Clone)]
pub struct NetnsDirectory {
    dir: PathBuf,
    ids: Arc<Mutex<HashMap<i32, PathBuf>>>,
    scanned: Arc<Mutex<HashMap<PathBuf, Vec<IpAddr>>>>,
}

impl NetnsDirectory {
    /// The directory `dir`.
    pub fn new(dir: PathBuf) -> Self {
        NetnsDirectory {
            dir,
            ids: Arc::default(),
            scanned: Arc::default(),
        }
    }

    /// The entries that may carry `pod_ip`: those the last scan saw carrying it, and those
    /// it did not read (made since, or unreadable then).
    fn candidates(&self, pod_ip: IpAddr) -> Result<Vec<PathBuf>, ScanError> {
        let scanned = self
            .scanned
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        Ok(entries(&self.dir)?
            .into_iter()
            .filter(|entry| {
                scanned
                    .get(entry)
                    .is_none_or(|addresses| addresses.contains(&pod_ip))
            })
            .collect())
    }
}

impl PodScanner for NetnsDirectory {
    async fn scan(&self) -> Result<Scan, ScanError> {
        let dir = self.dir.clone();
        let scan = tokio::task::spawn_blocking(move || scan(&dir))
            .await
            .map_err(|error| ScanError::Thread(io::Error::other(error)))??;
        *self
            .scanned
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = scan.by_entry.clone();
        Ok(scan)
    }

    async fn find(&self, pod_ip: IpAddr, primary: &str) -> Result<Caller, ScanError> {
        let candidates = match self.routed_entry(pod_ip).await {
            Some(entry) => vec![entry],
            None => self.candidates(pod_ip)?,
        };
        let primary = primary.to_owned();
        tokio::task::spawn_blocking(move || find(candidates, pod_ip, &primary))
            .await
            .map_err(|error| ScanError::Thread(io::Error::other(error)))?
    }
}

/// Checks at start-up that `dir` exists and can be listed.
pub fn check_directory(dir: &Path) -> Result<(), ScanError> {
    std::fs::read_dir(dir)
        .map(drop)
        .map_err(|source| ScanError::directory(dir, source))
}

/// Reads the addresses of the node and of every pod namespace in `dir`. Blocks: call it
/// from a blocking task.
pub fn scan(dir: &Path) -> Result<Scan, ScanError> {
    let entries = entries(dir)?;
    on_a_thread_of_its_own(move |runtime| scan_entries(runtime, entries))
}

impl NetnsDirectory {
    /// The entry that the node (the calling thread's namespace, the agent's) routes
    /// `pod_ip` to, when its route's interface leads into one of them; `None` otherwise (no
    /// such route, another CNI's plumbing, or netlink failed: logged, and the caller is
    /// then found by its address alone). The entry remembered for the route's namespace id
    /// is checked to still have it (one lookup); on a miss every entry's id is read again.
    async fn routed_entry(&self, pod_ip: IpAddr) -> Option<PathBuf> {
        let routed = async {
            let Some(id) = routed_namespace(pod_ip).await? else {
                return Ok(None);
            };
            let ids = NamespaceIds::connect()?;
            let remembered = self.remembered(id);
            if let Some(entry) = remembered
                && let Ok(file) = File::open(&entry)
                && ids.of(&file).await? == Some(id)
            {
                return Ok(Some(entry));
            }
            let mut learnt = HashMap::new();
            for entry in entries(&self.dir).unwrap_or_default() {
                let Ok(file) = File::open(&entry) else {
                    continue;
                };
                if let Some(found) = ids.of(&file).await? {
                    learnt.insert(found, entry);
                }
            }
            let entry = learnt.get(&id).cloned();
            *self.ids.lock().unwrap_or_else(|e| e.into_inner()) = learnt;
            Ok::<_, NetlinkError>(entry)
        };
        routed.await.unwrap_or_else(|error| {
            tracing::warn!(%pod_ip, %error, "cannot look up the node's route to a pod IP; finding its namespace by address");
            None
        })
    }

    fn remembered(&self, id: i32) -> Option<PathBuf> {
        let ids = self.ids.lock().unwrap_or_else(|e| e.into_inner());
        ids.get(&id).cloned()
    }
}

/// The pod namespace a connection from `pod_ip` comes from, among `candidates`: the one
/// that carries `pod_ip` on `primary`. Blocks: call it from a blocking task.
pub fn find(candidates: Vec<PathBuf>, pod_ip: IpAddr, primary: &str) -> Result<Caller, ScanError> {
    let primary = primary.to_owned();
    let carriers = on_a_thread_of_its_own(move |runtime| {
        let mut carriers = Vec::new();
        for entry in candidates {
            match enter(&entry) {
                Entered::Yes => {}
                Entered::Gone | Entered::NotYet(_) => continue,
                Entered::Refused => return Err(ScanError::Permission { entry }),
            }
            let Ok(addresses) = runtime.block_on(interface_addresses_in_this_namespace()) else {
                continue;
            };
            let carries = |a: &PodAddress| a.interface == primary && a.address == pod_ip;
            if addresses.iter().any(carries) {
                carriers.push(PodNamespace {
                    path: entry,
                    addresses,
                });
            }
        }
        Ok(carriers)
    })?;
    Ok(Caller::among(carriers))
}

/// The entries of the netns directory (namespace files; directories are not).
fn entries(dir: &Path) -> Result<Vec<PathBuf>, ScanError> {
    Ok(std::fs::read_dir(dir)
        .map_err(|source| ScanError::directory(dir, source))?
        .filter_map(Result::ok)
        .filter(|entry| entry.file_type().is_ok_and(|kind| !kind.is_dir()))
        .map(|entry| entry.path())
        .collect())
}

/// Runs `work` on a thread of its own with a runtime for netlink: setns changes the calling
/// thread's namespace, and that thread then ends.
fn on_a_thread_of_its_own<T: Send + 'static>(
    work: impl FnOnce(&tokio::runtime::Runtime) -> Result<T, ScanError> + Send + 'static,
) -> Result<T, ScanError> {
    std::thread::Builder::new()
        .name("netns-scan".to_owned())
        .spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(ScanError::Thread)?;
            work(&runtime)
        })
        .map_err(ScanError::Thread)?
        .join()
        .unwrap_or_else(|_| {
            Err(ScanError::Thread(io::Error::other(
                "the scanning thread panicked",
            )))
        })
}

/// What entering a namespace file came to.
enum Entered {
    Yes,
    /// The file went with its pod between the listing and now.
    Gone,
    /// setns was refused: the agent lacks CAP_SYS_ADMIN.
    Refused,
    /// Not (yet) a namespace: a sandbox being made.
    NotYet(Errno),
}

/// Enters the network namespace of `entry` on the calling thread.
fn enter(entry: &Path) -> Entered {
    let entered = File::open(entry)
        .map_err(|error| Errno::from_raw(error.raw_os_error().unwrap_or(0)))
        .and_then(|file| setns(&file, CloneFlags::CLONE_NEWNET));
    match entered {
        Ok(()) => Entered::Yes,
        Err(Errno::ENOENT) => Entered::Gone,
        Err(Errno::EPERM) => Entered::Refused,
        Err(error) => Entered::NotYet(error),
    }
}

fn scan_entries(
    runtime: &tokio::runtime::Runtime,
    entries: Vec<PathBuf>,
) -> Result<Scan, ScanError> {
    let mut scan = Scan::default();
    scan.in_use
        .extend(runtime.block_on(addresses_in_this_namespace())?);
    for entry in entries {
        match enter(&entry) {
            Entered::Yes => {}
            Entered::Gone => continue,
            Entered::Refused => return Err(ScanError::Permission { entry }),
            Entered::NotYet(error) => {
                tracing::debug!(entry = %entry.display(), %error, "cannot enter; skipped this scan");
                scan.unreadable.push(entry);
                continue;
            }
        }
        match runtime.block_on(addresses_in_this_namespace()) {
            Ok(addresses) => {
                scan.in_use.extend(addresses.iter().copied());
                scan.by_entry.insert(entry, addresses);
                scan.namespaces += 1;
            }
            Err(error) => {
                tracing::warn!(entry = %entry.display(), %error, "cannot read the namespace's addresses");
                scan.unreadable.push(entry);
            }
        }
    }
    Ok(scan)
}

#[cfg(test)]
#[path = "netns_tests.rs"]
mod tests;
