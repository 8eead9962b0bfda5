//! In-memory pod addresses for tests: what the pod carries, set by the test, and the
//! changes it announces.

use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};

use ipmgr_eni::{MacAddr, PodAddress};
use tokio::sync::mpsc;

use crate::netlink::{NetlinkError, PodAddresses};

/// The pod's addresses, as the test sets them: [`FakeNetwork::gain`] adds one and
/// announces it as a netlink event would.
#[derive(Debug)]
pub struct FakeNetwork {
    carried: Arc<Mutex<Vec<PodAddress>>>,
    events: mpsc::UnboundedReceiver<Vec<IpAddr>>,
    announce: mpsc::UnboundedSender<Vec<IpAddr>>,
}

impl FakeNetwork {
    /// A pod carrying `addresses`.
    pub fn carrying(addresses: Vec<PodAddress>) -> Self {
        let (announce, events) = mpsc::unbounded_channel();
        FakeNetwork {
            carried: Arc::new(Mutex::new(addresses)),
            events,
            announce,
        }
    }

    /// A handle that changes this pod's addresses from elsewhere in the test.
    pub fn handle(&self) -> NetworkHandle {
        NetworkHandle {
            carried: Arc::clone(&self.carried),
            announce: self.announce.clone(),
        }
    }
}

/// Changes a [`FakeNetwork`]'s addresses.
#[derive(Debug, Clone)]
pub struct NetworkHandle {
    carried: Arc<Mutex<Vec<PodAddress>>>,
    announce: mpsc::UnboundedSender<Vec<IpAddr>>,
}

impl NetworkHandle {
    /// The pod gains `address` (an event follows).
    pub fn gain(&self, address: PodAddress) {
        let ip = address.address;
        lock(&self.carried).push(address);
        // The receiver lives as long as the network; a test that dropped it asks nothing.
        let _ = self.announce.send(vec![ip]);
    }
}

impl PodAddresses for FakeNetwork {
    async fn addresses(&self) -> Result<Vec<PodAddress>, NetlinkError> {
        Ok(lock(&self.carried).clone())
    }

    async fn changed(&mut self) -> Option<Vec<IpAddr>> {
        self.events.recv().await
    }
}

/// An address on `interface`, whose MAC ends in `index` (the fakes' ENI `index` has it).
pub fn pod_address(interface: &str, index: u8, address: &str) -> PodAddress {
    PodAddress {
        interface: interface.to_owned(),
        mac: MacAddr([2, 0, 0, 0, 0, index]),
        address: address.parse().expect("address"),
        prefix_len: 24,
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}
