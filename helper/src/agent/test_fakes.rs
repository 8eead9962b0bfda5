//! The agent's scans and namespaces as tests script them ([`FakeScanner`]), and namespace
//! objects as the API server lists them.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::netns::{Caller, PodNamespace, PodScanner, Scan, ScanError};

/// Scans as the test scripts them: the queued ones first (each after its delay), then the
/// standing one.
#[derive(Debug, Clone, Default)]
pub(crate) struct FakeScanner(Arc<Mutex<Scans>>);

/// The scans of a [`FakeScanner`].
#[derive(Debug, Default)]
struct Scans {
    queued: VecDeque<(Scan, Duration)>,
    standing: Scan,
    /// The pod namespaces `find` looks through.
    namespaces: Vec<PodNamespace>,
    /// The namespace the node routes a pod IP to, where it does.
    routes: BTreeMap<IpAddr, PathBuf>,
}

impl FakeScanner {
    /// From now on, `find` sees these pod namespaces.
    pub(crate) fn with_namespaces(&self, namespaces: Vec<PodNamespace>) {
        self.0.lock().expect("scanner").namespaces = namespaces;
    }

    /// From now on, the node routes `pod_ip` to the namespace at `path`.
    pub(crate) fn routing(&self, pod_ip: &str, path: &str) {
        self.0
            .lock()
            .expect("scanner")
            .routes
            .insert(pod_ip.parse().expect("ip"), path.into());
    }

    /// Every scan from now on returns `scan`, unless one is queued.
    pub(crate) fn standing(&self, scan: Scan) {
        self.0.lock().expect("scanner").standing = scan;
    }

    /// From now on, pods (in `namespaces` namespaces) carry `in_use`.
    pub(crate) fn carrying(&self, namespaces: usize, in_use: &[&str]) {
        self.standing(scan(namespaces, in_use));
    }

    /// The next scan only shows `in_use`.
    pub(crate) fn then(&self, namespaces: usize, in_use: &[&str]) {
        self.then_after(Duration::ZERO, namespaces, in_use);
    }

    /// The next scan takes `delay`, then shows `in_use`.
    pub(crate) fn then_after(&self, delay: Duration, namespaces: usize, in_use: &[&str]) {
        self.0
            .lock()
            .expect("scanner")
            .queued
            .push_back((scan(namespaces, in_use), delay));
    }
}

impl PodScanner for FakeScanner {
    async fn scan(&self) -> Result<Scan, ScanError> {
        let next = {
            let mut scans = self.0.lock().expect("scanner");
            let standing = (scans.standing.clone(), Duration::ZERO);
            scans.queued.pop_front().unwrap_or(standing)
        };
        tokio::time::sleep(next.1).await;
        Ok(next.0)
    }

    /// As the kernel answers: the routed namespace when there is one, else every
    /// namespace carrying `pod_ip` on `primary`.
    async fn find(&self, pod_ip: IpAddr, primary: &str) -> Result<Caller, ScanError> {
        let scans = self.0.lock().expect("scanner");
        let routed = scans.routes.get(&pod_ip);
        let carriers: Vec<PodNamespace> = scans
            .namespaces
            .iter()
            .filter(|namespace| routed.is_none_or(|path| &namespace.path == path))
            .filter(|namespace| {
                namespace
                    .addresses
                    .iter()
                    .any(|address| address.interface == primary && address.address == pod_ip)
            })
            .cloned()
            .collect();
        Ok(Caller::among(carriers))
    }
}

/// A scan that read `namespaces` namespaces carrying `in_use`.
pub(crate) fn scan(namespaces: usize, in_use: &[&str]) -> Scan {
    Scan {
        in_use: in_use
            .iter()
            .map(|a| a.parse::<IpAddr>().expect("ip"))
            .collect::<BTreeSet<_>>(),
        namespaces,
        ..Scan::default()
    }
}

/// A namespace object `name` with these annotations.
pub(crate) fn namespace_object(
    name: &str,
    annotations: &[(&str, &str)],
) -> k8s_openapi::api::core::v1::Namespace {
    let annotations: serde_json::Map<String, serde_json::Value> = annotations
        .iter()
        .map(|&(key, value)| (key.to_owned(), value.into()))
        .collect();
    serde_json::from_value(serde_json::json!({
        "metadata": {"name": name, "annotations": annotations},
    }))
    .expect("namespace")
}
