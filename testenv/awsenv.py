#!/usr/bin/env python3
"""The emulated cluster multus-ipmgr is tested, demonstrated and benchmarked on.

One process serves:

* EC2 (testenv/ec2.py): moto behind our layer of the EC2 rules moto lacks;
* IMDSv2 (testenv/imds.py), one listener per node, answering from the same state;
* with `--bed`, the VPC's resolver (testenv/dns.py) on the bed's gateway: pods whose DNS
  server it is reach the stand-in by EC2's real name, `ec2.<region>.amazonaws.com`;
* with `--bed NAME` (root): nodes and pods as network namespaces (testenv/pods.py), each pod
  networked as the VPC CNI does it (a veth into its node's namespace, its pod IP routed by
  the bed to its node), the stand-in itself running in namespace NAME;
* with `--bed`, a minimal Kubernetes API server (testenv/kube.py) on the bed's gateway, its
  own port, plain HTTP: the bed's pods as `v1` Pods, with the Multus network-status
  annotation, their namespaces as `v1` Namespaces, the topology's nodes as `v1` Nodes (list,
  get, watch; update and patch, their status through nodes/status, with a kubelet that
  follows status.capacity); `v1` Secrets, `admissionregistration.k8s.io/v1`
  MutatingWebhookConfigurations and `k8s.cni.cncf.io/v1` NetworkAttachmentDefinitions that
  clients create, update, patch and delete (and Namespaces they create), with the real
  server's write rules; RBAC for bearer tokens registered with kube/rbac; a kubeconfig for
  it, written under /run/ipmgr-testenv/NAME/ (`python3 -m testenv.kube` runs that server
  alone, without root);
* with `--bed`, on request, an HTTP proxy and EC2 over HTTPS behind it (testenv/proxy.py);
* a JSON control API, under /_ctl/ on the EC2 port or one object a line on standard input
  (`--control stdio`; end of input stops the bed). testenv/client.py is its Python client;
  crates/testbed its Rust one.

Run: python3 -m testenv.awsenv [--bed NAME] [--control stdio]. The first line on standard
output is JSON with "ec2_endpoint"; the process serves until SIGTERM, SIGINT or the end of
its control input, and removes every namespace it made.

Control calls (method, path, body -> answer):

    POST topology         a topology description (testenv/topology.py) or {"file": name}
                          -> the VPC, subnets and nodes with ENI ids, MACs and IMDS endpoints;
                          with --bed also "resolver" (the pods' DNS server),
                          "ec2_endpoint_by_name" (the EC2 endpoint through that resolver),
                          "kube_endpoint" (the API server, http://gateway:port) and
                          "kubeconfig" (the path of a kubeconfig for it, no credentials)
    POST pods             {"name", "node", "namespace" ("default"), "labels", "annotations",
                           "network_status" (true), "ipv6" (false), "pod_ip",
                           "interfaces": [{"name", "eni" | "mac", "addresses", "network"
                           ("multus-net")}]}
                          -> the pod: netns, namespace, uid, pod_ip (eth0's address: the next
                          free one of 198.19.0.0/16, or of 2001:2:0:1::/64 with "ipv6"; or
                          "pod_ip", which no live pod may hold), host_veth (eth0's peer in the
                          node's namespace), interface MACs, the environment that reaches AWS.
                          Its Namespace is made first when new (ADDED). Its Pod object (ADDED;
                          status.hostIP the node's address of the pod IP's family) carries the
                          network-status Multus writes at CNI ADD (eth0 on "aws-cni", then
                          each interface as "<namespace>/<network>" with its addresses and
                          MAC) unless "network_status" is false; "annotations" are merged over it
    POST pods/NAME/addresses  {"interface", "add": [...], "remove": [...]} (the Pod object and
                          its network-status stay as they are)
    POST pods/NAME/interfaces {"name", "eni" | "mac", "addresses"}
    POST pods/NAME/annotations {"set": {name: value}, "remove": [name]} -> the Pod object
                          (MODIFIED, unless nothing changed)
    DELETE pods/NAME      {"keep_object" (false)}: the Pod object gets a deletionTimestamp
                          (MODIFIED), the sandbox (namespace, veth, the bed's route) goes, then
                          the object (DELETED). With "keep_object" only the sandbox goes and the
                          object stays as it was (a node whose status updates lag); a DELETE of
                          such a pod later deletes its object (MODIFIED, then DELETED)
    GET pods              every pod with a sandbox, as POST pods answers it
    POST nodes/NAME/enis  an ENI of a node description (testenv/topology.py; "name" default
                          eth<device>, "device" default the lowest free one of "card" 0):
                          a new ENI attached to the running node, its link in the node's
                          namespace; refused as a description is (a name the node has, more
                          ENIs than its type takes) or at an occupied device -> the ENI
    DELETE nodes/NAME/enis/ENI_NAME  detaches the ENI (it keeps its addresses, attached to
                          nothing) and removes its link -> the ENI as it was
    GET nodes/NAME        -> the node's own namespace (host network), its eth0 "address" and
                          "address6" (the pods' status.hostIP, where a node agent listens), its
                          runtime netns directory (bind mounts of its pods' namespaces) and
                          environment
    POST namespaces       {"name", "labels", "annotations"} -> the Namespace (ADDED), as an
                          admin makes it
    POST namespaces/NAME/annotations {"set": {name: value}, "remove": [name]} -> the Namespace
                          (MODIFIED, unless nothing changed)
    POST kube/faults      {"stall_seconds", "unavailable_seconds", "conflicts": {"kind", "count"}}:
                          for that long every watch, open or new, delivers nothing (no event,
                          no bookmark, not its end), then what it held, in order, while lists
                          are answered; or every new API request is answered 503
                          ServiceUnavailable (open watches go on); or the next `count` (1)
                          writes of `kind` (Secret, MutatingWebhookConfiguration, Namespace,
                          Node, NetworkAttachmentDefinition) are answered 409 Conflict (0
                          clears it). The API server takes the
                          same body at POST /_testenv/faults
    GET kube/writes       {"writes": [{"time", "verb", "kind", "namespace", "name", "subresource",
                          "user", "resourceVersion", "code"}]}: every write request to the API
                          server, oldest first, with its outcome (as its GET /_testenv/writes)
    POST kube/nodes/NAME/reregister  the kubelet registers Node NAME anew: DELETED, then ADDED
                          with a new uid and only what the kubelet reports (no extended
                          resources, no labels or annotations others added) -> the Node
    POST kube/rbac        {"user", "rules": [PolicyRule (+ "namespace" for a Role's)], "token"}
                          -> {"token", "user", "kubeconfig"}: requests bearing the token are the
                          user's, authorized by RBAC's rules (403 Forbidden otherwise)
    GET kube/denied       {"denied": [{"time", "user", "verb", "path", "apiGroup", "resource",
                          "subresource", "namespace", "name", "message", ...}]}: RBAC's denials
    POST kube/request     {"method", "path", "body", "content_type", "token"} -> {"status",
                          "body"}: one API request (not a watch), as a client in the bed makes it
    POST kube/config      {"kubelet_sync_seconds" (0), "event_history", "bookmark_seconds"}
    POST kube/nodes       {"name", "instance_type", ...}: one more Node (no host network)
                          The API server takes the same calls under /_testenv/ (testenv/kube.py)
    GET eni/ID            -> {"ipv4": [...], "ipv6": [...]} as EC2 holds them now
    POST assign           {"eni", "ipv4", "ipv6"}: put addresses on an ENI directly
    POST faults           {"action" | "*", "code", "status", "message", "count" | "seconds",
                           "delay_ms", "addresses"}: the next `count` calls (1), or every call
                          for `seconds`; with `addresses`, only the calls naming one of them
    GET calls             per-action counts (throttled calls included); GET throttled: the
                          throttled ones; GET calls/log ([action, unix time, ENI or ""] per call);
                          POST calls/reset (all three)
    GET released          {"released": [[unix time, ENI, address], ...]}: every address an
                          unassign call took off an ENI, since the start
    GET metadata_requests {"by_source": {address: n}}: metadata requests by source address
                          since the start (each answered request, each refused connection)
    GET metadata_refused  {"refused": n, "by_source": {address: n}}: connections metadata
                          closed unanswered because pods do not reach it
    POST proxy            (--bed) starts, once, the proxy and EC2 over HTTPS -> "proxy_url",
                          "ec2_https_endpoint" (by the gateway's address), "ec2_https_endpoint_by_name"
                          (a name only the proxy resolves), "ca_file" (the certificate's CA, PEM)
    GET proxy             {"connect": {host:port: n}, "forward": {host:port: n}}: what the proxy was
                          asked, CONNECTs and absolute-form requests, by target
    POST config           {"eni_ipv4_limit", "eni_ipv6_limit" (addresses and prefixes every ENI
                           may hold, primary included, instead of its instance type's; null:
                           each ENI its type's again, testenv/ec2.py), "imds_delay_ms", "imds_down_ms",
                           "buckets": {name | "*": [size, refill per second] | null},
                           "pods_reach_metadata" (true; false: each node's metadata answers
                           only its own namespace, as with hop limit 1 on EKS; --bed),
                           "kube_event_history" (1000 events a watch can resume from),
                           "kube_bookmark_seconds" (60)}
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from testenv.pods import GATEWAY, RUNTIME_DIRS, PodError, Pods, enter_bed

if __name__ == "__main__" and "--bed" in sys.argv and "--entered" not in sys.argv:
    # Re-executed inside the bed's namespace before the slow imports below (moto: ~1 s).
    enter_bed(sys.argv[sys.argv.index("--bed") + 1], [sys.executable, "-m", "testenv.awsenv", *sys.argv[1:], "--entered"])

from moto.moto_server.werkzeug_app import create_backend_app  # noqa: E402
from werkzeug.serving import WSGIRequestHandler, make_server  # noqa: E402

from testenv import dns, imds, kube, proxy, topology  # noqa: E402
from testenv.ec2 import Ec2Error, Ec2Layer, State  # noqa: E402


class Bed:
    """The state of one emulated cluster and the control calls on it."""

    def __init__(self, state: State, host: str, bed: str | None):
        self.state, self.host, self.bed = state, host, bed
        self.topology: dict = {}
        self.builder: topology.Builder | None = None  # the topology's, for ENIs attached later
        # With a bed: the resolver's address, the EC2 endpoint by name, the Kubernetes API
        # server's endpoint and kubeconfig (main sets them).
        self.names: dict[str, str] = {}
        self.pods = Pods(bed, self.eni_mac) if bed else None
        self.kube = kube.Cluster() if bed else None
        self.kubeconfig = RUNTIME_DIRS / bed / "kubeconfig" if bed else None
        self.pods_reach_metadata = True
        self.proxy: tuple[proxy.Proxy, dict] | None = None

    def eni_mac(self, node: str, eni_name: str) -> str:
        try:
            enis = self.topology["nodes"][node]["enis"]
        except KeyError:
            raise PodError(f"no node {node} in the topology") from None
        for eni in enis:
            if eni["name"] == eni_name:
                return eni["mac"]
        raise PodError(f"node {node} has no ENI named {eni_name}")

    def build(self, request: dict) -> dict:
        if self.topology:
            raise PodError("the bed has a topology already")
        description = topology.load(request["file"]) if "file" in request else request
        self.builder = topology.Builder(self.state)
        self.state.building = True  # setup is not the account's traffic: no throttling
        try:
            built = self.builder.build(description)
        finally:
            self.state.building = False
        for name, node in built["nodes"].items():
            server = imds.start(self.state, self.host, node["instance_id"],
                                lambda source, name=name: self.metadata_admits(name, source))
            node["imds_endpoint"] = f"http://{self.host}:{server.server_address[1]}"
        built["ec2_endpoint"] = self.state.endpoint
        built |= self.names
        if self.pods:
            self.pods.plan_nodes(built["nodes"])
            for name, node in built["nodes"].items():
                addresses = self.pods.node_address(name), self.pods.node_address(name, 6)
                self.kube.add("Node", name, kube.node_object(name, node, self.state.region, *addresses))
        with self.state.lock:  # count only what the code under test calls
            self.state.calls.clear()
            self.state.call_log.clear()
        self.topology = built
        return built

    def metadata_admits(self, node: str, source: str) -> bool:
        """Whether `node`'s metadata answers a request from `source`: any while pods reach
        metadata, else only the node's own namespace (its host network)."""
        return self.pods_reach_metadata or (self.pods is not None and self.pods.node_address(node) == source)

    def pod_environment(self, node: str) -> dict[str, str]:
        """What a process in a pod of `node` needs to reach AWS: the standard variables only
        (credentials come from the node role through instance metadata)."""
        if node not in self.topology.get("nodes", {}):
            raise PodError(f"no node {node} in the topology")
        return {"AWS_EC2_METADATA_SERVICE_ENDPOINT": self.topology["nodes"][node]["imds_endpoint"],
                "AWS_ENDPOINT_URL_EC2": self.state.endpoint}

    def require_pods(self) -> Pods:
        if self.pods is None:
            raise PodError("pods need a bed namespace: start with --bed NAME (as root)")
        return self.pods

    def require_kube(self) -> kube.Cluster:
        self.require_pods()
        return self.kube

    def control(self, method: str, path: str, request: dict) -> tuple[int, dict]:
        """One control call: (status, JSON answer)."""
        state = self.state
        try:
            if method == "POST" and path == "topology":
                return 200, self.build(request)
            if path == "pods" or path.startswith("pods/"):
                return 200, self.pod_call(method, path.split("/")[1:], request)
            if path.startswith("nodes/") and "/enis" in path:
                return 200, self.eni_call(method, path.split("/")[1:], request)
            if method == "GET" and path.startswith("nodes/"):
                name = path[len("nodes/"):]
                node = self.require_pods().node(name, self.pod_environment(name))
                return 200, {key: node[key] for key in ("name", "netns", "netns_dir", "env", "address", "address6")}
            if path == "namespaces" or path.startswith("namespaces/"):
                return 200, self.namespace_call(method, path.split("/")[1:], request)
            if path.startswith("kube/"):  # the API server's test environment calls (kube.control)
                return kube.control(self.require_kube(), method, path[len("kube/"):], request)
            if method == "GET" and path == "metadata_requests":
                with state.lock:
                    return 200, {"by_source": dict(state.metadata_requests)}
            if method == "GET" and path == "metadata_refused":
                with state.lock:
                    return 200, {"refused": sum(state.metadata_refused.values()),
                                 "by_source": dict(state.metadata_refused)}
            if path == "proxy":
                return 200, self.proxy_call(method)
            if method == "POST" and path == "faults":
                fault = dict(request, count=request.get("count", 1))
                if "seconds" in request:  # every call for that long, however many
                    fault["until"] = time.monotonic() + request["seconds"]
                with state.lock:
                    state.faults.setdefault(request["action"], []).append(fault)
                return 200, {}
            if method == "GET" and path == "calls":
                with state.lock:
                    return 200, dict(state.calls)
            if method == "GET" and path == "throttled":
                with state.lock:
                    return 200, dict(state.throttled)
            if method == "GET" and path == "calls/log":
                with state.lock:
                    return 200, {"calls": [list(entry) for entry in state.call_log]}
            if method == "GET" and path == "released":
                with state.lock:
                    return 200, {"released": [list(entry) for entry in state.released]}
            if method == "POST" and path == "calls/reset":
                with state.lock:
                    state.calls.clear()
                    state.call_log.clear()
                    state.throttled.clear()
                return 200, {}
            if method == "POST" and path == "config":
                limits = {key: request[key] for key in ("eni_ipv4_limit", "eni_ipv6_limit") if key in request}
                for key, value in limits.items():  # a count for every ENI, or null: each its type's
                    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
                        raise PodError(f"{key} must be a count (0 or more) or null, not {value!r}")
                if "pods_reach_metadata" in request:
                    self.require_pods()  # without a bed there is no node address to admit
                    self.pods_reach_metadata = bool(request["pods_reach_metadata"])
                if "kube_event_history" in request or "kube_bookmark_seconds" in request:
                    self.require_kube().configure(request.get("kube_event_history"),
                                                  request.get("kube_bookmark_seconds"))
                with state.lock:
                    for key, value in limits.items():
                        setattr(state, key, value)
                    state.imds_delay = request.get("imds_delay_ms", state.imds_delay * 1000) / 1000
                    if "imds_down_ms" in request:
                        state.imds_down_until = time.monotonic() + request["imds_down_ms"] / 1000
                state.set_buckets(request.get("buckets", {}))
                return 200, {}
            if method == "GET" and path.startswith("eni/"):
                return 200, state.addresses(path[len("eni/"):])
            if method == "POST" and path == "assign":
                state.force_assign(request["eni"], request.get("ipv4", []), request.get("ipv6", []))
                return 200, {}
            return 404, {"error": f"unknown control call {method} {path}"}
        except (PodError, Ec2Error) as error:
            return 400, {"error": str(error)}
        except Exception as error:  # the test sees the reason
            return 500, {"error": repr(error)}

    def eni_call(self, method: str, parts: list[str], request: dict) -> dict:
        """An operator attaching an ENI to a running node (POST nodes/NAME/enis) or detaching
        one (DELETE nodes/NAME/enis/ENI_NAME): EC2 and the node's metadata change, and so does
        the node's link standing for the ENI."""
        node_name = parts[0]
        node = self.topology.get("nodes", {}).get(node_name)
        if node is None or self.builder is None:
            raise PodError(f"no node {node_name} in the topology")
        self.state.building = True  # an operator's calls are not the account's traffic
        try:
            if method == "POST" and parts[1:] == ["enis"]:
                eni = self.builder.attach(node_name, node, request)
                node["enis"].append(eni)
                if self.pods:
                    self.pods.attach_link(node_name, eni["interface"], eni["mac"])
                return eni
            if method == "DELETE" and len(parts) == 3 and parts[1] == "enis":
                position, eni = next(((position, eni) for position, eni in enumerate(node["enis"])
                                      if eni["name"] == parts[2]), (None, None))
                if eni is None:
                    raise PodError(f"node {node_name} has no ENI named {parts[2]}")
                if position == 0:
                    raise PodError(f"ENI {parts[2]} is node {node_name}'s primary ENI, which cannot be "
                                   "detached (OperationNotPermitted)")
                self.builder.detach(eni)
                node["enis"].remove(eni)
                if self.pods:
                    self.pods.detach_link(node_name, eni["interface"])
                return eni
        finally:
            self.state.building = False
        raise PodError(f"unknown ENI call {method} nodes/{'/'.join(parts)}")

    def proxy_call(self, method: str) -> dict:
        """POST: the proxy's URLs (started on first use); GET: what it was asked."""
        self.require_pods()  # the proxy's point: pods that reach EC2 through it alone
        if self.proxy is None:
            ec2_port = int(self.state.endpoint.rsplit(":", 1)[1])
            self.proxy = proxy.start(self.host, self.state.region, ec2_port, RUNTIME_DIRS / self.bed / "aws-ca.pem")
        return self.proxy[1] if method == "POST" else self.proxy[0].counts()

    def pod_call(self, method: str, parts: list[str], request: dict) -> dict:
        pods = self.require_pods()
        if parts == [] and method == "GET":
            return {"pods": pods.list()}
        if parts == [] and method == "POST":
            return self.create_pod(request)
        if len(parts) == 1 and method == "DELETE":
            return self.delete_pod(parts[0], bool(request.get("keep_object")))
        if len(parts) == 2 and method == "POST" and parts[1] == "annotations":
            return self.kube_change(self.kube.annotate, "Pod", parts[0], request)
        if len(parts) == 2 and method == "POST" and parts[1] == "addresses":
            return pods.change_addresses(parts[0], request)
        if len(parts) == 2 and method == "POST" and parts[1] == "interfaces":
            return pods.add_interface(parts[0], request)
        raise PodError(f"unknown pod call {method} pods/{'/'.join(parts)}")

    def create_pod(self, request: dict) -> dict:
        """The pod's namespace (its Namespace object first, when new), then its Pod object (ADDED)."""
        pods = self.require_pods()
        if self.kube.has("Pod", request["name"]):  # a kept object, or a live pod
            raise PodError(f"pod {request['name']} exists already")
        pod = pods.create(request, self.pod_environment(request["node"]))
        try:
            self.kube.ensure_namespace(pod["namespace"])
            host_ip = pods.node_address(pod["node"], 6 if ":" in pod["pod_ip"] else 4)
            self.kube.add("Pod", pod["name"], kube.pod_object(request, pod, host_ip))
        except ValueError as error:
            pods.delete(pod["name"])
            raise PodError(str(error)) from None
        return pod

    def delete_pod(self, name: str, keep_object: bool) -> dict:
        """Deletes the pod's sandbox, and its object as a graceful delete shows it, unless
        `keep_object` (a node whose status updates lag: the object stays as it was). A pod
        whose object was kept has only that left to delete."""
        pods = self.require_pods()
        sandbox = pods.exists(name)
        if not self.kube.has("Pod", name):
            raise PodError(f"no pod {name}")
        if keep_object and not sandbox:
            raise PodError(f"pod {name} has no sandbox left, only its object")
        if not keep_object:
            self.kube.start_deletion("Pod", name)
        if sandbox:
            pods.delete(name)
        if not keep_object:
            self.kube.delete("Pod", name)
        return {}

    def namespace_call(self, method: str, parts: list[str], request: dict) -> dict:
        """`POST namespaces` makes a Namespace; `POST namespaces/NAME/annotations` changes one."""
        cluster = self.require_kube()
        if parts == [] and method == "POST":
            try:
                return cluster.add("Namespace", request["name"], kube.namespace_object(
                    request["name"], kube.string_map(request, "labels"), kube.string_map(request, "annotations")))
            except ValueError as error:
                raise PodError(str(error)) from None
        if len(parts) == 2 and method == "POST" and parts[1] == "annotations":
            return self.kube_change(cluster.annotate, "Namespace", parts[0], request)
        raise PodError(f"unknown namespace call {method} namespaces/{'/'.join(parts)}")

    @staticmethod
    def kube_change(change, kind: str, key: str, request: dict) -> dict:
        """`change(kind, key, request)` on an object, its refusals as the bed's."""
        try:
            return change(kind, key, request)
        except KeyError:
            raise PodError(f"no {kind.lower()} {key}") from None
        except ValueError as error:
            raise PodError(str(error)) from None

    def close(self) -> None:
        """Ends the API server's watches, removes the kubeconfig, the pods and the bed's
        namespace; the listeners end with the process."""
        if self.pods:
            self.kube.close()
            self.kubeconfig.unlink(missing_ok=True)
            if self.proxy:
                Path(self.proxy[1]["ca_file"]).unlink(missing_ok=True)
            self.pods.cleanup()
            subprocess.run(["ip", "netns", "del", self.bed], capture_output=True)


def control_http(bed: Bed, environ):
    length = int(environ.get("CONTENT_LENGTH") or 0)
    request = json.loads(environ["wsgi.input"].read(length) or b"{}") if length else {}
    status, answer = bed.control(environ["REQUEST_METHOD"], environ["PATH_INFO"][len("/_ctl/"):], request)
    return status, [("Content-Type", "application/json")], json.dumps(answer).encode()


def control_stdio(bed: Bed, stop: threading.Event) -> None:
    """Control over standard input and output, one JSON object a line each way:
    {"method", "path", "body"} in, {"status", "body"} out. End of input stops the server."""
    for line in sys.stdin:
        if not line.strip():
            continue
        request = json.loads(line)
        status, answer = bed.control(request.get("method", "GET"), request["path"], request.get("body") or {})
        print(json.dumps({"status": status, "body": answer}), flush=True)
    stop.set()


class NoDelayHandler(WSGIRequestHandler):
    """werkzeug's handler with TCP_NODELAY, for the same reason as the IMDS handler."""

    disable_nagle_algorithm = True

    def log_request(self, *args, **kwargs):  # quiet: tests read the call log instead
        pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1", help="listen address (with --bed: the bed's gateway)")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--region", default="us-east-2")
    parser.add_argument("--control", choices=["http", "stdio"], default="http",
                        help="stdio: also take control calls on standard input (stops at its end)")
    parser.add_argument("--bed", help="run in a new network namespace of this name and host pods (root)")
    parser.add_argument("--entered", action="store_true", help=argparse.SUPPRESS)
    arguments = parser.parse_args()
    host = str(GATEWAY) if arguments.bed else arguments.host

    state = State(arguments.region)
    bed = Bed(state, host, arguments.bed)
    app = Ec2Layer(create_backend_app("ec2"), state, lambda environ: control_http(bed, environ))
    server = make_server(host, arguments.port, app, threaded=True, request_handler=NoDelayHandler)
    state.endpoint = f"http://{host}:{server.server_port}"
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    threading.Thread(target=server.serve_forever, daemon=True).start()
    if arguments.bed:
        ec2_name = f"ec2.{state.region}.amazonaws.com"
        dns.start(host, {ec2_name: host})
        kube_endpoint = f"http://{host}:{kube.start(host, bed.kube).server_port}"
        kube.write_kubeconfig(bed.kubeconfig, kube_endpoint, arguments.bed)
        bed.names = {"resolver": host, "ec2_endpoint_by_name": f"http://{ec2_name}:{server.server_port}",
                     "kube_endpoint": kube_endpoint, "kubeconfig": str(bed.kubeconfig)}
    print(json.dumps({"ec2_endpoint": state.endpoint, "region": state.region}), flush=True)
    if arguments.control == "stdio":
        threading.Thread(target=control_stdio, args=(bed, stop), daemon=True).start()
    try:
        stop.wait()
    finally:
        bed.close()
    sys.stdout.flush()
    os._exit(0)  # skips tearing down moto's module graph (most of a second)


if __name__ == "__main__":
    sys.exit(main())
