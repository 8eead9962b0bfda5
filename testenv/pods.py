"""Pods of the test bed: network namespaces, as containerd and CRI-O make pod sandboxes,
networked as the VPC CNI networks them on an EKS node.

The stand-in runs in a namespace of its own (the bed) holding a bridge, `br0`, on the bed's
management network (the VPC, as the nodes see it). Each node has a namespace of its own (its
host network, where a node agent runs) whose `eth0` is on that bridge, with an IPv4 and an
IPv6 address, and a default route through the bed's gateway.

On an EKS node each attached ENI is a link of the host network carrying the ENI's MAC
(Amazon Linux names them eth0, eth1, ...; a Multus ipvlan's `master` names one). So each
node's namespace also has, for each ENI but the primary (whose link the management `eth0`
stands for), a link of that name (the topology's: `name`, else `eth<position>`) with the
ENI's MAC: an `ifb` link (this kernel has no `dummy`; an ifb link stands alone too, with no
peer and no traffic unless tc redirects some to it), up, with no address, not even an IPv6
link-local one (`addrgenmode none`), hence no route: nothing routes through it and it
changes no route lookup (the agent finds a pod by the node's route to its IP). The pods'
Multus interfaces do not stand on these links (see below).

A pod's `eth0` is what the VPC CNI makes (amazon-vpc-cni-k8s,
cmd/routed-eni-cni-plugin/driver/driver.go, `createVethPairContext.run` and
`setupIPBasedContainerRouteRules`): a veth whose peer lives in its node's namespace, named
`eni` + 11 hex digits of SHA-1("<namespace>.<name>"); the pod IP alone on eth0 (/32, or /128
for IPv6), a route to the gateway 169.254.1.1 (fe80::1) with scope link, the default route
through it, and a permanent neighbour entry giving it the host veth's MAC; on the node, the
route `<pod IP> dev eni... scope link`. Pod IPs come from ranges of their own outside the
management network, so a node reaches another node's pods through the gateway, which routes
each pod IP to its node's eth0 address as the VPC routes a pod's address to its node's ENI.
No SNAT: the bed sees a pod's own address, and instance metadata can refuse pods by it. Left
out: the VPC CNI's to-container `ip rule` (a node has one route table here) and its IPv6
sysctls on the host veth (nothing sends router advertisements here).

A Multus interface is a macvlan carrying the MAC of the node ENI it stands on: this kernel
has no ipvlan, and to the helper a macvlan with the master's MAC is the same as an ipvlan
child (`ip -d link` aside). Each interface gets a parent of its own in the bed, because two
macvlans with one MAC cannot share a parent (ipvlan children of one ENI can). Other
interfaces, such as the VPC CNI's `v4if0`, get a MAC of no ENI.

Every change is one `ip -batch` per namespace it touches (the bed, the node, the pod), so a
pod costs a few tens of milliseconds. Needs root.

Each node also has a runtime netns directory, as containerd and CRI-O keep pod sandboxes
under /var/run/netns (`cni-<uuid>`): a shared mount under /run/ipmgr-testenv/ holding a bind
mount of each of the node's pod namespaces, so that a process that mounted it (an agent
started with `ip netns exec`, like a container with HostToContainer propagation) sees pods
come and go.
"""

from __future__ import annotations

import ctypes
import hashlib
import ipaddress
import os
import secrets
import subprocess
import threading
import uuid
from pathlib import Path

# RFC 2544's benchmarking range (198.18.0.0/15) and RFC 5180's (2001:2::/48): never a VPC's.
# 198.18.0.0/16 and 2001:2::/64 hold the bed's gateway and the nodes, the others the pod IPs.
MANAGEMENT = ipaddress.ip_network("198.18.0.0/16")
MANAGEMENT6 = ipaddress.ip_network("2001:2::/64")
GATEWAY = MANAGEMENT.network_address + 1
GATEWAY6 = MANAGEMENT6.network_address + 1
POD_NETWORKS = {4: ipaddress.ip_network("198.19.0.0/16"), 6: ipaddress.ip_network("2001:2:0:1::/64")}
# The pod's next hop: networkutils.CalculatePodIPv4GatewayIP(0) and CalculatePodIPv6GatewayIP(0)
# (pkg/networkutils/helper.go), for eth0.
POD_GATEWAYS = {4: "169.254.1.1", 6: "fe80::1"}
# AWS_VPC_K8S_CNI_VETHPREFIX's default (cmd/aws-vpc-cni/main.go, defaultVethPrefix).
VETH_PREFIX = "eni"
RUNTIME_DIRS = Path("/run/ipmgr-testenv")

# The bed routes between nodes as the VPC does: it forwards, and sends no ICMP redirects
# (nodes would learn routes straight to each other, stale once a pod IP moves).
# Without duplicate address detection, addresses are usable at once.
BED_SYSCTLS = ["net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1", "net.ipv4.conf.all.send_redirects=0",
               "net.ipv4.conf.default.send_redirects=0", "net.ipv6.conf.all.accept_dad=0",
               "net.ipv6.conf.default.accept_dad=0"]
# A node forwards its pods' traffic: IPv4 forwarding as the VPC CNI's routed pods need it
# (pkg/utils/cniutils/cni_utils.go, EnableIpForwarding), IPv6 as cmd/aws-vpc-cni-init/main.go
# sets net/ipv6/conf/all/forwarding=1. Host veths skip DAD, so that a pod is reachable at once
# (the VPC CNI waits for the pod's addresses to pass DAD instead, up to 10 s).
NODE_SYSCTLS = ["net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1", "net.ipv6.conf.all.accept_dad=0",
                "net.ipv6.conf.default.accept_dad=0"]


class PodError(Exception):
    """A pod request that cannot be carried out (HTTP 400 for the test)."""


def batch(commands: list[str], namespace: str | None = None) -> None:
    """Runs `commands` with one `ip -batch` (in `namespace` when given); raises with ip's
    reason when one fails."""
    batches([(commands, namespace)])


def batches(work: list[tuple[list[str], str | None]], force: bool = False) -> None:
    """Runs one `ip -batch` per (commands, namespace) at once and waits for them all; unless
    `force`, raises with ip's reason when one fails (with `force`, each goes on past errors)."""
    running = []
    for commands, namespace in work:
        if commands:
            argv = ["ip"] + (["-force"] if force else []) + (["-n", namespace] if namespace else []) + ["-batch", "-"]
            process = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                       stderr=subprocess.PIPE, text=True)
            process.stdin.write("\n".join(commands) + "\n")
            process.stdin.close()
            running.append((process, namespace))
    failures = []
    for process, namespace in running:
        errors = process.stderr.read()
        if process.wait() != 0 and not force:
            failures.append(f"ip -batch {'in ' + namespace if namespace else ''} failed: {errors.strip()}")
    if failures:
        raise PodError("; ".join(failures))


LIBC = ctypes.CDLL(None, use_errno=True)
MS_BIND = 4096  # <sys/mount.h>


def bind_mount(source: str, target: str) -> None:
    """`mount --bind source target` without a process (a pod's sandbox in its runtime directory)."""
    if LIBC.mount(source.encode(), target.encode(), None, MS_BIND, None) != 0:
        raise OSError(ctypes.get_errno(), f"mount --bind {source} {target}: {os.strerror(ctypes.get_errno())}")


def set_sysctls(namespace: str, values: list[str]) -> None:
    subprocess.run(["ip", "netns", "exec", namespace, "sysctl", "-q", "-w", *values], check=True, capture_output=True)


def random_mac() -> str:
    """A locally administered unicast MAC that no ENI has (EC2 MACs are 02:... or 0a:..., but
    the locally administered bit alone does not tell them apart; 06: is never an ENI's here)."""
    return "06:" + ":".join(f"{byte:02x}" for byte in secrets.token_bytes(5))


def host_veth_name(namespace: str, name: str) -> str:
    """The host side of a pod's eth0 (pkg/networkutils/names.go, GeneratePodHostVethName)."""
    return VETH_PREFIX + hashlib.sha1(f"{namespace}.{name}".encode()).hexdigest()[:11]


def host_route(address: str) -> str:
    """`address` as a one-address prefix (/32 or /128)."""
    return str(ipaddress.ip_network(address))


class Pods:
    """The pods and nodes of one bed; `eni_mac(node, eni)` gives an ENI's MAC by node and ENI
    name."""

    def __init__(self, bed: str, eni_mac):
        self.bed, self.eni_mac = bed, eni_mac
        self.lock = threading.Lock()
        self.pods: dict[str, dict] = {}
        self.nodes: dict[str, dict] = {}  # planned by plan_nodes; "netns" once made
        self.pod_ips: dict[str, str] = {}  # a live sandbox's pod IP -> its name
        self.next_host = {4: 0, 6: 0}
        self.links = 0
        self.runtime = RUNTIME_DIRS / bed

    @staticmethod
    def prepare_bed() -> list[str]:
        """The bed namespace's own links (run inside it)."""
        # A fixed MAC: a bridge otherwise takes its lowest port's, which changes when that
        # node's veth goes, and every namespace's ARP entry for the gateway goes stale for seconds.
        return ["link set lo up", "link add br0 address 02:00:c6:12:00:01 type bridge",
                f"addr add {GATEWAY}/{MANAGEMENT.prefixlen} dev br0",
                f"addr add {GATEWAY6}/{MANAGEMENT6.prefixlen} dev br0 nodad", "link set br0 up"]

    def plan_nodes(self, nodes) -> None:
        """Gives each node of the topology its number, eth0 addresses and ENI links: `nodes`
        maps each name to the node as the topology answers it (its ENIs' `interface` and
        `mac`), or lists names alone (no ENI links). Its namespace is made on first use."""
        with self.lock:
            for name in nodes:
                number = len(self.nodes) + 1
                if number + 1 >= MANAGEMENT.num_addresses - 1:
                    raise PodError("the bed's management network is full")
                enis = nodes[name].get("enis", []) if isinstance(nodes, dict) else []
                self.nodes[name] = {"name": name, "number": number,
                                    "address": str(GATEWAY + number), "address6": str(GATEWAY6 + number),
                                    "eni_links": {eni["interface"]: eni["mac"] for eni in enis[1:]}}

    def next_link(self) -> int:
        with self.lock:
            self.links += 1
            return self.links

    def planned(self, name: str) -> dict:
        with self.lock:
            if name not in self.nodes:
                raise PodError(f"no node {name} in the topology")
            return self.nodes[name]

    def node(self, name: str, env: dict[str, str]) -> dict:
        """The node's own namespace and runtime netns directory, made on first use."""
        node = self.planned(name)
        with self.lock:
            if "netns" in node:
                return node
        netns, host_side = f"{self.bed}-node-{name}", f"e{node['number']}"
        netns_dir = self.runtime / name
        netns_dir.mkdir(parents=True, exist_ok=True)
        for command in (["mount", "--bind", str(netns_dir), str(netns_dir)], ["mount", "--make-shared", str(netns_dir)]):
            subprocess.run(command, check=True, capture_output=True)
        batch([f"netns add {netns}"])
        set_sysctls(netns, NODE_SYSCTLS)  # before eth0, which takes the defaults
        batch([f"link add {host_side} type veth peer name eth0 netns {netns}", f"link set {host_side} master br0 up"])
        batch(["link set lo up", f"addr add {node['address']}/{MANAGEMENT.prefixlen} dev eth0",
               f"addr add {node['address6']}/{MANAGEMENT6.prefixlen} dev eth0 nodad", "link set eth0 up",
               f"route add default via {GATEWAY}", f"route add default via {GATEWAY6}"]
              + [command for link, mac in node["eni_links"].items() for command in eni_link_commands(link, mac)],
              netns)
        with self.lock:
            node |= {"netns": netns, "netns_dir": str(netns_dir), "env": env}
        return node

    def attach_link(self, node_name: str, name: str, mac: str) -> None:
        """The link of an ENI attached to a node (`name`, carrying `mac`), as the node's OS
        makes it when the ENI is attached; in its namespace at once when that is made."""
        node = self.planned(node_name)
        with self.lock:
            node["eni_links"][name] = mac
            netns = node.get("netns")
        if netns:
            batch(eni_link_commands(name, mac), netns)

    def detach_link(self, node_name: str, name: str) -> None:
        """The link of an ENI detached from a node goes with it."""
        node = self.planned(node_name)
        with self.lock:
            node["eni_links"].pop(name, None)
            netns = node.get("netns")
        if netns:  # gone already when a test removed it
            batches([([f"link del {name}"], netns)], force=True)

    def node_address(self, name: str, family: int = 4) -> str | None:
        """The IPv4 (or IPv6) address of node `name`'s eth0, None for a node of no topology."""
        with self.lock:
            node = self.nodes.get(name)
            return node and node["address" if family == 4 else "address6"]

    def claim_ip(self, wanted: str | None, family: int) -> str:
        """A pod IP: `wanted` (in the pod range, held by no live sandbox), or
        the next free one of the family's range; the caller holds the lock."""
        network = POD_NETWORKS[family]
        if wanted is not None:
            try:
                address = ipaddress.ip_address(wanted)
            except ValueError:
                raise PodError(f"pod_ip {wanted!r} is not an IP address") from None
            if address not in network:
                raise PodError(f"pod_ip {wanted} is outside the pod range {network}")
            if str(address) in self.pod_ips:
                raise PodError(f"pod_ip {address} is pod {self.pod_ips[str(address)]}'s")
            return str(address)
        usable = min(network.num_addresses - 2, 1 << 20)
        for _ in range(usable):
            self.next_host[family] = self.next_host[family] % usable + 1
            address = str(network.network_address + self.next_host[family])
            if address not in self.pod_ips:
                return address
        raise PodError(f"the pod range {network} is full")

    def create(self, spec: dict, env: dict[str, str]) -> dict:
        """A pod: `{"name", "node", "namespace", "ipv6", "pod_ip", "interfaces": [{"name", "eni" |
        "mac", "addresses"}]}` (namespace: the Kubernetes one, "default" when not given). Like a
        sandbox, it carries the pod's name, namespace and uid (CRI PodSandboxMetadata), and
        its eth0 address is the pod IP (IPv6 with `ipv6`; `pod_ip` to reuse one)."""
        name, node_name = spec["name"], spec["node"]
        node = self.node(node_name, env)
        wanted = spec.get("pod_ip")
        if wanted is not None and spec.get("ipv6") and ":" not in str(wanted):
            raise PodError(f"pod_ip {wanted} is not IPv6, as \"ipv6\" asks")
        family = 6 if spec.get("ipv6") or ":" in str(wanted or "") else 4
        namespace = spec.get("namespace", "default")
        with self.lock:
            if name in self.pods:
                raise PodError(f"pod {name} exists already")
            pod_ip = self.claim_ip(wanted, family)
            self.pod_ips[pod_ip] = name
            self.pods[name] = {"name": name, "node": node_name, "namespace": namespace, "uid": str(uuid.uuid4()),
                               "netns": f"{self.bed}-{name}", "interfaces": [], "pod_ip": pod_ip, "family": family,
                               "host_veth": host_veth_name(namespace, name), "node_netns": node["netns"],
                               "links": [], "env": env, "routed_via": node["address" if family == 4 else "address6"],
                               "runtime_netns": str(Path(node["netns_dir"]) / f"cni-{uuid.uuid4()}")}
        pod = self.pods[name]
        mac, gateway, veth = random_mac(), POD_GATEWAYS[family], pod["host_veth"]
        outside = [f"netns add {pod['netns']}",
                   f"link add {veth} address {mac} netns {node['netns']} type veth peer name eth0 netns {pod['netns']}",
                   f"route add {host_route(pod_ip)} via {pod['routed_via']}"]
        on_node = [f"link set {veth} up", f"route replace {host_route(pod_ip)} dev {veth} scope link"]
        inside = ["link set lo up", "link set eth0 up", f"route add {gateway} dev eth0 scope link",
                  f"route add default via {gateway} dev eth0", address_command("add", host_route(pod_ip), "eth0"),
                  f"neigh add {gateway} lladdr {mac} dev eth0 nud permanent"]
        try:
            for interface in spec.get("interfaces", []):
                more_outside, more_inside = self.interface_commands(pod, interface)
                outside += more_outside
                inside += more_inside
            batch(outside)
            batches([(on_node, node["netns"]), (inside, pod["netns"])])
            Path(pod["runtime_netns"]).touch()
            bind_mount(f"/var/run/netns/{pod['netns']}", pod["runtime_netns"])
        except Exception:
            self.delete(name)
            raise
        return self.describe(pod)

    def interface_commands(self, pod: dict, interface: dict) -> tuple[list[str], list[str]]:
        name = interface["name"]
        if len(name) > 15:
            raise PodError(f"interface name {name!r} is longer than 15 characters")
        if "eni" in interface:
            mac = self.eni_mac(pod["node"], interface["eni"])
        else:
            mac = interface.get("mac") or random_mac()
        number = self.next_link()
        parent, peer, temporary = f"x{number}", f"y{number}", f"m{number}"
        pod["links"].append(parent)
        pod["interfaces"].append({"name": name, "mac": mac})
        outside = [f"link add {parent} type veth peer name {peer}", f"link set {parent} up", f"link set {peer} up",
                   f"link add link {parent} name {temporary} address {mac} type macvlan mode bridge",
                   f"link set {temporary} netns {pod['netns']}"]
        inside = [f"link set {temporary} name {name}"]
        inside += [address_command("add", address, name) for address in interface.get("addresses", [])]
        inside.append(f"link set {name} up")
        return outside, inside

    def add_interface(self, name: str, interface: dict) -> dict:
        pod = self.get(name)
        outside, inside = self.interface_commands(pod, interface)
        batch(outside)
        batch(inside, pod["netns"])
        return self.describe(pod)

    def change_addresses(self, name: str, request: dict) -> dict:
        """`{"interface", "add": [...], "remove": [...]}`, CIDR form, removals first."""
        pod = self.get(name)
        interface = request["interface"]
        batch([address_command("del", address, interface) for address in request.get("remove", [])]
              + [address_command("add", address, interface) for address in request.get("add", [])], pod["netns"])
        return self.describe(pod)

    def delete(self, name: str) -> None:
        """Deletes the pod's sandbox: its eth0 veth (both sides at once, so that a pod of the
        same name can follow straight away), its namespace (its other interfaces go with it),
        the bed's route to its pod IP and its links in the bed."""
        with self.lock:
            pod = self.pods.pop(name, None)
            if pod is not None:
                self.pod_ips.pop(pod["pod_ip"], None)
        if pod is None:
            raise PodError(f"no pod {name}")
        runtime_netns = Path(pod["runtime_netns"])
        if runtime_netns.is_file():
            LIBC.umount2(str(runtime_netns).encode(), 0)
            runtime_netns.unlink()
        # The veth peers of deleted macvlans stay in the bed namespace; -force goes on past
        # what is gone already (a pod whose creation failed half way).
        batches([([f"link del {pod['host_veth']}"], pod["node_netns"]),
                 ([f"route del {host_route(pod['pod_ip'])} via {pod['routed_via']}"]
                  + [f"link del {link}" for link in pod["links"]] + [f"netns del {pod['netns']}"], None)], force=True)

    def exists(self, name: str) -> bool:
        with self.lock:
            return name in self.pods

    def get(self, name: str) -> dict:
        with self.lock:
            if name not in self.pods:
                raise PodError(f"no pod {name}")
            return self.pods[name]

    def list(self) -> list[dict]:
        with self.lock:
            return [self.describe(pod) for pod in self.pods.values()]

    @staticmethod
    def describe(pod: dict) -> dict:
        return {key: pod[key] for key in ("name", "node", "namespace", "uid", "pod_ip", "netns", "interfaces", "env",
                                          "runtime_netns", "host_veth")} | {
            "netns_path": f"/var/run/netns/{pod['netns']}"}

    def cleanup(self) -> None:
        """Removes every pod and node namespace at once (a fleet of hundreds in about a
        second); their links in the bed go with the bed's namespace."""
        with self.lock:
            pods, self.pods = list(self.pods.values()), {}
        remove_namespaces([pod["netns"] for pod in pods], [pod["runtime_netns"] for pod in pods])
        nodes = [node for node in self.nodes.values() if "netns" in node]
        remove_namespaces([node["netns"] for node in nodes], [node["netns_dir"] for node in nodes])
        for node in nodes:
            Path(node["netns_dir"]).rmdir()
        if self.runtime.exists():
            self.runtime.rmdir()


def remove_namespaces(names: list[str], mounts: list[str]) -> None:
    """Unmounts `mounts` (a runtime's bind mounts of namespaces, a node's runtime
    directory), removes the bind-mount files among them, and deletes the named namespaces."""
    if mounts:
        subprocess.run(["umount", *mounts], capture_output=True)
        for mount in map(Path, mounts):
            if mount.is_file():
                mount.unlink()
    if names:
        subprocess.run(["ip", "-force", "-batch", "-"], input="".join(f"netns del {name}\n" for name in names),
                       capture_output=True, text=True)


def eni_link_commands(name: str, mac: str) -> list[str]:
    """A node's link standing for an attached ENI: its name and MAC, up, no address (not
    even IPv6 link-local), so no route."""
    return [f"link add {name} address {mac} type ifb", f"link set {name} addrgenmode none", f"link set {name} up"]


def address_command(verb: str, address: str, interface: str) -> str:
    # IPv6 without duplicate address detection: the address is usable at once, as Multus's is.
    return f"addr {verb} {address} dev {interface}" + (" nodad" if ":" in address and verb == "add" else "")


def enter_bed(bed: str, argv: list[str]) -> None:
    """Creates namespace `bed` with the bridge, then replaces this process with `argv` running
    inside it (nsenter changes only the network namespace, so `ip netns add` still works)."""
    batch([f"netns add {bed}"])
    try:
        set_sysctls(bed, BED_SYSCTLS)
        batch(Pods.prepare_bed(), bed)
    except Exception:
        subprocess.run(["ip", "netns", "del", bed], capture_output=True)
        raise
    os.execvp("nsenter", ["nsenter", f"--net=/var/run/netns/{bed}", *argv])
