//! In-memory adapters for the unit tests: an EC2 that keeps the rules the helper relies on
//! (AllowReassignment moves an IPv4, an IPv6 has one holder, an unassign is all or
//! nothing), instance metadata as a snapshot the test controls (so it can lag EC2), and the
//! pod's addresses as the test sets them.

use std::collections::{BTreeMap, VecDeque};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::{Arc, Mutex, MutexGuard};

use clap::Parser as _;

use ipmgr_eni::{Eni, EniRecord, ErrorClass, MacAddr, NO_MANAGE_TAG, NodeFacts};

use crate::aws::{Ec2Api, Ec2Failure, MetadataError, NodeMetadata};
use crate::config::{Cli, Command, Settings};
pub(crate) use ipmgr_pod::fake::{FakeNetwork, pod_address};

/// The instance the fakes' node is.
pub(crate) const INSTANCE: &str = "i-node1";

/// Settings as the command line `ipmgr-helper init ARGS...` gives them.
pub(crate) fn settings(args: &[&str]) -> Settings {
    let cli = Cli::try_parse_from(["ipmgr-helper", "init"].iter().chain(args))
        .unwrap_or_else(|error| panic!("{error}"));
    match cli.command {
        Command::Init(settings) => settings,
        _ => unreachable!("init"),
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// An ENI of the fakes' node: `eth{index}`, MAC `02:00:00:00:00:{index}`, id
/// `eni-{name}`, primary address `10.0.{index}.10`.
pub(crate) fn eni(index: u8, name: &str) -> Eni {
    Eni {
        mac: MacAddr([2, 0, 0, 0, 0, index]),
        id: format!("eni-{name}"),
        device_number: u32::from(index),
        network_card: 0,
        vpc_id: "vpc-1".to_owned(),
        subnet_ipv4: Some(format!("10.0.{index}.0/24").parse().expect("subnet")),
        subnet_ipv6: vec!["2600:1::/64".parse().expect("subnet")],
        ipv4: vec![format!("10.0.{index}.10").parse().expect("address")],
        ipv6: Vec::new(),
        ipv4_prefixes: Vec::new(),
        ipv6_prefixes: Vec::new(),
    }
}

/// EC2's record of `eni` attached to `instance`, tagged as a Multus ENI when `multus`.
pub(crate) fn record(eni: &Eni, instance: &str, multus: bool) -> EniRecord {
    EniRecord {
        id: eni.id.clone(),
        description: String::new(),
        tags: if multus {
            BTreeMap::from([(NO_MANAGE_TAG.to_owned(), "true".to_owned())])
        } else {
            BTreeMap::new()
        },
        instance_id: Some(instance.to_owned()),
        attachment: Some((0, eni.device_number)),
        primary_ipv4: eni.ipv4.first().copied(),
        ipv4: eni.ipv4.clone(),
        ipv6: eni.ipv6.clone(),
    }
}

/// A node with a primary ENI (`eth0`) and a Multus ENI (`eth1`), as metadata shows it.
pub(crate) fn node() -> NodeFacts {
    NodeFacts {
        instance_id: INSTANCE.to_owned(),
        region: "us-east-2".to_owned(),
        primary_mac: Some(MacAddr([2, 0, 0, 0, 0, 0])),
        enis: vec![eni(0, "primary"), eni(1, "multus")],
    }
}

#[derive(Debug, Default)]
struct Ec2State {
    enis: Vec<EniRecord>,
    calls: Vec<&'static str>,
    faults: VecDeque<(&'static str, &'static str, ErrorClass)>,
}

/// EC2 in memory.
#[derive(Debug, Default, Clone)]
pub(crate) struct FakeEc2(Arc<Mutex<Ec2State>>);

impl FakeEc2 {
    /// EC2 holding these ENIs.
    pub(crate) fn with(enis: Vec<EniRecord>) -> Self {
        FakeEc2(Arc::new(Mutex::new(Ec2State {
            enis,
            ..Ec2State::default()
        })))
    }

    /// The next call of `action` fails with `code`, classed `class`.
    pub(crate) fn fail_next(&self, action: &'static str, code: &'static str, class: ErrorClass) {
        lock(&self.0).faults.push_back((action, code, class));
    }

    /// The actions called so far, in order.
    pub(crate) fn calls(&self) -> Vec<&'static str> {
        lock(&self.0).calls.clone()
    }

    /// The calls that change something.
    pub(crate) fn mutating_calls(&self) -> Vec<&'static str> {
        self.calls()
            .into_iter()
            .filter(|action| !action.starts_with("Describe"))
            .collect()
    }

    /// Whether ENI `id` holds `address` now.
    pub(crate) fn holds(&self, id: &str, address: &str) -> bool {
        let address: IpAddr = address.parse().expect("address");
        lock(&self.0)
            .enis
            .iter()
            .any(|record| record.id == id && record.holds(address))
    }

    /// One call: counted, and failed when a fault waits for it.
    fn call<T>(
        &self,
        action: &'static str,
        target: &str,
        addresses: Vec<String>,
        body: impl FnOnce(&mut Ec2State) -> Result<T, &'static str>,
    ) -> Result<T, Ec2Failure> {
        let mut state = lock(&self.0);
        state.calls.push(action);
        let failure = |code: &str, class| Ec2Failure {
            action,
            target: target.to_owned(),
            addresses: addresses.clone(),
            code: code.to_owned(),
            message: if code == "InvalidParameterValue" {
                format!("Some of the specified addresses are not assigned to interface {target}")
            } else {
                "fake".to_owned()
            },
            class,
            attempts: 1,
        };
        if let Some(position) = state.faults.iter().position(|(a, _, _)| *a == action) {
            let (_, code, class) = state.faults.remove(position).expect("fault");
            return Err(failure(code, class));
        }
        body(&mut state).map_err(|code| failure(code, ErrorClass::Persistent))
    }
}

impl Ec2State {
    /// ENI `id`, or EC2's error for an unknown one.
    fn eni(&mut self, id: &str) -> Result<&mut EniRecord, &'static str> {
        self.enis
            .iter_mut()
            .find(|record| record.id == id)
            .ok_or("InvalidNetworkInterfaceID.NotFound")
    }
}

/// An unassign, all or nothing: EC2 refuses the whole call when the ENI lacks one address.
fn take_back<T: PartialEq>(held: &mut Vec<T>, addresses: &[T]) -> Result<(), &'static str> {
    if !addresses.iter().all(|address| held.contains(address)) {
        return Err("InvalidParameterValue");
    }
    held.retain(|address| !addresses.contains(address));
    Ok(())
}

fn texts<T: ToString>(addresses: &[T]) -> Vec<String> {
    addresses.iter().map(ToString::to_string).collect()
}

impl Ec2Api for FakeEc2 {
    async fn assign_ipv4(&self, eni_id: &str, addresses: &[Ipv4Addr]) -> Result<(), Ec2Failure> {
        self.call(
            "AssignPrivateIpAddresses",
            eni_id,
            texts(addresses),
            |state| {
                if !state.enis.iter().any(|record| record.id == eni_id) {
                    return Err("InvalidNetworkInterfaceID.NotFound");
                }
                for record in &mut state.enis {
                    if record.id == eni_id {
                        for address in addresses {
                            if !record.ipv4.contains(address) {
                                record.ipv4.push(*address);
                            }
                        }
                    } else {
                        // AllowReassignment: the address leaves its previous holder.
                        record.ipv4.retain(|held| !addresses.contains(held));
                    }
                }
                Ok(())
            },
        )
    }

    async fn assign_ipv6(&self, eni_id: &str, addresses: &[Ipv6Addr]) -> Result<(), Ec2Failure> {
        self.call("AssignIpv6Addresses", eni_id, texts(addresses), |state| {
            let taken = state.enis.iter().any(|record| {
                record.id != eni_id && addresses.iter().any(|a| record.ipv6.contains(a))
            });
            if taken {
                return Err("InvalidParameterValue");
            }
            state.eni(eni_id)?.ipv6.extend(addresses);
            Ok(())
        })
    }

    async fn unassign_ipv4(&self, eni_id: &str, addresses: &[Ipv4Addr]) -> Result<(), Ec2Failure> {
        self.call(
            "UnassignPrivateIpAddresses",
            eni_id,
            texts(addresses),
            |state| take_back(&mut state.eni(eni_id)?.ipv4, addresses),
        )
    }

    async fn unassign_ipv6(&self, eni_id: &str, addresses: &[Ipv6Addr]) -> Result<(), Ec2Failure> {
        self.call("UnassignIpv6Addresses", eni_id, texts(addresses), |state| {
            take_back(&mut state.eni(eni_id)?.ipv6, addresses)
        })
    }

    async fn node_enis(&self, instance_id: &str) -> Result<Vec<EniRecord>, Ec2Failure> {
        self.call(
            "DescribeNetworkInterfaces",
            instance_id,
            Vec::new(),
            |state| {
                Ok(state
                    .enis
                    .iter()
                    .filter(|record| record.instance_id.as_deref() == Some(instance_id))
                    .cloned()
                    .collect())
            },
        )
    }

    async fn enis(&self, ids: &[String]) -> Result<Vec<EniRecord>, Ec2Failure> {
        self.call(
            "DescribeNetworkInterfaces",
            &ids.join(","),
            Vec::new(),
            |state| {
                Ok(state
                    .enis
                    .iter()
                    .filter(|record| ids.contains(&record.id))
                    .cloned()
                    .collect())
            },
        )
    }

    async fn holders(
        &self,
        vpc_id: &str,
        ipv4: &[Ipv4Addr],
        ipv6: &[Ipv6Addr],
    ) -> Result<Vec<EniRecord>, Ec2Failure> {
        self.call("DescribeNetworkInterfaces", vpc_id, Vec::new(), |state| {
            Ok(state
                .enis
                .iter()
                .filter(|record| {
                    ipv4.iter().any(|a| record.ipv4.contains(a))
                        || ipv6.iter().any(|a| record.ipv6.contains(a))
                })
                .cloned()
                .collect())
        })
    }
}

/// Instance metadata: a snapshot of the node the test sets, however EC2 moves on (metadata
/// lags EC2).
#[derive(Debug, Clone)]
pub(crate) struct FakeMetadata(Arc<Mutex<NodeFacts>>);

impl FakeMetadata {
    /// Metadata showing `node`.
    pub(crate) fn showing(node: NodeFacts) -> Self {
        FakeMetadata(Arc::new(Mutex::new(node)))
    }
}

impl NodeMetadata for FakeMetadata {
    async fn node_facts(&self) -> Result<NodeFacts, MetadataError> {
        Ok(lock(&self.0).clone())
    }

    async fn addresses(
        &self,
        mac: MacAddr,
    ) -> Result<(Vec<Ipv4Addr>, Vec<Ipv6Addr>), MetadataError> {
        let node = lock(&self.0);
        let eni = node.enis.iter().find(|eni| eni.mac == mac);
        Ok(eni.map_or_else(Default::default, |eni| (eni.ipv4.clone(), eni.ipv6.clone())))
    }
}
