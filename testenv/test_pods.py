"""The bed's pods: network namespaces whose eth0 reaches the stand-in and whose Multus
interfaces carry their ENI's MAC. Needs root (skipped otherwise)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from testenv.client import Bed, BedError

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root: pods are network namespaces")


def namespaces() -> set[str]:
    return set(subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.split())


def global_addresses(pod, interface: str) -> set[str]:
    return {item["local"] for item in links(pod)[interface]["addr_info"] if item["scope"] == "global"}


def links(pod) -> dict[str, dict]:
    output = subprocess.run(["ip", "-n", pod.netns, "-j", "addr"], capture_output=True, text=True, check=True).stdout
    return {link["ifname"]: link for link in json.loads(output)}


@pytest.fixture(scope="module")
def bed():
    with Bed("how-to") as bed:
        yield bed


def test_a_multus_interface_carries_its_enis_mac_and_addresses(bed):
    prefix = bed.ipv6_prefix()
    pod = bed.pod("node1", "mac", [{"name": "net1", "eni": "eth2", "addresses": ["10.0.1.50/24", f"{prefix}50/64"]},
                                   {"name": "v4if0", "addresses": ["169.254.172.9/22"]}])
    interfaces = links(pod)
    assert interfaces["net1"]["address"] == bed.eni("node1", "eth2")["mac"]
    assert global_addresses(pod, "net1") == {"10.0.1.50", f"{prefix}50"}
    assert interfaces["v4if0"]["address"] not in {eni["mac"] for eni in bed.topology["nodes"]["node1"]["enis"]}
    assert interfaces["eth0"]["addr_info"][0]["local"].startswith("198.18.")


def test_two_pods_on_one_eni_and_address_changes(bed):
    first = bed.pod("node2", "twin-a", [{"name": "net1", "eni": "eth1", "addresses": ["10.0.1.60/24"]}])
    second = bed.pod("node2", "twin-b", [{"name": "net1", "eni": "eth1", "addresses": ["10.0.1.61/24"]}])
    bed.add_address(second, "net1", "10.0.1.62/24")
    assert global_addresses(second, "net1") == {"10.0.1.61", "10.0.1.62"}
    bed.remove_address(second, "net1", "10.0.1.62/24")
    assert global_addresses(first, "net1") == {"10.0.1.60"}
    assert global_addresses(second, "net1") == {"10.0.1.61"}


def test_a_pod_reaches_its_nodes_metadata_through_eth0(bed):
    pod = bed.pod("node1", "reach", [])
    script = ("import os, urllib.request as u; e = os.environ['AWS_EC2_METADATA_SERVICE_ENDPOINT'];"
              "t = u.urlopen(u.Request(e + '/latest/api/token', method='PUT',"
              " headers={'X-aws-ec2-metadata-token-ttl-seconds': '60'})).read().decode();"
              "print(u.urlopen(u.Request(e + '/latest/meta-data/instance-id',"
              " headers={'X-aws-ec2-metadata-token': t})).read().decode())")
    result = subprocess.run(pod.exec_argv([sys.executable, "-c", script]), capture_output=True, text=True, timeout=30)
    assert result.stdout.strip() == bed.topology["nodes"]["node1"]["instance_id"], result.stderr


def test_a_pod_resolves_the_ec2_endpoints_name_through_the_beds_resolver(bed):
    pod = bed.pod("node1", "resolve", [])
    host = bed.topology["ec2_endpoint_by_name"].split("//")[1].rsplit(":", 1)[0]
    assert host.startswith("ec2.") and host.endswith(".amazonaws.com")
    # One A query from inside the pod, as a stub resolver sends it: rcode and answers.
    script = ("import socket, sys; from testenv import dns; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM);"
              "s.settimeout(5); s.sendto(dns.query(sys.argv[1]), (sys.argv[2], 53)); r = s.recv(512);"
              "print(r[3] & 15, socket.inet_ntoa(r[-4:]) if r[7] else '-')")
    for name, expected in ((host, f"0 {bed.topology['resolver']}"), ("example.com", "3 -")):
        result = subprocess.run(pod.exec_argv([sys.executable, "-c", script, name, bed.topology["resolver"]]),
                                capture_output=True, text=True, timeout=30, cwd=Path(__file__).parent.parent)
        assert result.stdout.strip() == expected, result.stderr


def test_deleting_a_pod_removes_its_namespace_and_errors_name_the_problem(bed):
    pod = bed.pod("node1", "gone", [{"name": "net1", "eni": "eth1", "addresses": ["10.0.1.70/24"]}])
    assert pod.netns in namespaces()
    bed.delete_pod(pod)
    assert pod.netns not in namespaces()
    with pytest.raises(BedError, match="no pod gone"):
        bed.delete_pod(pod)
    with pytest.raises(BedError, match="node1 has no ENI named eth9"):
        bed.pod("node1", "bad", [{"name": "net1", "eni": "eth9"}])
    assert f"{bed.name}-bad" not in namespaces()


def test_closing_the_bed_removes_every_namespace():
    with Bed("how-to") as bed:
        bed.pod("node1", "left-behind", [{"name": "net1", "eni": "eth1"}])
        made = {name for name in namespaces() if name.startswith(bed.name)}
        assert made == {bed.name, f"{bed.name}-left-behind", f"{bed.name}-node-node1"}
    assert not {name for name in namespaces() if name.startswith(bed.name)}
    assert not Path(f"/run/ipmgr-testenv/{bed.name}").exists()


def test_a_node_lists_its_pods_in_its_runtime_netns_directory(bed):
    node = bed.control("GET", "nodes/node2")
    directory = Path(node["netns_dir"])
    before = set(os.listdir(directory))
    pod = bed.pod("node2", "listed", [{"name": "net1", "eni": "eth1", "addresses": ["10.0.1.80/24"]}])
    added = set(os.listdir(directory)) - before
    assert len(added) == 1 and added.pop().startswith("cni-")
    # A process in the node's namespace (started as an agent would be) reads the pod's
    # addresses through the runtime directory.
    entry = next(directory / name for name in os.listdir(directory) if name not in before)
    shown = subprocess.run(["ip", "netns", "exec", node["netns"], "nsenter", f"--net={entry}", "ip", "-j", "addr"],
                           capture_output=True, text=True, check=True).stdout
    assert "10.0.1.80" in shown
    bed.delete_pod(pod)
    assert set(os.listdir(directory)) == before
