"""The bed's pods: network namespaces whose eth0 is the VPC CNI's (a veth into their node,
routed through the bed's gateway) and whose Multus interfaces carry their ENI's MAC. Needs
root (skipped otherwise)."""

from __future__ import annotations

import contextlib
import hashlib
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
    assert interfaces["eth0"]["addr_info"][0]["local"] == pod.pod_ip and pod.pod_ip.startswith("198.19.")


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


# Serves HTTP on ADDRESS:9472 (where a node agent's pod API listens) until killed, answering
# each request with the address it came from.
PEER_SERVER = """
import http.server, socket, sys
class Server(http.server.ThreadingHTTPServer):
    address_family = socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET
class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200); self.end_headers(); self.wfile.write(self.client_address[0].encode())
    def log_message(self, *args):
        pass
server = Server((sys.argv[1], 9472), Handler)
print("listening", flush=True)
server.serve_forever()
"""


@contextlib.contextmanager
def peer_server(place, address: str):
    """An HTTP server on `address`:9472 in `place`'s namespace, for the test's duration."""
    server = subprocess.Popen(place.exec_argv([sys.executable, "-c", PEER_SERVER, address]), stdout=subprocess.PIPE,
                              text=True)
    try:
        assert server.stdout.readline().strip() == "listening"
        yield
    finally:
        server.kill()
        server.wait()


def seen_from(place, address: str) -> str:
    """GET http://ADDRESS:9472/ from `place`: the source address the server saw."""
    host = f"[{address}]" if ":" in address else address
    script = "import sys, urllib.request as u; print(u.urlopen(sys.argv[1], timeout=5).read().decode())"
    result = subprocess.run(place.exec_argv([sys.executable, "-c", script, f"http://{host}:9472/"]),
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def routes(netns: str, *selector: str) -> list[dict]:
    family = ["-6"] if any(":" in term for term in selector) else []
    argv = ["ip", "-n", netns, *family, "-j", "route", "show", *selector]
    return json.loads(subprocess.run(argv, capture_output=True, text=True, check=True).stdout)


def link(netns: str, name: str) -> dict:
    argv = ["ip", "-n", netns, "-d", "-j", "link", "show", name]
    return json.loads(subprocess.run(argv, capture_output=True, text=True, check=True).stdout)[0]


def test_a_pods_eth0_is_a_veth_into_its_node_routed_as_the_vpc_cni_routes_it(bed):
    node = bed.node("node1")
    pod = bed.pod("node1", "routed", [], namespace="multus")
    # amazon-vpc-cni-k8s: "eni" + the first 11 hex digits of SHA-1("<namespace>.<name>").
    assert pod.host_veth == "eni" + hashlib.sha1(b"multus.routed").hexdigest()[:11]
    eth0, host_side = link(pod.netns, "eth0"), link(node.netns, pod.host_veth)
    assert eth0["linkinfo"]["info_kind"] == host_side["linkinfo"]["info_kind"] == "veth"
    assert (eth0["link_index"], host_side["link_index"]) == (host_side["ifindex"], eth0["ifindex"])
    assert global_addresses(pod, "eth0") == {pod.pod_ip} and pod.pod_ip.startswith("198.19.")
    assert links(pod)["eth0"]["addr_info"][0]["prefixlen"] == 32
    assert {(route["dst"], route.get("gateway"), route.get("scope")) for route in routes(pod.netns)} == {
        ("default", "169.254.1.1", None), ("169.254.1.1", None, "link")}
    neighbours = json.loads(subprocess.run(["ip", "-n", pod.netns, "-j", "neigh"], capture_output=True, text=True,
                                           check=True).stdout)
    assert [(entry["dst"], entry["lladdr"], entry["state"]) for entry in neighbours] == [
        ("169.254.1.1", host_side["address"], ["PERMANENT"])]
    assert [(route["dev"], route["scope"]) for route in routes(node.netns, pod.pod_ip)] == [(pod.host_veth, "link")]
    assert [route["gateway"] for route in routes(bed.name, pod.pod_ip)] == [node.address]

    bed.delete_pod(pod)
    assert routes(bed.name, pod.pod_ip) == [] and routes(node.netns, pod.pod_ip) == []
    assert subprocess.run(["ip", "-n", node.netns, "link", "show", pod.host_veth], capture_output=True).returncode != 0


def test_pods_reach_their_node_and_other_nodes_pods_from_their_own_address(bed):
    node1, node2 = bed.node("node1"), bed.node("node2")
    here, there = bed.pod("node1", "here", []), bed.pod("node2", "there", [])
    with peer_server(node1, node1.address):
        assert seen_from(here, node1.address) == here.pod_ip  # no SNAT on the way
        assert seen_from(there, node1.address) == there.pod_ip
    with peer_server(there, there.pod_ip):
        assert seen_from(here, there.pod_ip) == here.pod_ip
        assert seen_from(node1, there.pod_ip) == node1.address
    # The gateway's services see the pod's own address too (what metadata refuses pods by).
    before = bed.metadata_requests().get(here.pod_ip, 0)
    script = ("import os, urllib.request as u; e = os.environ['AWS_EC2_METADATA_SERVICE_ENDPOINT'];"
              "u.urlopen(u.Request(e + '/latest/api/token', method='PUT',"
              " headers={'X-aws-ec2-metadata-token-ttl-seconds': '60'}), timeout=10)")
    subprocess.run(here.exec_argv([sys.executable, "-c", script]), check=True, timeout=30)
    assert bed.metadata_requests()[here.pod_ip] == before + 1


def test_an_ipv6_pod_reaches_its_nodes_ipv6_address(bed):
    node = bed.node("node2")
    assert node.address6.startswith("2001:2::")
    pod = bed.pod("node2", "six", [], ipv6=True)
    assert pod.pod_ip.startswith("2001:2:0:1::") and global_addresses(pod, "eth0") == {pod.pod_ip}
    assert links(pod)["eth0"]["addr_info"][0]["prefixlen"] == 128
    six = json.loads(subprocess.run(["ip", "-n", pod.netns, "-6", "-j", "route"], capture_output=True, text=True,
                                    check=True).stdout)
    assert ("default", "fe80::1") in {(route["dst"], route.get("gateway")) for route in six}
    assert [route["dev"] for route in routes(node.netns, pod.pod_ip)] == [pod.host_veth]
    with peer_server(node, node.address6):  # http://[node IPv6]:9472, as a helper asks its agent
        assert seen_from(pod, node.address6) == pod.pod_ip
    other = bed.pod("node1", "six-there", [], ipv6=True)
    with peer_server(other, other.pod_ip):
        assert seen_from(pod, other.pod_ip) == pod.pod_ip


def test_a_pod_ip_is_reused_only_once_its_sandbox_is_gone(bed):
    first = bed.pod("node1", "first-holder", [])
    with pytest.raises(BedError, match=f"pod_ip {first.pod_ip} is pod first-holder's"):
        bed.pod("node2", "second-holder", [], pod_ip=first.pod_ip)
    with pytest.raises(BedError, match="outside the pod range"):
        bed.pod("node2", "second-holder", [], pod_ip="10.0.0.99")
    bed.delete_pod(first, keep_object=True)
    assert first.netns not in namespaces()
    with pytest.raises(BedError, match="pod first-holder exists already"):
        bed.pod("node1", "first-holder", [])
    second = bed.pod("node2", "second-holder", [], pod_ip=first.pod_ip)
    assert second.pod_ip == first.pod_ip
    assert [route["gateway"] for route in routes(bed.name, second.pod_ip)] == [bed.node("node2").address]
    with peer_server(second, second.pod_ip):
        assert seen_from(bed.node("node1"), second.pod_ip) == bed.node("node1").address
    bed.delete_pod_object(first)
    with pytest.raises(BedError, match="no pod first-holder"):
        bed.delete_pod_object(first)


def node_links(netns: str) -> dict[str, dict]:
    output = subprocess.run(["ip", "-n", netns, "-d", "-j", "addr"], capture_output=True, text=True, check=True).stdout
    return {item["ifname"]: item for item in json.loads(output)}


def routes_through(netns: str, devices: set[str]) -> list[dict]:
    """The routes of every table of `netns` through `devices` (IPv4 and IPv6), but the
    multicast route the kernel gives every IPv6 link that is up."""
    found = []
    for family in ("-4", "-6"):
        argv = ["ip", "-n", netns, family, "-j", "route", "show", "table", "all"]
        found += json.loads(subprocess.run(argv, capture_output=True, text=True, check=True).stdout)
    return [route for route in found if route.get("dev") in devices and route.get("type") != "multicast"]


def test_each_attached_eni_is_a_link_of_its_node_with_its_mac_and_no_address(bed):
    for name in ("node1", "node2"):
        node = bed.node(name)
        enis = bed.topology["nodes"][name]["enis"]
        shown = node_links(node.netns)
        # The primary ENI's link is the node's eth0: the bed's management veth, addresses and all.
        assert enis[0]["interface"] == "eth0" and shown["eth0"]["linkinfo"]["info_kind"] == "veth"
        assert node.address in {item["local"] for item in shown["eth0"]["addr_info"]}
        others = {eni["interface"]: eni["mac"] for eni in enis[1:]}
        assert list(others) == [f"eth{position}" for position in range(1, len(enis))]
        for interface, mac in others.items():
            assert shown[interface]["address"] == mac
            assert shown[interface]["linkinfo"]["info_kind"] == "ifb"
            assert "UP" in shown[interface]["flags"] and shown[interface]["addr_info"] == []
        assert set(shown) - set(others) - {"lo", "eth0"} <= {link for link in shown if link.startswith("eni")}
        assert routes_through(node.netns, set(others)) == []
    # A pod's Multus interface carries the MAC of the node's link it stands for.
    pod = bed.pod("node1", "on-eth3", [{"name": "net1", "eni": "eth3", "addresses": ["10.0.2.50/24"]}])
    assert links(pod)["net1"]["address"] == node_links(bed.node("node1").netns)["eth3"]["address"]


def test_an_eni_link_is_named_by_the_topology_or_else_by_its_position():
    description = {"subnets": {"node": {"cidr": "10.0.0.0/24"}, "multus": {"cidr": "10.0.1.0/24"}},
                   "nodes": {"node1": {"instance_type": "c5.4xlarge", "enis": [
                       {"subnet": "node", "name": "ens5"}, {"subnet": "multus", "name": "ens6", "multus": True},
                       {"subnet": "multus"}]}}}
    with Bed(description) as bed:
        enis = bed.topology["nodes"]["node1"]["enis"]
        assert [(eni["name"], eni["interface"]) for eni in enis] == [("ens5", "eth0"), ("ens6", "ens6"),
                                                                     ("eth2", "eth2")]
        pod = bed.pod("node1", "named", [{"name": "net1", "eni": "ens6", "addresses": ["10.0.1.50/24"]}])
        shown = node_links(bed.node("node1").netns)
        assert {name: shown[name]["address"] for name in ("ens6", "eth2")} == {
            "ens6": enis[1]["mac"], "eth2": enis[2]["mac"]}
        assert "ens5" not in shown
        assert links(pod)["net1"]["address"] == enis[1]["mac"]


# What a node sees of its ENIs, from its own namespace: metadata's MACs with their device
# numbers, and EC2's Describe of the ENI ids given.
LOOK = """
import json, os, sys, urllib.request
import boto3
imds = os.environ["AWS_EC2_METADATA_SERVICE_ENDPOINT"]
token = urllib.request.urlopen(urllib.request.Request(f"{imds}/latest/api/token", method="PUT",
    headers={"X-aws-ec2-metadata-token-ttl-seconds": "60"}), timeout=5).read().decode()
def get(path):
    request = urllib.request.Request(f"{imds}/latest/meta-data/network/interfaces/macs/{path}",
                                     headers={"X-aws-ec2-metadata-token": token})
    return urllib.request.urlopen(request, timeout=5).read().decode()
macs = [line.rstrip("/") for line in get("").split()]
ec2 = boto3.client("ec2", region_name="us-east-2", aws_access_key_id="testing", aws_secret_access_key="testing")
found = ec2.describe_network_interfaces(NetworkInterfaceIds=sys.argv[1:])["NetworkInterfaces"]
print(json.dumps({"devices": {mac: get(f"{mac}/device-number") for mac in macs},
                  "enis": {eni["NetworkInterfaceId"]: eni for eni in found}}, default=str))
"""


def look(node, *eni_ids: str) -> dict:
    result = subprocess.run(node.exec_argv([sys.executable, "-c", LOOK, *eni_ids]), capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_an_eni_detached_and_attached_while_the_node_runs_changes_ec2_metadata_and_links():
    description = {"subnets": {"node": {"cidr": "10.0.0.0/24"}, "multus": {"cidr": "10.0.1.0/24"}},
                   "nodes": {"node1": {"instance_type": "m5.large", "enis": [
                       "node", {"subnet": "multus", "multus": True}, {"subnet": "multus", "multus": True}]}}}
    with Bed(description) as bed:
        node = bed.node("node1")
        old = bed.eni("node1", "eth2")
        assert bed.control("DELETE", "nodes/node1/enis/eth2")["id"] == old["id"]
        assert "eth2" not in node_links(node.netns)
        seen = look(node, old["id"])
        assert old["mac"] not in seen["devices"]
        assert seen["enis"][old["id"]]["Status"] == "available" and "Attachment" not in seen["enis"][old["id"]]
        for body, refusal in (({"subnet": "multus", "device": 1}, "device index 1 of network card 0 has an ENI"),
                              ({"subnet": "multus", "name": "eth1", "device": 3}, "two ENIs named eth1"),
                              ({"subnet": "nowhere"}, "in no subnet")):
            with pytest.raises(BedError, match=refusal):
                bed.control("POST", "nodes/node1/enis", body)

        # The lowest free device, named as Amazon Linux names its link, tagged as a Multus ENI.
        new = bed.control("POST", "nodes/node1/enis", {"subnet": "multus", "multus": True})
        assert (new["name"], new["interface"], new["device_index"]) == ("eth2", "eth2", 2)
        assert new["id"] != old["id"] and new["mac"] != old["mac"]
        assert node_links(node.netns)["eth2"]["address"] == new["mac"]
        seen = look(node, new["id"])
        assert seen["devices"][new["mac"]] == "2"
        assert seen["enis"][new["id"]]["Attachment"]["DeviceIndex"] == 2
        assert {"Key": "node.k8s.amazonaws.com/no_manage", "Value": "true"} in seen["enis"][new["id"]]["TagSet"]

        # An m5.large takes 3 ENIs: a fourth is refused as EC2 refuses it.
        with pytest.raises(BedError, match="node node1: 4 ENIs, but a m5.large takes at most 3"):
            bed.control("POST", "nodes/node1/enis", {"subnet": "multus"})
        with pytest.raises(BedError, match="primary ENI"):
            bed.control("DELETE", "nodes/node1/enis/eth0")
