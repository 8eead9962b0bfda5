"""Python client of the emulated cluster (testenv/awsenv.py), for the demo and the pytest
suites; crates/testbed is the Rust one. Both only speak the control protocol: every piece
of the bed itself (EC2 rules, metadata, pods) lives in the stand-in."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
_BEDS = itertools.count()


class BedError(RuntimeError):
    """A control call the bed refused."""


@dataclass
class Place:
    """Somewhere programs run: a network namespace and the environment that reaches AWS."""

    netns: str
    env: dict

    def exec_argv(self, argv: list[str], env: dict | None = None) -> list[str]:
        """`argv` in the namespace, with only its AWS variables and `env`."""
        variables = {**self.env, **(env or {})}
        return ["ip", "netns", "exec", self.netns, "env", "-i", *(f"{k}={v}" for k, v in variables.items()), *argv]


@dataclass
class Pod(Place):
    """A pod of the bed: its Kubernetes namespace and uid, its pod IP (eth0's address, IPv4 or
    IPv6) and the host side of its eth0 in its node's namespace (`eni` + a hash, as the VPC
    CNI names it)."""

    name: str = ""
    node: str = ""
    namespace: str = "default"
    uid: str = ""
    pod_ip: str = ""
    host_veth: str = ""


@dataclass
class Node(Place):
    """A node's own network namespace (its host network), its eth0 addresses (where a node
    agent listens, the pods' status.hostIP: IPv4, and IPv6 for IPv6 pods) and runtime netns
    directory."""

    name: str = ""
    netns_dir: str = ""
    address: str = ""
    address6: str = ""


class Bed:
    """One emulated cluster. `pods=True` (root) gives it a namespace and pods."""

    def __init__(self, topology: str | dict = "how-to", *, pods: bool = True, python: str | None = None):
        python = python or os.environ.get("IPMGR_TESTENV_PYTHON", sys.executable)
        self.name = f"ipmgr-{os.getpid() % 0xfffff:x}{next(_BEDS):x}"
        argv = [python, "-m", "testenv.awsenv", "--control", "stdio"] + (["--bed", self.name] if pods else [])
        self.process = subprocess.Popen(argv, cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        stderr=subprocess.DEVNULL, text=True)
        first = self.process.stdout.readline()
        if not first:
            self.process.wait()
            raise BedError(f"the stand-in did not start ({' '.join(argv)}); run it by hand to see why")
        self.ec2_endpoint = json.loads(first)["ec2_endpoint"]
        self.topology = self.control("POST", "topology", {"file": topology} if isinstance(topology, str) else topology)

    def __enter__(self) -> Bed:
        return self

    def __exit__(self, *_) -> None:
        self.close()

    def close(self) -> None:
        """Ends the stand-in, which removes its namespaces."""
        if self.process.poll() is None:
            self.process.stdin.close()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def control(self, method: str, path: str, body: dict | None = None) -> dict:
        self.process.stdin.write(json.dumps({"method": method, "path": path, "body": body or {}}) + "\n")
        self.process.stdin.flush()
        answer = json.loads(self.process.stdout.readline())
        if answer["status"] != 200:
            raise BedError(f"{method} {path}: {answer['body'].get('error', answer['body'])}")
        return answer["body"]

    def eni(self, node: str, name: str) -> dict:
        """ENI `name` (`eth1`...) of `node`, as the topology built it."""
        return next(eni for eni in self.topology["nodes"][node]["enis"] if eni["name"] == name)

    def ipv6_prefix(self, subnet: str = "multus1") -> str:
        """The IPv6 prefix of `subnet`, e.g. `2400:6500:1:100::`."""
        return self.topology["subnets"][subnet]["ipv6_cidr"].split("/")[0]

    def addresses(self, eni_id: str) -> list[str]:
        answer = self.control("GET", f"eni/{eni_id}")
        return answer["ipv4"] + answer["ipv6"]

    def wait_held(self, eni_id: str, address: str, held: bool = True, limit: float = 5.0) -> float:
        """Seconds until `eni_id` holds `address` (or no longer does)."""
        started = time.monotonic()
        while time.monotonic() - started < limit:
            if (address in self.addresses(eni_id)) == held:
                return time.monotonic() - started
            time.sleep(0.01)
        raise AssertionError(f"{address} {'did not reach' if held else 'stayed on'} {eni_id} within {limit} s")

    def pod(self, node: str, name: str, interfaces: list[dict], *, namespace: str = "default",
            labels: dict | None = None, annotations: dict | None = None, network_status: bool = True,
            ipv6: bool = False, pod_ip: str | None = None) -> Pod:
        """A pod on `node` with `interfaces`: `{"name", "eni": "eth1" | "mac", "addresses",
        "network"}`. Its Pod object carries `labels`, and the network-status annotation Multus
        writes (unless `network_status` is false) with `annotations` merged over it. Its pod
        IP is IPv6 with `ipv6` (as on an IPv6 cluster), `pod_ip` when given (one no live pod
        holds: a kept object's, say)."""
        request = {"name": name, "node": node, "namespace": namespace, "labels": labels or {},
                   "annotations": annotations or {}, "network_status": network_status, "interfaces": interfaces,
                   "ipv6": ipv6}
        answer = self.control("POST", "pods", request | ({"pod_ip": pod_ip} if pod_ip else {}))
        return Pod(answer["netns"], answer["env"], name=name, node=node, namespace=answer["namespace"],
                   uid=answer["uid"], pod_ip=answer["pod_ip"], host_veth=answer["host_veth"])

    def node(self, name: str) -> Node:
        """The host network of node `name`, where a node agent runs."""
        answer = self.control("GET", f"nodes/{name}")
        return Node(answer["netns"], answer["env"], name=name, netns_dir=answer["netns_dir"],
                    address=answer["address"], address6=answer["address6"])

    @property
    def kube_endpoint(self) -> str:
        """The bed's Kubernetes API server (http://gateway:port), reachable from its namespaces."""
        return self.topology["kube_endpoint"]

    @property
    def kubeconfig(self) -> str:
        """The path of a kubeconfig for the bed's API server (for KUBECONFIG)."""
        return self.topology["kubeconfig"]

    def annotate(self, pod: Pod, values: dict | None = None, remove: list | None = None) -> dict:
        """Sets `values` and removes the annotations named in `remove` on the pod's object;
        the object after the change."""
        return self.control("POST", f"pods/{pod.name}/annotations", {"set": values or {}, "remove": remove or []})

    def pods_reach_metadata(self, reach: bool) -> None:
        """Whether pods reach their node's metadata (false: only the node's own namespace does)."""
        self.control("POST", "config", {"pods_reach_metadata": reach})

    def metadata_requests(self) -> dict[str, int]:
        """Metadata requests by source address since the start (refused connections included)."""
        return self.control("GET", "metadata_requests")["by_source"]

    def metadata_refused(self) -> dict[str, int]:
        """Metadata connections refused, by source address, since the start."""
        return self.control("GET", "metadata_refused")["by_source"]

    def add_address(self, pod: Pod, interface: str, address: str) -> None:
        self.control("POST", f"pods/{pod.name}/addresses", {"interface": interface, "add": [address]})

    def remove_address(self, pod: Pod, interface: str, address: str) -> None:
        self.control("POST", f"pods/{pod.name}/addresses", {"interface": interface, "remove": [address]})

    def delete_pod(self, pod: Pod, keep_object: bool = False) -> None:
        """Deletes the pod's sandbox and its object (MODIFIED with a deletionTimestamp, then
        DELETED); with `keep_object` the object stays as it was (a node whose status updates
        lag), for `delete_pod_object` later."""
        self.control("DELETE", f"pods/{pod.name}", {"keep_object": keep_object})

    def delete_pod_object(self, pod: Pod) -> None:
        """Deletes the object `delete_pod(pod, keep_object=True)` kept."""
        self.control("DELETE", f"pods/{pod.name}")

    def create_namespace(self, name: str, labels: dict | None = None, annotations: dict | None = None) -> dict:
        """Namespace `name` (ADDED), as an admin creates it; the object."""
        return self.control("POST", "namespaces", {"name": name, "labels": labels or {},
                                                   "annotations": annotations or {}})

    def annotate_namespace(self, name: str, values: dict | None = None, remove: list | None = None) -> dict:
        """Sets `values` and removes the annotations named in `remove` on Namespace `name`
        (MODIFIED, none when nothing changes); the object after it."""
        return self.control("POST", f"namespaces/{name}/annotations", {"set": values or {}, "remove": remove or []})

    def stall_watches(self, seconds: float) -> None:
        """For `seconds`, every watch of the API server, open or new, delivers nothing (no
        event, no bookmark, not its end), then what it held, in order; lists are answered."""
        self.control("POST", "kube/faults", {"stall_seconds": seconds})

    def kube_unavailable(self, seconds: float) -> None:
        """For `seconds`, the API server answers every new request with 503
        ServiceUnavailable (open watches go on)."""
        self.control("POST", "kube/faults", {"unavailable_seconds": seconds})
