"""Pods of the test bed: network namespaces, as containerd and CRI-O make pod sandboxes.

The stand-in runs in a namespace of its own (the bed) holding a bridge, `br0`, on the
bed's management network; every pod namespace has an `eth0` on that bridge, so the processes
run inside reach EC2 and their node's instance metadata (on a real node eth0 is the VPC
CNI's; the helper never touches it). A Multus interface is a macvlan carrying the MAC of the
node ENI it stands on: this kernel has no ipvlan, and to the helper a macvlan with the
master's MAC is the same as an ipvlan child (`ip -d link` aside). Each interface gets a
parent of its own, because two macvlans with one MAC cannot share a parent (ipvlan children
of one ENI can). Other interfaces, such as the VPC CNI's `v4if0`, get a MAC of no ENI.

Every change is one `ip -batch` in the bed namespace and one in the pod's, so a pod costs a
few tens of milliseconds. Needs root.

Each node also has a namespace of its own (its host network, where a node agent runs, with
an `eth0` on the bridge) and a runtime netns directory, as containerd and CRI-O keep pod
sandboxes under /var/run/netns (`cni-<uuid>`): a shared mount under /run/ipmgr-testenv/
holding a bind mount of each of the node's pod namespaces, so that a process that mounted
it (an agent started with `ip netns exec`, like a container with HostToContainer
propagation) sees pods come and go.
"""

from __future__ import annotations

import ipaddress
import os
import secrets
import subprocess
import threading
import uuid
from pathlib import Path

MANAGEMENT = ipaddress.ip_network("198.18.0.0/16")  # RFC 2544 benchmarking range: never a VPC's
GATEWAY = MANAGEMENT.network_address + 1
RUNTIME_DIRS = Path("/run/ipmgr-testenv")


class PodError(Exception):
    """A pod request that cannot be carried out (HTTP 400 for the test)."""


def batch(commands: list[str], namespace: str | None = None) -> None:
    """Runs `commands` with one `ip -batch` (in `namespace` when given); raises with ip's
    reason when one fails."""
    if not commands:
        return
    argv = ["ip"] + (["-n", namespace] if namespace else []) + ["-batch", "-"]
    result = subprocess.run(argv, input="\n".join(commands) + "\n", capture_output=True, text=True)
    if result.returncode != 0:
        raise PodError(f"ip -batch {'in ' + namespace if namespace else ''} failed: {result.stderr.strip()}")


def random_mac() -> str:
    """A locally administered unicast MAC that no ENI has (EC2 MACs are 02:... or 0a:..., but
    the locally administered bit alone does not tell them apart; 06: is never an ENI's here)."""
    return "06:" + ":".join(f"{byte:02x}" for byte in secrets.token_bytes(5))


class Pods:
    """The pods of one bed; `macs(node, eni)` gives an ENI's MAC by node and ENI name."""

    def __init__(self, bed: str, eni_mac):
        self.bed, self.eni_mac = bed, eni_mac
        self.lock = threading.Lock()
        self.pods: dict[str, dict] = {}
        self.nodes: dict[str, dict] = {}
        self.counter = 0
        self.runtime = RUNTIME_DIRS / bed

    @staticmethod
    def prepare_bed() -> list[str]:
        """The bed namespace's own links (run inside it)."""
        # A fixed MAC: a bridge otherwise takes its lowest port's, which changes when that
        # pod goes, and every namespace's ARP entry for the gateway goes stale for seconds.
        return ["link set lo up", "link add br0 address 02:00:c6:12:00:01 type bridge",
                f"addr add {GATEWAY}/{MANAGEMENT.prefixlen} dev br0", "link set br0 up"]

    def next_number(self) -> int:
        with self.lock:
            self.counter += 1
            if self.counter + 1 >= MANAGEMENT.num_addresses - 1:
                raise PodError("the bed's management network is full")
            return self.counter

    def node(self, name: str, env: dict[str, str]) -> dict:
        """The node's own namespace and runtime netns directory, made on first use."""
        with self.lock:
            if name in self.nodes:
                return self.nodes[name]
        number = self.next_number()
        netns, host_side = f"{self.bed}-node-{name}", f"e{number}"
        netns_dir = self.runtime / name
        netns_dir.mkdir(parents=True, exist_ok=True)
        for command in (["mount", "--bind", str(netns_dir), str(netns_dir)], ["mount", "--make-shared", str(netns_dir)]):
            subprocess.run(command, check=True, capture_output=True)
        batch([f"netns add {netns}", f"link add {host_side} type veth peer name eth0 netns {netns}",
               f"link set {host_side} master br0 up"])
        address = str(MANAGEMENT.network_address + 1 + number)
        batch(["link set lo up", f"addr add {address}/{MANAGEMENT.prefixlen} dev eth0", "link set eth0 up"], netns)
        node = {"name": name, "netns": netns, "netns_dir": str(netns_dir), "env": env, "address": address}
        with self.lock:
            self.nodes[name] = node
        return node

    def create(self, spec: dict, env: dict[str, str]) -> dict:
        """A pod: `{"name", "node", "namespace", "interfaces": [{"name", "eni" | "mac", "addresses"}]}`
        (namespace: the Kubernetes one, "default" when not given). Like a sandbox, it carries
        the pod's name, namespace and uid (CRI PodSandboxMetadata), and its eth0 address is
        the pod IP (on EKS, the VPC CNI's)."""
        name, node = spec["name"], spec["node"]
        runtime_dir = Path(self.node(node, env)["netns_dir"])
        number = self.next_number()
        with self.lock:
            if name in self.pods:
                raise PodError(f"pod {name} exists already")
            self.pods[name] = {"name": name, "node": node, "namespace": spec.get("namespace", "default"),
                               "uid": str(uuid.uuid4()), "netns": f"{self.bed}-{name}", "interfaces": [],
                               "pod_ip": str(MANAGEMENT.network_address + 1 + number), "links": [], "env": env,
                               "runtime_netns": str(runtime_dir / f"cni-{uuid.uuid4()}")}
        pod = self.pods[name]
        host_side = f"e{number}"
        outside = [f"netns add {pod['netns']}",
                   f"link add {host_side} type veth peer name eth0 netns {pod['netns']}",
                   f"link set {host_side} master br0 up"]
        inside = ["link set lo up", f"addr add {pod['pod_ip']}/{MANAGEMENT.prefixlen} dev eth0", "link set eth0 up"]
        pod["links"].append(host_side)
        try:
            for interface in spec.get("interfaces", []):
                more_outside, more_inside = self.interface_commands(pod, interface)
                outside += more_outside
                inside += more_inside
            batch(outside)
            batch(inside, pod["netns"])
            Path(pod["runtime_netns"]).touch()
            subprocess.run(["mount", "--bind", f"/var/run/netns/{pod['netns']}", pod["runtime_netns"]],
                           check=True, capture_output=True)
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
        number = self.next_number()
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
        """Deletes the pod's namespace (its interfaces go with it) and its links in the bed."""
        with self.lock:
            pod = self.pods.pop(name, None)
        if pod is None:
            raise PodError(f"no pod {name}")
        remove_namespaces([pod["netns"]], [pod["runtime_netns"]])
        # The veth peers of deleted macvlans stay in the bed namespace; -force goes on past
        # the ones that went with the pod.
        subprocess.run(["ip", "-force", "-batch", "-"], input="".join(f"link del {link}\n" for link in pod["links"]),
                       capture_output=True, text=True)

    def node_address(self, name: str) -> str | None:
        """The eth0 address of node `name`'s own namespace, None before it is made."""
        with self.lock:
            return self.nodes[name]["address"] if name in self.nodes else None

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
                                          "runtime_netns")} | {
            "netns_path": f"/var/run/netns/{pod['netns']}"}

    def cleanup(self) -> None:
        """Removes every pod and node namespace at once (a fleet of hundreds in about a
        second); their links in the bed go with the bed's namespace."""
        with self.lock:
            pods, self.pods = list(self.pods.values()), {}
        remove_namespaces([pod["netns"] for pod in pods], [pod["runtime_netns"] for pod in pods])
        nodes = list(self.nodes.values())
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


def address_command(verb: str, address: str, interface: str) -> str:
    # IPv6 without duplicate address detection: the address is usable at once, as Multus's is.
    return f"addr {verb} {address} dev {interface}" + (" nodad" if ":" in address and verb == "add" else "")


def enter_bed(bed: str, argv: list[str]) -> None:
    """Creates namespace `bed` with the bridge, then replaces this process with `argv` running
    inside it (nsenter changes only the network namespace, so `ip netns add` still works)."""
    batch([f"netns add {bed}"])
    try:
        batch(Pods.prepare_bed(), bed)
    except Exception:
        subprocess.run(["ip", "netns", "del", bed], capture_output=True)
        raise
    os.execvp("nsenter", ["nsenter", f"--net=/var/run/netns/{bed}", *argv])
