//! The addresses of a network namespace, and notice of their changes, through rtnetlink (no
//! `ip` binary): the pod client reads its own, the node agent each pod's.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::IpAddr;

use futures::StreamExt as _;
use futures::TryStreamExt as _;
use futures::channel::mpsc::UnboundedReceiver;
use ipmgr_eni::{MacAddr, PodAddress};
use rtnetlink::packet_core::{NetlinkMessage, NetlinkPayload};
use rtnetlink::packet_route::RouteNetlinkMessage;
use rtnetlink::packet_route::address::{AddressAttribute, AddressMessage, AddressScope};
use rtnetlink::packet_route::link::LinkAttribute;
use rtnetlink::sys::SocketAddr;
use rtnetlink::{Handle, MulticastGroup};

/// Netlink could not be read.
#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    /// The socket could not be opened.
    #[error("cannot open a netlink socket: {0}")]
    Socket(#[from] std::io::Error),
    /// A request failed.
    #[error("cannot ask netlink for {what}: {source}")]
    Request {
        /// What was asked.
        what: &'static str,
        /// The rtnetlink error.
        source: rtnetlink::Error,
    },
    /// A dump request failed.
    #[error("cannot list the pod's {what} through netlink: {source}")]
    Dump {
        /// `links` or `addresses`.
        what: &'static str,
        /// The rtnetlink error.
        source: rtnetlink::Error,
    },
}

/// The network namespace the helper runs in (the pod's).
#[derive(Debug)]
pub struct PodNetwork {
    handle: Handle,
    events: UnboundedReceiver<(NetlinkMessage<RouteNetlinkMessage>, SocketAddr)>,
}

/// The pod's addresses and their changes: the seam between the pod helper and netlink
/// ([`PodNetwork`]; tests script them).
pub trait PodAddresses: Send {
    /// Every global-scope address on the pod's interfaces (loopback aside), with the
    /// interface's name and MAC; which of them the helper manages is the planner's call.
    fn addresses(&self) -> impl Future<Output = Result<Vec<PodAddress>, NetlinkError>> + Send;

    /// Waits for the next address or link change and drains the burst that follows. `None`
    /// when the source closed; otherwise the global-scope addresses added in the burst
    /// (even one that was removed and added back while the caller was busy), possibly none.
    fn changed(&mut self) -> impl Future<Output = Option<Vec<IpAddr>>> + Send;
}

impl PodNetwork {
    /// Opens a netlink socket subscribed to address and link changes. Needs a tokio runtime.
    pub fn connect() -> Result<Self, NetlinkError> {
        let (connection, handle, events) = rtnetlink::new_multicast_connection(&[
            MulticastGroup::Ipv4Ifaddr,
            MulticastGroup::Ipv6Ifaddr,
            MulticastGroup::Link,
        ])?;
        tokio::spawn(connection);
        Ok(PodNetwork { handle, events })
    }
}

impl PodAddresses for PodNetwork {
    async fn addresses(&self) -> Result<Vec<PodAddress>, NetlinkError> {
        interface_addresses(&self.handle).await
    }

    async fn changed(&mut self) -> Option<Vec<IpAddr>> {
        let mut added = Vec::new();
        let mut note = |(message, _): (NetlinkMessage<RouteNetlinkMessage>, SocketAddr)| {
            if let NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewAddress(address)) =
                message.payload
                && address.header.scope == AddressScope::Universe
            {
                added.extend(address_of(&address.attributes));
            }
        };
        note(self.events.next().await?);
        while let Ok(event) = self.events.try_recv() {
            note(event);
        }
        Some(added)
    }
}

/// Every global-scope address in the network namespace the calling thread is in, through a
/// netlink socket opened there: the node agent enters each pod's namespace and calls this.
/// Needs a tokio runtime on the thread.
pub async fn addresses_in_this_namespace() -> Result<Vec<IpAddr>, NetlinkError> {
    let (connection, handle, _) = rtnetlink::new_connection()?;
    tokio::spawn(connection);
    let messages = dump_addresses(&handle).await?;
    Ok(messages
        .iter()
        .filter(|message| message.header.scope == AddressScope::Universe)
        .filter_map(|message| address_of(&message.attributes))
        .collect())
}

/// Every global-scope address on the interfaces of the network namespace the calling thread
/// is in, with the interface's name and MAC: the agent reads a pod's addresses this way.
/// Needs a tokio runtime on the thread.
pub async fn interface_addresses_in_this_namespace() -> Result<Vec<PodAddress>, NetlinkError> {
    let (connection, handle, _) = rtnetlink::new_connection()?;
    tokio::spawn(connection);
    interface_addresses(&handle).await
}

/// Every interface with a hardware address of the namespace `handle` is in (loopback
/// aside), by index: its name and MAC.
pub async fn named_links(
    handle: &Handle,
) -> Result<BTreeMap<u32, (String, MacAddr)>, NetlinkError> {
    let links: Vec<_> = handle
        .link()
        .get()
        .execute()
        .try_collect()
        .await
        .map_err(|source| NetlinkError::Dump {
            what: "links",
            source,
        })?;
    let mut interfaces = BTreeMap::new();
    for link in links {
        let mut name = None;
        let mut mac = None;
        for attribute in link.attributes {
            match attribute {
                LinkAttribute::IfName(value) => name = Some(value),
                LinkAttribute::Address(bytes) => {
                    mac = <[u8; 6]>::try_from(bytes.as_slice()).ok().map(MacAddr)
                }
                _ => {}
            }
        }
        if let (Some(name), Some(mac)) = (name, mac)
            && name != "lo"
        {
            interfaces.insert(link.header.index, (name, mac));
        }
    }
    Ok(interfaces)
}

/// Every global-scope address on the interfaces of the namespace `handle` is in (loopback
/// aside), with the interface's name and MAC.
async fn interface_addresses(handle: &Handle) -> Result<Vec<PodAddress>, NetlinkError> {
    let interfaces = named_links(handle).await?;
    let messages = dump_addresses(handle).await?;
    let mut addresses = Vec::new();
    for message in messages {
        if message.header.scope != AddressScope::Universe {
            continue;
        }
        let Some((interface, mac)) = interfaces.get(&message.header.index) else {
            continue;
        };
        let Some(ip) = address_of(&message.attributes) else {
            continue;
        };
        addresses.push(PodAddress {
            interface: interface.clone(),
            mac: *mac,
            address: ip,
            prefix_len: message.header.prefix_len,
        });
    }
    addresses.sort();
    Ok(addresses)
}

async fn dump_addresses(handle: &Handle) -> Result<Vec<AddressMessage>, NetlinkError> {
    handle
        .address()
        .get()
        .execute()
        .try_collect()
        .await
        .map_err(|source| NetlinkError::Dump {
            what: "addresses",
            source,
        })
}

/// The address of an address message: IFA_LOCAL for IPv4 (IFA_ADDRESS is the peer on
/// point-to-point links), IFA_ADDRESS otherwise.
fn address_of(attributes: &[AddressAttribute]) -> Option<IpAddr> {
    let (mut local, mut address) = (None, None);
    for attribute in attributes {
        match attribute {
            AddressAttribute::Local(ip) => local = Some(*ip),
            AddressAttribute::Address(ip) => address = Some(*ip),
            _ => {}
        }
    }
    local.or(address)
}
