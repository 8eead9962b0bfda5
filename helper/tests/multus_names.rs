//! The helper finds a pod's Multus interfaces whatever Multus named them: with
//! `IPMGR_INTERFACES_BY_MAC` (the webhook sets it when a network names no interface), the
//! interfaces on a Multus ENI's MAC. Needs root: pods are network namespaces.

mod common;

use common::{helper, how_to_bed};
use ipmgr_contract::env;
use ipmgr_testbed::{Interface, finish};

/// The cluster's `defaultNetworks` put a macvlan on the node's primary interface in front of
/// the pod's annotated network, so Multus named that one `net1` (a MAC of its own, an address
/// of the node subnet, which only the primary ENI's subnet contains) and the annotated
/// network, ipvlan on eth1, `net2`. The webhook cannot see `defaultNetworks`: it sets no
/// `IPMGR_INTERFACES`, only `IPMGR_INTERFACES_BY_MAC=true`.
#[test]
#[ignore = "needs root: pods are network namespaces (scripts/test runs it)"]
fn by_mac_init_manages_net2_behind_a_default_network_and_leaves_net1_alone() {
    let mut bed = how_to_bed();
    let pod = bed
        .pod(
            "node1",
            "behind-default",
            &[
                Interface::other("net1", &["10.0.0.60/24"]),
                Interface::on_eni("net2", "eth1", &["10.0.1.55/24"]),
            ],
        )
        .with_env(env::INTERFACES_BY_MAC, "true");
    let (output, stderr, _) = finish(helper(&bed, &pod, &["init"]));
    assert!(output.status.success(), "{stderr}");
    assert!(
        bed.holds(&bed.eni_id("node1", "eth1"), "10.0.1.55"),
        "net2 carries eth1's MAC: {stderr}"
    );
    for eni in ["eth0", "eth1", "eth2", "eth3"] {
        assert!(
            !bed.holds(&bed.eni_id("node1", eni), "10.0.0.60"),
            "net1 is on no Multus ENI's MAC: not assigned by subnet to {eni}"
        );
    }
    assert!(
        stderr.contains("10.0.0.60 on net1") && stderr.contains("left alone"),
        "logged as left alone: {stderr}"
    );
}
