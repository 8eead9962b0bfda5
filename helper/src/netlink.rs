//! The node's side of netlink, for the agent: where the node routes a pod IP, and the ids
//! the node's namespace gives pods' namespaces. Reading a namespace's addresses is
//! [`ipmgr_pod::netlink`]'s.

use std::collections::BTreeMap;
use std::net::IpAddr;

use futures::StreamExt as _;
use futures::TryStreamExt as _;
use ipmgr_eni::MacAddr;
use ipmgr_pod::netlink::{NetlinkError, named_links};
use rtnetlink::Handle;
use rtnetlink::packet_core::{NLM_F_REQUEST, NetlinkMessage, NetlinkPayload};
use rtnetlink::packet_route::link::LinkAttribute;
use rtnetlink::packet_route::nsid::{NsidAttribute, NsidMessage};
use rtnetlink::packet_route::route::{RouteAttribute, RouteMessage};
use rtnetlink::packet_route::{AddressFamily, RouteNetlinkMessage};

/// The network namespace at the other end of the interface the calling thread's namespace
/// (the node's) routes `address` to: its id in this namespace (`IFLA_LINK_NETNSID` of a veth
/// whose peer is a pod's `eth0`, as the VPC CNI and most CNIs plumb pods). `None` when
/// there is no route, or the interface has no other end in another namespace. No pod can
/// change the node's routes. Needs a tokio runtime.
pub async fn routed_namespace(address: IpAddr) -> Result<Option<i32>, NetlinkError> {
    let (connection, handle, _) = rtnetlink::new_connection()?;
    tokio::spawn(connection);
    let mut question = RouteMessage::default();
    question.header.address_family = match address {
        IpAddr::V4(_) => AddressFamily::Inet,
        IpAddr::V6(_) => AddressFamily::Inet6,
    };
    question.header.destination_prefix_length = if address.is_ipv4() { 32 } else { 128 };
    question
        .attributes
        .push(RouteAttribute::Destination(address.into()));
    let routes: Result<Vec<RouteMessage>, _> =
        handle.route().get(question).execute().try_collect().await;
    // No route at all (ENETUNREACH, EHOSTUNREACH) is an answer, not a failure.
    let Ok(routes) = routes else {
        return Ok(None);
    };
    let Some(interface) = routes
        .iter()
        .flat_map(|route| &route.attributes)
        .find_map(|attribute| match attribute {
            RouteAttribute::Oif(index) => Some(*index),
            _ => None,
        })
    else {
        return Ok(None);
    };
    let links: Vec<_> = handle
        .link()
        .get()
        .match_index(interface)
        .execute()
        .try_collect()
        .await
        .map_err(|source| NetlinkError::Request {
            what: "the interface of a route",
            source,
        })?;
    Ok(links
        .iter()
        .flat_map(|link| &link.attributes)
        .find_map(|attribute| match attribute {
            LinkAttribute::LinkNetNsId(id) if *id >= 0 => Some(*id),
            _ => None,
        }))
}

/// The interfaces of the calling thread's namespace (the node's) by their MAC: on an EKS
/// node each attached ENI is one, carrying its MAC (the first listed when several share
/// one, as VLAN children of an ENI do: the one with the lowest index, made first).
/// Needs a tokio runtime.
pub async fn interfaces_by_mac() -> Result<BTreeMap<MacAddr, String>, NetlinkError> {
    let (connection, handle, _) = rtnetlink::new_connection()?;
    tokio::spawn(connection);
    let mut interfaces = BTreeMap::new();
    for (name, mac) in named_links(&handle).await?.into_values() {
        interfaces.entry(mac).or_insert(name);
    }
    Ok(interfaces)
}

/// Ids the calling thread's namespace gives other network namespaces (RTM_GETNSID).
#[derive(Debug)]
pub struct NamespaceIds(Handle);

impl NamespaceIds {
    /// Opens a netlink socket in the calling thread's namespace. Needs a tokio runtime.
    pub fn connect() -> Result<Self, NetlinkError> {
        let (connection, handle, _) = rtnetlink::new_connection()?;
        tokio::spawn(connection);
        Ok(NamespaceIds(handle))
    }

    /// The id of the namespace `file` (a namespace file, e.g. a runtime's bind mount), or
    /// `None` when this namespace has given it none.
    pub async fn of(&self, file: &std::fs::File) -> Result<Option<i32>, NetlinkError> {
        use std::os::fd::AsRawFd as _;
        let fd = u32::try_from(file.as_raw_fd()).unwrap_or(u32::MAX);
        let mut message = NsidMessage::default();
        message.attributes.push(NsidAttribute::Fd(fd));
        let mut request = NetlinkMessage::from(RouteNetlinkMessage::GetNsId(message));
        request.header.flags = NLM_F_REQUEST;
        let mut handle = self.0.clone();
        let mut answers = handle
            .request(request)
            .map_err(|source| NetlinkError::Request {
                what: "a namespace id",
                source,
            })?;
        while let Some(answer) = answers.next().await {
            if let NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewNsId(answer)) =
                answer.payload
            {
                return Ok(answer
                    .attributes
                    .iter()
                    .find_map(|attribute| match attribute {
                        NsidAttribute::Id(id) if *id >= 0 => Some(*id),
                        _ => None,
                    }));
            }
        }
        Ok(None)
    }
}
