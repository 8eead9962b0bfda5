"""The bed's Kubernetes API server (testenv/kube.py), asked from a node's namespace as a node
agent asks it: pods, namespaces and nodes, its faults, and metadata closed to pods (these need
root, skipped otherwise); and the same server alone (`python3 -m testenv.kube`, no root) as a
webhook writes to it: Secrets and MutatingWebhookConfigurations with the real server's write
rules, the conflicts fault and the write log."""

from __future__ import annotations

import base64
import http.client
import json
import os
import queue
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from urllib.parse import quote, urlsplit

import pytest
import yaml

from testenv import kube
from testenv.client import Bed, BedError, Node

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root: pods are network namespaces")

NETWORK_STATUS = "k8s.v1.cni.cncf.io/network-status"
# One HTTP/1.1 GET: prints the status, then the body as it arrives (a watch as it streams);
# exits 3 when a chunked body breaks off without its last, empty chunk.
FETCH = """
import socket, sys
from urllib.parse import urlsplit
url = urlsplit(sys.argv[1])
connection = socket.create_connection((url.hostname, url.port), timeout=60)
connection.sendall(f"GET {url.path}?{url.query} HTTP/1.1\\r\\nHost: {url.netloc}\\r\\n\\r\\n".encode())
reader = connection.makefile("rb")
print(reader.readline().split()[1].decode(), flush=True)
headers = dict(line.decode().lower().split(": ", 1) for line in iter(lambda: reader.readline().strip(), b""))
if "content-length" in headers:
    sys.stdout.write(reader.read(int(headers["content-length"])).decode())
    sys.exit(0)
while size_line := reader.readline():
    data = reader.read(int(size_line, 16))
    reader.readline()
    if not data:
        sys.exit(0)
    sys.stdout.write(data.decode())
    sys.stdout.flush()
sys.exit(3)
"""


@pytest.fixture(scope="module")
def bed():
    if os.geteuid() != 0:
        pytest.skip("needs root: pods are network namespaces")
    with Bed("how-to") as bed:
        yield bed


@pytest.fixture(scope="module")
def node1(bed) -> Node:
    return bed.node("node1")


def get(bed: Bed, node: Node, path: str) -> tuple[int, dict]:
    """GET `path` of the API server from `node`'s namespace: status and JSON body."""
    result = subprocess.run(node.exec_argv([sys.executable, "-c", FETCH, bed.kube_endpoint + path]),
                            capture_output=True, text=True, timeout=60)
    status, _, body = result.stdout.partition("\n")
    assert status, result.stderr
    return int(status), json.loads(body)


class Watch:
    """A watch request (of pods, or of the collection at `path`) streaming in `node`'s
    namespace; its events one by one."""

    def __init__(self, bed: Bed, node: Node, query: str, path: str = "/api/v1/pods"):
        argv = node.exec_argv([sys.executable, "-c", FETCH, f"{bed.kube_endpoint}{path}?watch=1&{query}"])
        self.process = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
        self.lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self.read, daemon=True).start()
        assert self.lines.get(timeout=10) == "200"

    def read(self) -> None:
        for line in self.process.stdout:
            self.lines.put(line.strip())
        self.lines.put(None)

    def next(self, limit: float = 5.0) -> dict:
        line = self.lines.get(timeout=limit)
        assert line is not None, "the stream ended"
        return json.loads(line)

    def ended(self, limit: float) -> bool:
        """Whether the stream ends within `limit` seconds, with nothing more in it, and cleanly."""
        line = self.lines.get(timeout=limit)
        assert line is None, f"one more event: {line}"
        return self.process.wait(timeout=5) == 0

    def close(self) -> None:
        self.process.kill()
        self.process.wait()


@pytest.fixture
def watches():
    opened: list[Watch] = []
    yield opened
    for watch in opened:
        watch.close()


def selector(text: str) -> str:
    return quote(text, safe="")


def names(items: list[dict]) -> list[str]:
    return [item["metadata"]["name"] for item in items]


def test_a_list_selects_pods_by_field_and_shows_their_addresses(bed, node1):
    here = bed.pod("node1", "listed-here", [], namespace="multus", labels={"app": "web"})
    bed.pod("node2", "listed-there", [], namespace="multus")
    status, listing = get(bed, node1, f"/api/v1/pods?fieldSelector={selector('spec.nodeName=node1')}&limit=500")
    assert status == 200 and listing["kind"] == "PodList" and listing["apiVersion"] == "v1"
    assert int(listing["metadata"]["resourceVersion"]) > 1
    assert "listed-here" in names(listing["items"]) and "listed-there" not in names(listing["items"])
    assert {item["spec"]["nodeName"] for item in listing["items"]} == {"node1"}
    item = next(item for item in listing["items"] if item["metadata"]["name"] == "listed-here")
    assert "kind" not in item and "apiVersion" not in item  # as in every list the API server sends
    assert item["metadata"]["uid"] == here.uid and item["metadata"]["namespace"] == "multus"
    assert item["metadata"]["labels"] == {"app": "web"}
    assert item["status"] == {"phase": "Running", "hostIP": node1.address, "hostIPs": [{"ip": node1.address}],
                              "podIP": here.pod_ip, "podIPs": [{"ip": here.pod_ip}]}
    assert here.pod_ip.startswith("198.19.") and node1.address.startswith("198.18.")

    both = selector("metadata.namespace=multus,metadata.name!=listed-here")
    _, listing = get(bed, node1, f"/api/v1/pods?fieldSelector={both}")
    assert names(listing["items"]) == ["listed-there"]
    _, listing = get(bed, node1, f"/api/v1/namespaces/multus/pods?labelSelector={selector('app in (web,db)')}")
    assert names(listing["items"]) == ["listed-here"]
    _, listing = get(bed, node1, "/api/v1/namespaces/default/pods?fieldSelector=metadata.name%3Dlisted-here")
    assert listing["items"] == []

    status, pod = get(bed, node1, "/api/v1/namespaces/multus/pods/listed-here")
    assert status == 200 and pod["kind"] == "Pod" and pod["status"]["podIP"] == here.pod_ip
    status, missing = get(bed, node1, "/api/v1/namespaces/default/pods/listed-here")
    assert (status, missing["kind"], missing["reason"], missing["code"]) == (404, "Status", "NotFound", 404)
    status, refused = get(bed, node1, f"/api/v1/pods?fieldSelector={selector('status.hostIP=1.2.3.4')}")
    assert (status, refused["reason"], refused["message"]) == (400, "BadRequest",
                                                                 "field label not supported: status.hostIP")


def test_network_status_is_what_multus_wrote_at_creation(bed, node1):
    prefix = bed.ipv6_prefix()
    pod = bed.pod("node1", "multus-pod", [
        {"name": "net1", "eni": "eth1", "addresses": ["10.0.1.90/24", f"{prefix}90/64"], "network": "ipvlan-wb"},
        {"name": "net2", "eni": "eth2"}], namespace="multus")
    bed.add_address(pod, "net1", "10.0.1.91/24")  # a floating IP: never in the record
    _, pod_object = get(bed, node1, "/api/v1/namespaces/multus/pods/multus-pod")
    assert json.loads(pod_object["metadata"]["annotations"][NETWORK_STATUS]) == [
        {"name": "aws-cni", "interface": "eth0", "ips": [pod.pod_ip], "default": True, "dns": {}},
        {"name": "multus/ipvlan-wb", "interface": "net1", "ips": ["10.0.1.90", f"{prefix}90"],
         "mac": bed.eni("node1", "eth1")["mac"], "dns": {}},
        {"name": "multus/multus-net", "interface": "net2", "mac": bed.eni("node1", "eth2")["mac"], "dns": {}},
    ]

    bed.pod("node1", "unrecorded", [{"name": "net1", "eni": "eth1"}], network_status=False)
    _, pod_object = get(bed, node1, "/api/v1/namespaces/default/pods/unrecorded")
    assert "annotations" not in pod_object["metadata"]
    override = json.dumps([{"name": "aws-cni", "interface": "eth0", "ips": [], "default": True, "dns": {}}])
    bed.pod("node1", "overridden", [{"name": "net1", "eni": "eth1", "addresses": ["10.0.1.92/24"]}],
            annotations={NETWORK_STATUS: override, "team": "blue"})
    _, pod_object = get(bed, node1, "/api/v1/namespaces/default/pods/overridden")
    assert pod_object["metadata"]["annotations"] == {NETWORK_STATUS: override, "team": "blue"}


def test_the_annotations_call_changes_the_object_and_a_no_op_changes_nothing(bed, node1):
    pod = bed.pod("node1", "annotated", [])
    first = bed.annotate(pod, {"multus-ipmgr.io/floating": "10.0.1.95"})
    assert first["metadata"]["annotations"]["multus-ipmgr.io/floating"] == "10.0.1.95"
    assert NETWORK_STATUS in first["metadata"]["annotations"]
    assert bed.annotate(pod, {"multus-ipmgr.io/floating": "10.0.1.95"}) == first
    second = bed.annotate(pod, remove=["multus-ipmgr.io/floating"])
    assert int(second["metadata"]["resourceVersion"]) == int(first["metadata"]["resourceVersion"]) + 1
    _, shown = get(bed, node1, "/api/v1/namespaces/default/pods/annotated")
    assert shown == second and "multus-ipmgr.io/floating" not in shown["metadata"]["annotations"]


def test_a_watch_from_a_version_streams_the_changes_after_it_in_order(bed, node1, watches):
    bed.pod("node2", "seen-before", [])
    _, listing = get(bed, node1, "/api/v1/pods?fieldSelector=spec.nodeName%3Dnode2")
    version = int(listing["metadata"]["resourceVersion"])
    watch = Watch(bed, node1, f"fieldSelector=spec.nodeName%3Dnode2&resourceVersion={version}&timeoutSeconds=60")
    watches.append(watch)
    pod = bed.pod("node2", "watched", [])
    bed.pod("node1", "not-watched", [])
    bed.annotate(pod, {"step": "one"})
    bed.annotate(pod, {"step": "one"})  # changes nothing: no event
    bed.delete_pod(pod)
    events = [watch.next() for _ in range(4)]
    assert [(event["type"], event["object"]["metadata"]["name"]) for event in events] == [
        ("ADDED", "watched"), ("MODIFIED", "watched"), ("MODIFIED", "watched"), ("DELETED", "watched")]
    versions = [int(event["object"]["metadata"]["resourceVersion"]) for event in events]
    assert versions == sorted(versions) and versions[0] == version + 1 and len(set(versions)) == 4
    assert events[0]["object"]["metadata"]["uid"] == pod.uid and events[0]["object"]["kind"] == "Pod"
    assert events[1]["object"]["metadata"]["annotations"]["step"] == "one"
    assert "deletionTimestamp" in events[2]["object"]["metadata"]
    assert events[3]["object"]["status"]["podIP"] == pod.pod_ip

    # From "0": the current state as ADDED first, then what comes.
    watch = Watch(bed, node1, "fieldSelector=spec.nodeName%3Dnode2&resourceVersion=0&timeoutSeconds=60")
    watches.append(watch)
    bed.pod("node2", "after-zero", [])
    seen = []
    while (event := watch.next())["object"]["metadata"]["name"] != "after-zero":
        assert event["type"] == "ADDED"
        seen.append(event["object"]["metadata"]["name"])
    assert event["type"] == "ADDED" and "seen-before" in seen and "watched" not in seen


def test_a_watch_from_a_version_older_than_the_history_is_gone(bed, node1, watches):
    pod = bed.pod("node1", "churned", [])
    version = int(bed.annotate(pod, {"n": "0"})["metadata"]["resourceVersion"])
    bed.control("POST", "config", {"kube_event_history": 3})
    try:
        for n in range(1, 6):
            bed.annotate(pod, {"n": str(n)})
        watch = Watch(bed, node1, f"resourceVersion={version}&timeoutSeconds=60")
        watches.append(watch)
        event = watch.next()
        assert event["type"] == "ERROR"
        assert {key: event["object"][key] for key in ("kind", "apiVersion", "status", "reason", "code")} == {
            "kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "Expired", "code": 410}
        assert event["object"]["message"] == f"too old resource version: {version} ({version + 2})"
        assert watch.ended(5)
        # The oldest version still in the history can be resumed from.
        watch = Watch(bed, node1, f"resourceVersion={version + 2}&timeoutSeconds=60")
        watches.append(watch)
        assert [watch.next()["object"]["metadata"]["annotations"]["n"] for _ in range(3)] == ["3", "4", "5"]
    finally:
        bed.control("POST", "config", {"kube_event_history": 1000})


def test_timeout_seconds_ends_the_stream_after_a_bookmark(bed, node1, watches):
    _, listing = get(bed, node1, "/api/v1/pods")
    version = listing["metadata"]["resourceVersion"]
    started = time.monotonic()
    watch = Watch(bed, node1, f"resourceVersion={version}&timeoutSeconds=3&allowWatchBookmarks=true")
    watches.append(watch)
    event = watch.next()  # 2 s before the deadline, as the API server's cacher sends it
    assert event == {"type": "BOOKMARK", "object": {"kind": "Pod", "apiVersion": "v1",
                                                    "metadata": {"resourceVersion": version}}}
    assert 0.5 < time.monotonic() - started < 2.5
    assert watch.ended(5)
    assert 2.5 < time.monotonic() - started < 5


def test_bookmarks_come_every_interval_and_carry_the_latest_version(bed, node1, watches):
    bed.control("POST", "config", {"kube_bookmark_seconds": 0.5})
    try:
        watch = Watch(bed, node1, "fieldSelector=spec.nodeName%3Dnode2&resourceVersion=0&timeoutSeconds=60"
                                  "&allowWatchBookmarks=true")
        watches.append(watch)
        while (event := watch.next())["type"] == "ADDED":
            pass
        pod = bed.pod("node1", "moves-the-version", [])  # another node's: the bookmark still moves on
        version = bed.annotate(pod, {"a": "b"})["metadata"]["resourceVersion"]
        while (event := watch.next())["object"]["metadata"]["resourceVersion"] != version:
            assert event["type"] == "BOOKMARK"
    finally:
        bed.control("POST", "config", {"kube_bookmark_seconds": 60})


def test_a_streaming_list_ends_its_initial_events_with_a_bookmark(bed, node1, watches):
    bed.pod("node2", "streamed", [])
    query = "fieldSelector=spec.nodeName%3Dnode2&timeoutSeconds=60&allowWatchBookmarks=true&sendInitialEvents=true"
    watch = Watch(bed, node1, query + "&resourceVersionMatch=NotOlderThan")
    watches.append(watch)
    events = []
    while (event := watch.next())["type"] == "ADDED":
        events.append(event)
    assert "streamed" in names([event["object"] for event in events])
    assert event["object"]["metadata"]["annotations"] == {"k8s.io/initial-events-end": "true"}
    status, refused = get(bed, node1, f"/api/v1/pods?watch=1&{query}")
    assert (status, refused["reason"]) == (422, "Invalid")


def test_a_watch_from_a_future_version_times_out(bed, node1, watches):
    _, listing = get(bed, node1, "/api/v1/pods")
    future = int(listing["metadata"]["resourceVersion"]) + 100
    started = time.monotonic()
    watch = Watch(bed, node1, f"resourceVersion={future}&timeoutSeconds=60")
    watches.append(watch)
    event = watch.next(10)
    assert (event["type"], event["object"]["code"], event["object"]["reason"]) == ("ERROR", 504, "Timeout")
    assert event["object"]["details"]["causes"][0]["reason"] == "ResourceVersionTooLarge"
    assert time.monotonic() - started > 2.5 and watch.ended(5)


def test_a_kubernetes_client_lists_and_watches_through_the_kubeconfig(bed, node1):
    pod = bed.pod("node1", "client-seen", [], namespace="multus")
    script = """
import sys
from kubernetes import client, config, watch
config.load_kube_config()
api = client.CoreV1Api()
listing = api.list_pod_for_all_namespaces(field_selector="spec.nodeName=node1")
print(sorted(pod.metadata.name for pod in listing.items), flush=True)
for event in watch.Watch().stream(api.list_pod_for_all_namespaces, field_selector="metadata.name=client-seen",
                                  resource_version=listing.metadata.resource_version, timeout_seconds=30):
    print(event["type"], event["object"].metadata.annotations.get("step"), event["object"].status.pod_ip, flush=True)
    break
"""
    process = subprocess.Popen(node1.exec_argv([sys.executable, "-c", script], {"KUBECONFIG": bed.kubeconfig}),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    listed = process.stdout.readline()
    assert "'client-seen'" in listed, process.stderr.read() if not listed else listed
    bed.annotate(pod, {"step": "two"})
    assert process.stdout.readline().split() == ["MODIFIED", "two", pod.pod_ip]
    assert process.wait(timeout=30) == 0


@needs_root
def test_the_kubeconfig_names_the_server_and_goes_with_the_bed(watches):
    with Bed("how-to") as bed:
        config = yaml.safe_load(Path(bed.kubeconfig).read_text())
        assert config["clusters"][0]["cluster"] == {"server": bed.kube_endpoint}
        assert bed.kube_endpoint.startswith(f"http://{bed.topology['resolver']}:")
        assert config["users"][0]["user"] == {}
        context = config["contexts"][0]
        assert config["current-context"] == context["name"]
        assert (context["context"]["cluster"], context["context"]["user"]) == (
            config["clusters"][0]["name"], config["users"][0]["name"])
        watch = Watch(bed, bed.node("node1"), "timeoutSeconds=60")
        watches.append(watch)
        closed = time.monotonic()
    assert watch.ended(5) and time.monotonic() - closed < 5
    assert not Path(bed.kubeconfig).exists()


def test_pods_that_cannot_reach_metadata_are_refused_and_counted(bed):
    node = bed.node("node1")
    pod = bed.pod("node1", "no-metadata", [])
    script = ("import os, urllib.request as u; e = os.environ['AWS_EC2_METADATA_SERVICE_ENDPOINT'];"
              "t = u.urlopen(u.Request(e + '/latest/api/token', method='PUT',"
              " headers={'X-aws-ec2-metadata-token-ttl-seconds': '60'}), timeout=10).read().decode();"
              "print(u.urlopen(u.Request(e + '/latest/meta-data/instance-id',"
              " headers={'X-aws-ec2-metadata-token': t}), timeout=10).read().decode())")
    instance_id = bed.topology["nodes"]["node1"]["instance_id"]
    assert bed.metadata_requests().get(pod.pod_ip, 0) == 0
    bed.pods_reach_metadata(False)
    try:
        started = time.monotonic()
        refused = subprocess.run(pod.exec_argv([sys.executable, "-c", script]), capture_output=True, text=True,
                                 timeout=30)
        assert refused.returncode != 0 and refused.stdout == ""
        assert "RemoteDisconnected" in refused.stderr or "ConnectionResetError" in refused.stderr, refused.stderr
        assert time.monotonic() - started < 5  # refused at once, not left to time out
        answered = subprocess.run(node.exec_argv([sys.executable, "-c", script]), capture_output=True, text=True,
                                  timeout=30)
        assert answered.stdout.strip() == instance_id, answered.stderr
    finally:
        bed.pods_reach_metadata(True)
    assert bed.metadata_refused() == {pod.pod_ip: 1}
    requests = bed.metadata_requests()
    assert requests[pod.pod_ip] == 1 and requests[node.address] >= 2
    answered = subprocess.run(pod.exec_argv([sys.executable, "-c", script]), capture_output=True, text=True,
                              timeout=30)
    assert answered.stdout.strip() == instance_id, answered.stderr
    assert bed.metadata_requests()[pod.pod_ip] == 3


def test_pods_have_namespaces_made_on_first_use_and_admins_annotate_them(bed, node1, watches):
    status, listing = get(bed, node1, "/api/v1/namespaces")
    assert status == 200 and listing["kind"] == "NamespaceList"
    assert {"default", "kube-system", "kube-public", "kube-node-lease"} <= set(names(listing["items"]))
    watch = Watch(bed, node1, f"resourceVersion={listing['metadata']['resourceVersion']}&timeoutSeconds=60",
                  "/api/v1/namespaces")
    watches.append(watch)
    pod = bed.pod("node1", "first-in-team", [], namespace="team-a")
    added = watch.next()
    assert (added["type"], added["object"]["kind"], added["object"]["metadata"]["name"]) == ("ADDED", "Namespace",
                                                                                            "team-a")
    assert added["object"]["metadata"]["labels"] == {"kubernetes.io/metadata.name": "team-a"}
    assert added["object"]["status"] == {"phase": "Active"}
    _, pod_object = get(bed, node1, "/api/v1/namespaces/team-a/pods/first-in-team")
    assert int(pod_object["metadata"]["resourceVersion"]) == int(added["object"]["metadata"]["resourceVersion"]) + 1
    bed.pod("node1", "second-in-team", [], namespace="team-a")  # the namespace exists: no event

    made = bed.create_namespace("team-b", labels={"tier": "web"},
                                annotations={"multus-ipmgr.io/floating-ip-cidrs": "10.0.1.0/24"})
    annotated = bed.annotate_namespace("team-b", {"multus-ipmgr.io/floating-ip-cidrs": "10.0.2.0/24"})
    assert bed.annotate_namespace("team-b", {"multus-ipmgr.io/floating-ip-cidrs": "10.0.2.0/24"}) == annotated
    cleared = bed.annotate_namespace("team-b", remove=["multus-ipmgr.io/floating-ip-cidrs"])
    events = [watch.next() for _ in range(3)]
    assert [(event["type"], event["object"]["metadata"].get("annotations")) for event in events] == [
        ("ADDED", {"multus-ipmgr.io/floating-ip-cidrs": "10.0.1.0/24"}),
        ("MODIFIED", {"multus-ipmgr.io/floating-ip-cidrs": "10.0.2.0/24"}), ("MODIFIED", None)]
    assert [event["object"] for event in events] == [made, annotated, cleared]
    assert made["metadata"]["labels"] == {"tier": "web", "kubernetes.io/metadata.name": "team-b"}
    with pytest.raises(BedError, match='namespaces "team-b" already exists'):
        bed.create_namespace("team-b")
    with pytest.raises(BedError, match="no namespace team-z"):
        bed.annotate_namespace("team-z", {"a": "b"})

    status, shown = get(bed, node1, "/api/v1/namespaces/team-b")
    assert status == 200 and shown == cleared
    _, listing = get(bed, node1, f"/api/v1/namespaces?fieldSelector={selector('metadata.name=team-a')}")
    assert names(listing["items"]) == ["team-a"]
    _, listing = get(bed, node1, f"/api/v1/namespaces?labelSelector={selector('tier=web')}"
                                 f"&fieldSelector={selector('status.phase=Active')}")
    assert names(listing["items"]) == ["team-b"]
    status, refused = get(bed, node1, f"/api/v1/namespaces?fieldSelector={selector('spec.nodeName=node1')}")
    assert (status, refused["message"]) == (400, "field label not supported: spec.nodeName")
    status, missing = get(bed, node1, "/api/v1/namespaces/team-z")
    assert (status, missing["message"]) == (404, 'namespaces "team-z" not found')
    assert pod.namespace == "team-a"


def test_each_topology_node_is_a_node_object_with_its_provider_id_and_addresses(bed, node1):
    node2 = bed.node("node2")
    status, listing = get(bed, node1, "/api/v1/nodes")
    assert status == 200 and listing["kind"] == "NodeList" and names(listing["items"]) == ["node1", "node2"]
    for item, node in zip(listing["items"], (node1, node2)):
        instance_id = bed.topology["nodes"][node.name]["instance_id"]
        zone = bed.topology["nodes"][node.name]["availability_zone"]
        assert zone.startswith(bed.topology["region"])
        assert item["spec"]["providerID"] == f"aws:///{zone}/{instance_id}"
        assert item["status"]["addresses"] == [{"type": "InternalIP", "address": node.address},
                                               {"type": "InternalIP", "address": node.address6},
                                               {"type": "Hostname", "address": node.name}]
        labels = item["metadata"]["labels"]
        assert (labels["kubernetes.io/hostname"], labels["topology.kubernetes.io/zone"]) == (node.name, zone)
    assert listing["items"][1]["metadata"]["labels"]["node.kubernetes.io/instance-type"] == "m5.large"
    status, shown = get(bed, node1, "/api/v1/nodes/node2")
    assert status == 200 and shown["kind"] == "Node" and shown["metadata"]["name"] == "node2"
    fields = selector("metadata.name!=node1,spec.unschedulable=false")
    _, listing = get(bed, node1, f"/api/v1/nodes?fieldSelector={fields}")
    assert names(listing["items"]) == ["node2"]
    watch = Watch(bed, node1, "resourceVersion=0&timeoutSeconds=3", "/api/v1/nodes")
    assert [event["object"]["metadata"]["name"] for event in (watch.next(), watch.next())] == ["node1", "node2"]
    assert watch.ended(5)


def test_an_ipv6_pod_shows_ipv6_addresses_and_a_kept_object_stays_as_it_was(bed, node1, watches):
    pod = bed.pod("node1", "six-object", [], ipv6=True)
    _, shown = get(bed, node1, "/api/v1/namespaces/default/pods/six-object")
    assert shown["status"] == {"phase": "Running", "hostIP": node1.address6, "hostIPs": [{"ip": node1.address6}],
                               "podIP": pod.pod_ip, "podIPs": [{"ip": pod.pod_ip}]}
    watch = Watch(bed, node1, f"fieldSelector={selector('metadata.name=six-object')}"
                              f"&resourceVersion={shown['metadata']['resourceVersion']}&timeoutSeconds=60")
    watches.append(watch)
    bed.delete_pod(pod, keep_object=True)
    with pytest.raises(BedError, match="pod six-object has no sandbox left"):
        bed.delete_pod(pod, keep_object=True)
    _, kept = get(bed, node1, "/api/v1/namespaces/default/pods/six-object")
    assert kept == shown
    reused = bed.pod("node2", "six-again", [], pod_ip=pod.pod_ip)
    _, listing = get(bed, node1, f"/api/v1/pods?fieldSelector={selector('status.podIP=' + pod.pod_ip)}")
    assert names(listing["items"]) == ["six-again", "six-object"]
    bed.delete_pod_object(pod)
    assert [watch.next()["type"] for _ in range(2)] == ["MODIFIED", "DELETED"]  # nothing before
    bed.delete_pod(reused)


def test_a_stalled_watch_delivers_nothing_then_what_it_held_in_order(bed, node1, watches):
    bed.control("POST", "config", {"kube_bookmark_seconds": 0.5})
    try:
        _, listing = get(bed, node1, "/api/v1/pods")
        query = f"fieldSelector={selector('spec.nodeName=node2')}&timeoutSeconds=60&allowWatchBookmarks=true"
        watch = Watch(bed, node1, f"{query}&resourceVersion={listing['metadata']['resourceVersion']}")
        watches.append(watch)
        assert watch.next()["type"] == "BOOKMARK"
        bed.stall_watches(3)
        started = time.monotonic()
        late = Watch(bed, node1, f"{query}&resourceVersion=0")
        watches.append(late)
        pod = bed.pod("node2", "stalled", [])
        bed.annotate(pod, {"step": "one"})
        _, during = get(bed, node1, "/api/v1/pods?fieldSelector=spec.nodeName%3Dnode2")  # lists are answered
        assert "stalled" in names(during["items"]) and time.monotonic() - started < 2
        for stream in (watch, late):
            with pytest.raises(queue.Empty):
                stream.next(max(0.1, 2.5 - (time.monotonic() - started)))
        held = []
        while len([event for event in held if event["type"] != "BOOKMARK"]) < 2:
            held.append(watch.next(5))
        assert time.monotonic() - started > 2.9
        changes = [(event["type"], event["object"]["metadata"]["name"])
                   for event in held if event["type"] != "BOOKMARK"]
        assert changes == [("ADDED", "stalled"), ("MODIFIED", "stalled")]
        versions = [int(event["object"]["metadata"]["resourceVersion"]) for event in held]
        assert versions == sorted(versions)
        while (event := late.next())["type"] == "ADDED" and event["object"]["metadata"]["name"] != "stalled":
            pass
        assert event["object"]["metadata"]["name"] == "stalled"
    finally:
        bed.control("POST", "config", {"kube_bookmark_seconds": 60})


def test_an_unavailable_api_server_answers_503_then_serves_again(bed, node1):
    bed.kube_unavailable(2)
    started = time.monotonic()
    status, refused = get(bed, node1, "/api/v1/pods")
    assert (status, refused["reason"], refused["code"]) == (503, "ServiceUnavailable", 503)
    status, _ = get(bed, node1, "/api/v1/pods?watch=1")
    assert status == 503
    time.sleep(max(0.0, 2.2 - (time.monotonic() - started)))
    assert get(bed, node1, "/api/v1/nodes")[0] == 200


def test_the_bed_control_api_reregisters_a_node_and_makes_api_requests(bed, node1, watches):
    def request(method: str, path: str, body=None, content_type: str = "application/json", token=None):
        answer = bed.control("POST", "kube/request", {"method": method, "path": path, "body": body,
                                                       "content_type": content_type, "token": token})
        return answer["status"], answer["body"]

    status, node = request("GET", "/api/v1/nodes/node2")
    assert status == 200 and node["status"]["capacity"]["cpu"] == "2"  # the how-to's m5.large
    assert node["status"]["allocatable"]["cpu"] == "1930m" and node["status"]["capacity"]["pods"] == "29"
    watch = Watch(bed, node1, f"resourceVersion={node['metadata']['resourceVersion']}&timeoutSeconds=30"
                              "&fieldSelector=metadata.name%3Dnode2", "/api/v1/nodes")
    watches.append(watch)
    patch = [{"op": "add", "path": "/status/capacity/multus-ipmgr.io~1eni-ips", "value": "6"}]
    status, patched = request("PATCH", "/api/v1/nodes/node2/status", patch, JSON_PATCH)
    assert status == 200 and patched["status"]["capacity"]["multus-ipmgr.io/eni-ips"] == "6"
    _, shown = get(bed, node1, "/api/v1/nodes/node2")
    assert shown["status"]["allocatable"]["multus-ipmgr.io/eni-ips"] == "6"  # the kubelet's update
    assert [watch.next()["type"] for _ in range(2)] == ["MODIFIED", "MODIFIED"]

    fresh = bed.control("POST", "kube/nodes/node2/reregister")
    assert "multus-ipmgr.io/eni-ips" not in fresh["status"]["capacity"]
    assert "multus-ipmgr.io/eni-ips" not in fresh["status"]["allocatable"]
    assert fresh["metadata"]["uid"] != node["metadata"]["uid"] and version(fresh) > version(shown)
    assert [watch.next()["type"] for _ in range(2)] == ["DELETED", "ADDED"]
    with pytest.raises(BedError, match="no node node9"):
        bed.control("POST", "kube/nodes/node9/reregister")

    made = bed.control("POST", "kube/rbac", {"user": "system:serviceaccount:multus-ipmgr:agent",
                                              "rules": [{"apiGroups": [""], "resources": ["nodes"],
                                                         "verbs": ["get"]}]})
    assert Path(made["kubeconfig"]).read_text().count(f'token: "{made["token"]}"') == 1
    assert request("GET", "/api/v1/nodes/node1", token=made["token"])[0] == 200
    status, refused = request("PATCH", "/api/v1/nodes/node1/status", patch, JSON_PATCH, made["token"])
    assert (status, refused["message"]) == (403, 'nodes "node1" is forbidden: User "system:serviceaccount:'
                                                 'multus-ipmgr:agent" cannot patch resource "nodes/status" in API '
                                                 'group "" at the cluster scope')
    assert bed.control("GET", "kube/denied")["denied"][-1]["message"] == refused["message"]
    assert request("PATCH", "/api/v1/nodes/node1/status", patch, JSON_PATCH)[0] == 200  # no token: as before


def test_the_bed_control_api_sets_the_conflicts_fault_and_shows_the_writes(bed):
    # The bed's own changes are not API writes (kube/request's are: another test's).
    assert all(write["verb"] != "create" for write in bed.control("GET", "kube/writes")["writes"])
    bed.control("POST", "kube/faults", {"conflicts": {"kind": "Secret", "count": 0}})
    with pytest.raises(BedError, match="no writable kind 'Pod'"):
        bed.control("POST", "kube/faults", {"conflicts": {"kind": "Pod", "count": 1}})


# The same server alone, as a webhook writes to it: no bed, no root.

SECRETS = "/api/v1/namespaces/default/secrets"
WEBHOOKS = "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations"
MERGE, JSON_PATCH = "application/merge-patch+json", "application/json-patch+json"
STALE = ("the object has been modified; please apply your changes to the latest version and try again")


class Api:
    """The standalone API server (`python -m testenv.kube`), one HTTP request at a time."""

    def __init__(self, *arguments: str):
        self.process = subprocess.Popen([sys.executable, "-m", "testenv.kube", *arguments],
                                        cwd=Path(__file__).resolve().parent.parent, stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, text=True)
        self.ready = json.loads(self.process.stdout.readline())
        self.endpoint = self.ready["kube_endpoint"]

    def call(self, method: str, path: str, body=None, content_type: str = "application/json",
             token: str | None = None) -> tuple[int, dict]:
        """`method path` with `body` (JSON unless bytes), bearing `token`: status and JSON answer."""
        url = urlsplit(self.endpoint)
        connection = http.client.HTTPConnection(url.hostname, url.port, timeout=30)
        data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
        headers = {"Content-Type": content_type} if data is not None else {}
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        connection.request(method, path, data, headers)
        response = connection.getresponse()
        answer = json.loads(response.read())
        connection.close()
        return response.status, answer

    def writes(self) -> list[dict]:
        return self.call("GET", "/_testenv/writes")[1]["writes"]

    def stop(self, terminate: bool = False) -> int:
        """Stops the server (SIGTERM with `terminate`, else the end of its input, as when the
        parent goes away); its exit status."""
        if terminate:
            self.process.terminate()
        self.process.stdin.close()
        status = self.process.wait(timeout=10)
        self.process.stdout.close()
        return status


class Stream:
    """A watch on the standalone server: its events one by one."""

    def __init__(self, api: Api, path: str, token: str | None = None):
        url = urlsplit(api.endpoint)
        self.connection = http.client.HTTPConnection(url.hostname, url.port, timeout=60)
        self.connection.request("GET", path, headers={"Authorization": f"Bearer {token}"} if token else {})
        self.socket = self.connection.sock
        self.response = self.connection.getresponse()
        assert self.response.status == 200
        self.lines: queue.Queue[bytes | None] = queue.Queue()
        threading.Thread(target=self.read, daemon=True).start()

    def read(self) -> None:
        try:
            for line in self.response:
                self.lines.put(line)
        except Exception:  # the watch was closed under the reader
            pass
        self.lines.put(None)

    def next(self, limit: float = 5.0) -> dict:
        line = self.lines.get(timeout=limit)
        assert line is not None, "the stream ended"
        return json.loads(line)

    def close(self) -> None:
        """Ends the watch at once (the reader is blocked on the socket: shut it down)."""
        self.socket.shutdown(socket.SHUT_RDWR)
        self.connection.close()


@pytest.fixture(scope="module")
def api():
    api = Api()
    yield api
    api.stop()


def secret(name: str, data: dict | None = None, **fields) -> dict:
    return {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name}, "data": data or {}} | fields


def webhook_configuration(name: str, ca_bundle: str | None = None) -> dict:
    client_config = {"service": {"name": "multus-ipmgr", "namespace": "multus-ipmgr", "path": "/mutate"}}
    if ca_bundle is not None:
        client_config["caBundle"] = ca_bundle
    return {"apiVersion": "admissionregistration.k8s.io/v1", "kind": "MutatingWebhookConfiguration",
            "metadata": {"name": name},
            "webhooks": [{"name": "pods.multus-ipmgr.io", "clientConfig": client_config, "sideEffects": "None",
                          "admissionReviewVersions": ["v1"],
                          "rules": [{"operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"],
                                     "resources": ["pods"]}]}]}


def version(item: dict) -> int:
    return int(item["metadata"]["resourceVersion"])


def test_a_create_answers_the_stored_object_and_refuses_an_existing_name(api):
    status, made = api.call("POST", SECRETS, secret("made", {"ca.crt": "Y2E="}, unknown={"kept": True}))
    assert status == 201 and (made["kind"], made["apiVersion"], made["type"]) == ("Secret", "v1", "Opaque")
    assert made["metadata"]["namespace"] == "default" and made["metadata"]["uid"] and made["unknown"] == {"kept": True}
    assert made["metadata"]["creationTimestamp"].endswith("Z") and version(made) > 1
    assert api.call("GET", f"{SECRETS}/made") == (200, made)

    status, exists = api.call("POST", SECRETS, secret("made"))
    assert (status, exists["reason"], exists["message"], exists["details"]) == (
        409, "AlreadyExists", 'secrets "made" already exists', {"name": "made", "kind": "secrets"})
    status, refused = api.call("POST", SECRETS, secret("versioned") | {"metadata": {"name": "versioned",
                                                                                 "resourceVersion": "7"}})
    assert (status, refused["message"], "reason" in refused) == (
        500, "resourceVersion should not be set on objects to be created", False)
    status, refused = api.call("POST", SECRETS, secret("elsewhere") | {"metadata": {"name": "elsewhere",
                                                                                  "namespace": "kube-system"}})
    assert (status, refused["message"]) == (
        400, "the namespace of the provided object does not match the namespace sent on the request")
    status, missing = api.call("POST", "/api/v1/namespaces/multus-ipmgr/secrets", secret("early"))
    assert (status, missing["message"]) == (404, 'namespaces "multus-ipmgr" not found')
    status, namespace = api.call("POST", "/api/v1/namespaces", {"metadata": {"name": "multus-ipmgr"}})
    assert status == 201 and namespace["metadata"]["labels"] == {"kubernetes.io/metadata.name": "multus-ipmgr"}
    assert namespace["spec"] == {"finalizers": ["kubernetes"]} and namespace["status"] == {"phase": "Active"}
    status, generated = api.call("POST", "/api/v1/namespaces/multus-ipmgr/secrets",
                                 {"metadata": {"generateName": "tls-"}, "stringData": {"a": "b"}})
    name = generated["metadata"]["name"]
    assert status == 201 and name.startswith("tls-") and len(name) == 9
    assert generated["data"] == {"a": "Yg=="} and "stringData" not in generated
    status, invalid = api.call("POST", SECRETS, secret("Bad_Name"))
    assert status == 422 and invalid["message"].startswith(
        'Secret "Bad_Name" is invalid: metadata.name: Invalid value: "Bad_Name": a lowercase RFC 1123 subdomain')
    assert api.call("POST", f"{SECRETS}/made", secret("made"))[0] == 405


def test_an_update_with_a_stale_version_is_a_conflict_and_one_without_is_unconditional(api):
    _, made = api.call("POST", SECRETS, secret("updated", {"k": "djE="}))
    status, changed = api.call("PUT", f"{SECRETS}/updated", made | {"data": {"k": "djI="}})
    assert status == 200 and version(changed) > version(made) and changed["metadata"]["uid"] == made["metadata"]["uid"]
    status, stale = api.call("PUT", f"{SECRETS}/updated", made | {"data": {"k": "djM="}})
    assert (status, stale["reason"], stale["message"], stale["details"]) == (
        409, "Conflict", f'Operation cannot be fulfilled on secrets "updated": {STALE}',
        {"name": "updated", "kind": "secrets"})
    unconditional = {"metadata": {"name": "updated"}, "data": {"k": "djQ="}}  # no resourceVersion: allowed for Secrets
    status, forced = api.call("PUT", f"{SECRETS}/updated", unconditional)
    assert status == 200 and version(forced) > version(changed) and forced["data"] == {"k": "djQ="}
    assert forced["metadata"]["creationTimestamp"] == made["metadata"]["creationTimestamp"]
    status, missing = api.call("PUT", f"{SECRETS}/absent", secret("absent"))
    assert (status, missing["message"]) == (404, 'secrets "absent" not found')
    status, renamed = api.call("PUT", f"{SECRETS}/updated", secret("other"))
    assert (status, renamed["message"]) == (400, "the name of the object (other) does not match the name on the URL "
                                                 "(updated)")
    status, uid = api.call("PUT", f"{SECRETS}/updated", forced | {"metadata": forced["metadata"] | {"uid": "x"}})
    assert (status, uid["message"]) == (422, 'Secret "updated" is invalid: metadata.uid: Invalid value: "x": '
                                             "field is immutable")


def test_a_no_op_update_keeps_the_version_and_makes_no_event(api):
    _, made = api.call("POST", SECRETS, secret("same", {"k": "dg=="}))
    stream = Stream(api, f"{SECRETS}?watch=1&resourceVersion={version(made)}&fieldSelector=metadata.name%3Dsame")
    try:
        assert api.call("PUT", f"{SECRETS}/same", made) == (200, made)
        assert api.call("PUT", f"{SECRETS}/same", made | {"data": {"k": "dg==\n"}}) == (200, made)  # same bytes
        assert api.call("PATCH", f"{SECRETS}/same", {"data": {"k": "dg=="}}, MERGE) == (200, made)
        assert api.call("GET", f"{SECRETS}/same")[1] == made
        _, changed = api.call("PATCH", f"{SECRETS}/same", {"data": {"k": "dzI="}}, MERGE)
        event = stream.next()  # the first event is the one real change
        assert (event["type"], version(event["object"])) == ("MODIFIED", version(changed))
        assert version(changed) == max(int(entry["resourceVersion"] or 0) for entry in api.writes())
    finally:
        stream.close()
    logged = [entry for entry in api.writes() if entry["name"] == "same"]
    assert [(entry["verb"], entry["code"]) for entry in logged] == [
        ("create", 201), ("update", 200), ("update", 200), ("patch", 200), ("patch", 200)]
    assert [entry["resourceVersion"] for entry in logged[:4]] == [made["metadata"]["resourceVersion"]] * 4


def test_a_merge_patch_with_a_resource_version_is_a_precondition(api):
    _, made = api.call("POST", SECRETS, secret("merged", {"a": "YQ==", "b": "Yg=="}))
    stale = {"metadata": {"resourceVersion": str(version(made) - 1)}, "data": {"a": "eA=="}}
    status, refused = api.call("PATCH", f"{SECRETS}/merged", stale, MERGE)
    assert (status, refused["reason"], refused["message"]) == (
        409, "Conflict", f'Operation cannot be fulfilled on secrets "merged": {STALE}')
    current = {"metadata": {"resourceVersion": made["metadata"]["resourceVersion"]}, "data": {"a": "eA==", "b": None},
               "stringData": {"c": "see"}}
    status, patched = api.call("PATCH", f"{SECRETS}/merged", current, f"{MERGE}; charset=utf-8")
    assert status == 200 and patched["data"] == {"a": "eA==", "c": "c2Vl"} and version(patched) > version(made)
    status, refused = api.call("PATCH", f"{SECRETS}/merged", current, MERGE)  # the same version again: stale now
    assert status == 409
    assert api.call("PATCH", f"{SECRETS}/merged", b"null", MERGE)[1]["message"] == "Invalid JSON Patch"
    assert api.call("PATCH", f"{SECRETS}/merged", b"{not json", MERGE)[1]["message"] == "invalid JSON patch"
    status, missing = api.call("PATCH", f"{SECRETS}/absent", {"data": {}}, MERGE)
    assert (status, missing["message"]) == (404, 'secrets "absent" not found')
    for content_type in ("application/strategic-merge-patch+json", "application/apply-patch+yaml", "application/json"):
        status, unsupported = api.call("PATCH", f"{SECRETS}/merged", {"data": {}}, content_type)
        assert (status, unsupported["reason"], unsupported["message"]) == (
            415, "UnsupportedMediaType", "the body of the request was in an unknown format - accepted media types "
                                         "include: application/json-patch+json, application/merge-patch+json")


def test_a_json_patch_whose_test_fails_is_invalid(api):
    _, made = api.call("POST", SECRETS, secret("tested", {"a": "YQ=="}))
    rv = made["metadata"]["resourceVersion"]
    failing = [{"op": "test", "path": "/data/a", "value": "Yg=="},
               {"op": "replace", "path": "/data/a", "value": "Yw=="}]
    status, refused = api.call("PATCH", f"{SECRETS}/tested", failing, JSON_PATCH)
    assert (status, refused["reason"], refused["message"], refused["details"]) == (
        422, "Invalid", "the server rejected our request due to an error in our request", {})
    guarded = [{"op": "test", "path": "/metadata/resourceVersion", "value": rv},
               {"op": "add", "path": "/data/b", "value": "Yg=="}, {"op": "copy", "from": "/data/a", "path": "/data/c"},
               {"op": "move", "from": "/data/c", "path": "/data/d"}, {"op": "remove", "path": "/data/a"}]
    status, patched = api.call("PATCH", f"{SECRETS}/tested", guarded, JSON_PATCH)
    assert status == 200 and patched["data"] == {"b": "Yg==", "d": "YQ=="}
    assert api.call("PATCH", f"{SECRETS}/tested", guarded, JSON_PATCH)[0] == 422  # its version moved on
    assert api.call("PATCH", f"{SECRETS}/tested", [{"op": "remove", "path": "/data/zz"}], JSON_PATCH)[0] == 422
    status, malformed = api.call("PATCH", f"{SECRETS}/tested", {"op": "add"}, JSON_PATCH)
    assert (status, malformed["reason"]) == (400, "BadRequest")
    set_version = [{"op": "replace", "path": "/metadata/resourceVersion", "value": rv}]  # a precondition too
    assert api.call("PATCH", f"{SECRETS}/tested", set_version, JSON_PATCH)[0] == 409


def test_data_that_is_not_base64_is_refused_as_go_decodes_it(api):
    status, refused = api.call("POST", SECRETS, secret("plain", {"user": "admin"}))
    assert (status, refused["reason"], refused["message"]) == (
        400, "BadRequest", 'Secret in version "v1" cannot be handled as a Secret: illegal base64 data at input byte 4')
    _, made = api.call("POST", SECRETS, secret("encoded", {"user": "YWRt\naW4="}))
    assert made["data"] == {"user": "YWRtaW4="}  # decoded, answered re-encoded
    status, refused = api.call("PATCH", f"{SECRETS}/encoded", {"data": {"user": "admin"}}, MERGE)
    assert (status, refused["reason"], refused["details"]["causes"][0]["field"]) == (422, "Invalid", "patch")
    assert refused["message"].startswith(' "" is invalid: patch: Invalid value: "{')
    assert refused["message"].endswith('": illegal base64 data at input byte 4')
    status, refused = api.call("POST", SECRETS, secret("typed", {"n": 1}))
    assert (status, refused["message"]) == (400, 'Secret in version "v1" cannot be handled as a Secret: json: cannot '
                                                 "unmarshal number into Go struct field Secret.data of type []uint8")
    for text, offset in (("YQ", 0), ("YQ=", 3), ("Y===", 1), ("YQ==YQ==", 4), ("a b=", 1), ("YWJj!", 4)):
        with pytest.raises(kube.DecodeError, match=f"at input byte {offset}$"):
            kube.go_base64(text)
    assert kube.go_base64("YQ==\r\n") == b"a" and kube.go_base64("YR==") == b"a" and kube.go_base64("") == b""


def test_a_tls_secret_needs_its_key_and_certificate_and_keeps_its_type(api):
    status, refused = api.call("POST", SECRETS, secret("serving", {"tls.crt": "Y2VydA=="}, type="kubernetes.io/tls"))
    assert (status, refused["reason"], refused["message"]) == (
        422, "Invalid", 'Secret "serving" is invalid: data[tls.key]: Required value')
    assert refused["details"] == {"name": "serving", "kind": "Secret", "causes": [
        {"reason": "FieldValueRequired", "message": "Required value", "field": "data[tls.key]"}]}
    status, refused = api.call("POST", SECRETS, secret("serving", type="kubernetes.io/tls"))
    assert refused["message"] == ('Secret "serving" is invalid: [data[tls.crt]: Required value, '
                                  "data[tls.key]: Required value]")
    pair = {"tls.crt": "Y2VydA==", "tls.key": "a2V5", "ca.crt": "Y2E="}
    status, made = api.call("POST", SECRETS, secret("serving", pair, type="kubernetes.io/tls"))
    assert status == 201 and made["type"] == "kubernetes.io/tls"
    status, refused = api.call("PUT", f"{SECRETS}/serving", made | {"type": "Opaque"})
    assert (status, refused["message"]) == (422, 'Secret "serving" is invalid: type: Invalid value: "Opaque": field '
                                                 "is immutable")
    untyped = {key: value for key, value in made.items() if key != "type"}  # defaults to Opaque: a change too
    assert api.call("PUT", f"{SECRETS}/serving", untyped)[0] == 422
    status, refused = api.call("PATCH", f"{SECRETS}/serving", {"data": {"tls.key": None}}, MERGE)
    assert (status, refused["message"]) == (422, 'Secret "serving" is invalid: data[tls.key]: Required value')
    _, frozen = api.call("POST", SECRETS, secret("frozen", {"a": "YQ=="}, immutable=True))
    status, refused = api.call("PATCH", f"{SECRETS}/frozen", {"data": {"a": "Yg=="}}, MERGE)
    assert (status, refused["message"]) == (422, 'Secret "frozen" is invalid: data: Forbidden: field is immutable '
                                                 "when `immutable` is set")


def test_a_webhook_configuration_keeps_its_ca_bundle_and_counts_generations(api):
    status, made = api.call("POST", WEBHOOKS, webhook_configuration("multus-ipmgr"))
    assert status == 201 and made["metadata"]["generation"] == 1 and "namespace" not in made["metadata"]
    hook = made["webhooks"][0]
    assert (hook["failurePolicy"], hook["matchPolicy"], hook["timeoutSeconds"], hook["reinvocationPolicy"]) == (
        "Fail", "Equivalent", 10, "Never")
    assert (hook["namespaceSelector"], hook["clientConfig"]["service"]["port"], hook["rules"][0]["scope"]) == ({}, 443,
                                                                                                              "*")
    ca = base64.b64encode(b"-----BEGIN CERTIFICATE-----\nMIIB...\n-----END CERTIFICATE-----\n").decode()
    patch = [{"op": "add", "path": "/webhooks/0/clientConfig/caBundle", "value": ca}]
    status, patched = api.call("PATCH", f"{WEBHOOKS}/multus-ipmgr", patch, JSON_PATCH)
    assert status == 200 and patched["webhooks"][0]["clientConfig"]["caBundle"] == ca
    assert patched["metadata"]["generation"] == 2 and api.call("GET", f"{WEBHOOKS}/multus-ipmgr") == (200, patched)
    assert api.call("PATCH", f"{WEBHOOKS}/multus-ipmgr", patch, JSON_PATCH) == (200, patched)  # unchanged
    status, labelled = api.call("PATCH", f"{WEBHOOKS}/multus-ipmgr", {"metadata": {"labels": {"a": "b"}}}, MERGE)
    assert status == 200 and labelled["metadata"]["generation"] == 2  # not a webhook change

    status, refused = api.call("PUT", f"{WEBHOOKS}/multus-ipmgr", webhook_configuration("multus-ipmgr", "Y2E="))
    assert (status, refused["reason"], refused["message"]) == (
        422, "Invalid", 'mutatingwebhookconfigurations.admissionregistration.k8s.io "multus-ipmgr" is invalid: '
                        "metadata.resourceVersion: Invalid value: 0: must be specified for an update")
    stale = labelled | {"metadata": labelled["metadata"] | {"resourceVersion": patched["metadata"]["resourceVersion"]}}
    status, refused = api.call("PUT", f"{WEBHOOKS}/multus-ipmgr", stale)
    assert (status, refused["message"], refused["details"]) == (
        409, 'Operation cannot be fulfilled on mutatingwebhookconfigurations.admissionregistration.k8s.io '
             f'"multus-ipmgr": {STALE}',
        {"name": "multus-ipmgr", "group": "admissionregistration.k8s.io", "kind": "mutatingwebhookconfigurations"})
    replaced = webhook_configuration("multus-ipmgr", "bmV3IGNh")
    replaced["metadata"]["resourceVersion"] = labelled["metadata"]["resourceVersion"]
    status, updated = api.call("PUT", f"{WEBHOOKS}/multus-ipmgr", replaced)
    assert status == 200 and updated["metadata"]["generation"] == 3
    assert base64.b64decode(updated["webhooks"][0]["clientConfig"]["caBundle"]) == b"new ca"

    status, refused = api.call("POST", WEBHOOKS, webhook_configuration("broken", "not base64"))
    assert (status, refused["message"]) == (400, "MutatingWebhookConfiguration in version \"v1\" cannot be handled as "
                                                 "a MutatingWebhookConfiguration: illegal base64 data at input byte 3")
    incomplete = webhook_configuration("incomplete")
    del incomplete["webhooks"][0]["sideEffects"]
    incomplete["webhooks"][0]["clientConfig"]["url"] = "https://example.com/mutate"
    status, refused = api.call("POST", WEBHOOKS, incomplete)
    assert (status, [cause["field"] for cause in refused["details"]["causes"]]) == (
        422, ["webhooks[0].sideEffects", "webhooks[0].clientConfig"])
    assert refused["message"].startswith('MutatingWebhookConfiguration.admissionregistration.k8s.io "incomplete" is '
                                         "invalid: [webhooks[0].sideEffects: Required value: must specify one of None, "
                                         "NoneOnDryRun, ")

    status, refused = api.call("DELETE", f"{WEBHOOKS}/multus-ipmgr", {"preconditions": {"uid": "other"}})
    assert (status, refused["reason"]) == (409, "Conflict")
    assert "the UID in the precondition (other)" in refused["message"]
    status, deleted = api.call("DELETE", f"{WEBHOOKS}/multus-ipmgr")
    assert (status, deleted["status"], deleted["details"]) == (200, "Success", {
        "name": "multus-ipmgr", "group": "admissionregistration.k8s.io", "kind": "mutatingwebhookconfigurations",
        "uid": made["metadata"]["uid"]})
    assert api.call("GET", f"{WEBHOOKS}/multus-ipmgr")[0] == 404
    assert api.call("DELETE", f"{WEBHOOKS}/multus-ipmgr")[1]["message"] == (
        'mutatingwebhookconfigurations.admissionregistration.k8s.io "multus-ipmgr" not found')


def test_lists_and_watches_see_the_writes(api):
    _, listing = api.call("GET", "/api/v1/secrets")
    assert listing["kind"] == "SecretList" and all("kind" not in item for item in listing["items"])
    stream = Stream(api, f"{SECRETS}?watch=1&resourceVersion={listing['metadata']['resourceVersion']}")
    webhooks = Stream(api, f"{WEBHOOKS}?watch=1&resourceVersion=0&allowWatchBookmarks=true&timeoutSeconds=3")
    try:
        _, made = api.call("POST", SECRETS, secret("watched", {"a": "YQ=="}))
        api.call("PATCH", f"{SECRETS}/watched", {"data": {"a": "YQ=="}}, MERGE)  # no change, no event
        _, changed = api.call("PATCH", f"{SECRETS}/watched", {"data": {"a": "Yg=="}}, MERGE)
        api.call("DELETE", f"{SECRETS}/watched")
        events = [stream.next() for _ in range(3)]
        assert [(event["type"], event["object"]["metadata"]["name"]) for event in events] == [
            ("ADDED", "watched"), ("MODIFIED", "watched"), ("DELETED", "watched")]
        assert events[0]["object"] == made and events[1]["object"] == changed
        assert version(events[2]["object"]) > version(changed) and events[2]["object"]["data"] == {"a": "Yg=="}
        bookmark = webhooks.next(5)  # nothing to add: the pre-deadline bookmark, of the group's version
        assert bookmark["type"] == "BOOKMARK" and bookmark["object"]["apiVersion"] == "admissionregistration.k8s.io/v1"
    finally:
        stream.close()
        webhooks.close()
    api.call("POST", SECRETS, secret("typed-tls", {"tls.crt": "YQ==", "tls.key": "YQ=="}, type="kubernetes.io/tls"))
    _, listing = api.call("GET", f"{SECRETS}?fieldSelector=type%3Dkubernetes.io%2Ftls")
    assert "typed-tls" in names(listing["items"]) and {item["type"] for item in listing["items"]} == {
        "kubernetes.io/tls"}


def test_the_conflicts_fault_answers_the_next_writes_409_and_the_log_shows_them(api):
    _, made = api.call("POST", SECRETS, secret("contended", {"a": "YQ=="}))
    assert api.call("POST", "/_testenv/faults", {"conflicts": {"kind": "Secret", "count": 2}}) == (200, {})
    before = len(api.writes())
    for _ in range(2):
        status, refused = api.call("PATCH", f"{SECRETS}/contended", {"data": {"a": "Yg=="}}, MERGE)
        assert (status, refused["reason"], refused["message"]) == (
            409, "Conflict", f'Operation cannot be fulfilled on secrets "contended": {STALE}')
    assert api.call("GET", f"{SECRETS}/contended") == (200, made)  # reads are not writes
    status, patched = api.call("PATCH", f"{SECRETS}/contended", {"data": {"a": "Yg=="}}, MERGE)
    assert status == 200
    log = api.writes()[before:]
    assert [(entry["verb"], entry["kind"], entry["namespace"], entry["name"], entry["code"]) for entry in log] == [
        ("patch", "Secret", "default", "contended", 409)] * 2 + [("patch", "Secret", "default", "contended", 200)]
    assert [entry["resourceVersion"] for entry in log] == ["", "", patched["metadata"]["resourceVersion"]]
    assert log[0]["time"] <= log[2]["time"] <= time.time()
    status, refused = api.call("POST", "/_testenv/faults", {"conflicts": {"kind": "Pod", "count": 1}})
    assert status == 400 and "no writable kind 'Pod'" in refused["error"]
    api.call("POST", "/_testenv/faults", {"conflicts": {"kind": "MutatingWebhookConfiguration", "count": 1}})
    assert api.call("POST", WEBHOOKS, webhook_configuration("contended"))[0] == 409
    assert api.call("POST", WEBHOOKS, webhook_configuration("contended"))[0] == 201
    assert api.call("GET", "/_testenv/nothing")[0] == 404


def test_standalone_writes_its_kubeconfig_and_stops_on_sigterm_or_end_of_input(tmp_path):
    kubeconfig = tmp_path / "kubeconfig"
    server = Api("--kubeconfig", str(kubeconfig))
    assert server.ready == {"kube_endpoint": server.endpoint, "kubeconfig": str(kubeconfig)}
    assert server.endpoint.startswith("http://127.0.0.1:")
    config = yaml.safe_load(kubeconfig.read_text())
    assert config["clusters"][0]["cluster"] == {"server": server.endpoint}
    status, listing = server.call("GET", "/api/v1/namespaces")
    assert status == 200 and names(listing["items"]) == ["default", "kube-node-lease", "kube-public", "kube-system"]
    assert server.stop(terminate=True) == 0 and not kubeconfig.exists()

    quiet = Api()
    assert quiet.ready["kubeconfig"] is None and quiet.call("GET", "/api/v1/nodes")[1]["items"] == []
    assert quiet.stop() == 0  # the end of its input: the parent went away


NODES = "/api/v1/nodes"
NADS = "/apis/k8s.cni.cncf.io/v1/namespaces/default/network-attachment-definitions"


def test_a_json_patch_of_a_nodes_status_adds_capacity_and_the_kubelet_copies_it_to_allocatable(api):
    status, node = api.call("POST", "/_testenv/nodes", {"name": "cap-node", "instance_type": "m5.xlarge"})
    assert status == 200 and node["metadata"]["labels"]["node.kubernetes.io/instance-type"] == "m5.xlarge"
    assert {key: node["status"]["capacity"][key] for key in ("cpu", "pods")} == {"cpu": "4", "pods": "58"}
    assert node["status"]["allocatable"]["cpu"] == "3920m" and node["status"]["capacity"]["memory"].endswith("Ki")
    stream = Stream(api, f"{NODES}?watch=1&fieldSelector=metadata.name%3Dcap-node&resourceVersion={version(node)}")
    try:
        patch = [{"op": "test", "path": "/metadata/resourceVersion", "value": node["metadata"]["resourceVersion"]},
                 {"op": "add", "path": "/status/capacity/multus-ipmgr.io~1eni-ips", "value": "12"}]
        status, patched = api.call("PATCH", f"{NODES}/cap-node/status", patch, JSON_PATCH)
        assert status == 200 and patched["status"]["capacity"]["multus-ipmgr.io/eni-ips"] == "12"
        assert "multus-ipmgr.io/eni-ips" not in patched["status"]["allocatable"]  # the answer is the write's
        status, shown = api.call("GET", f"{NODES}/cap-node/status")
        assert status == 200 and shown["kind"] == "Node"
        assert shown["status"]["allocatable"]["multus-ipmgr.io/eni-ips"] == "12"
        assert version(shown) == version(patched) + 1  # the kubelet's own update
        events = [stream.next(), stream.next()]
        assert [(event["type"], version(event["object"])) for event in events] == [
            ("MODIFIED", version(patched)), ("MODIFIED", version(shown))]

        # A merge patch changes it; the kubelet puts its own resources back; a removal leaves allocatable.
        status, merged = api.call("PATCH", f"{NODES}/cap-node/status",
                                  {"status": {"capacity": {"multus-ipmgr.io/eni-ips": 20, "cpu": "64"}}}, MERGE)
        assert status == 200 and merged["status"]["capacity"]["multus-ipmgr.io/eni-ips"] == "20"
        shown = api.call("GET", f"{NODES}/cap-node")[1]
        assert shown["status"]["allocatable"]["multus-ipmgr.io/eni-ips"] == "20"
        assert (shown["status"]["capacity"]["cpu"], shown["status"]["allocatable"]["cpu"]) == ("4", "3920m")
        removal = [{"op": "remove", "path": "/status/capacity/multus-ipmgr.io~1eni-ips"}]
        assert api.call("PATCH", f"{NODES}/cap-node/status", removal, JSON_PATCH)[0] == 200
        shown = api.call("GET", f"{NODES}/cap-node")[1]
        assert "multus-ipmgr.io/eni-ips" not in shown["status"]["allocatable"]
        assert api.call("PATCH", f"{NODES}/cap-node/status", removal, JSON_PATCH)[0] == 422  # nothing to remove

        # Only status changes through /status, only the rest through the node; metadata through both.
        spec_too = {"metadata": {"labels": {"team": "net"}}, "spec": {"unschedulable": True},
                    "status": {"capacity": {"example.com/dongle": "1"}}}
        status, through_status = api.call("PATCH", f"{NODES}/cap-node/status", spec_too, MERGE)
        assert status == 200 and through_status["spec"] == shown["spec"]
        assert through_status["metadata"]["labels"]["team"] == "net"
        node_too = {"spec": {"unschedulable": True}, "status": {"capacity": {"example.com/dongle": "9"}}}
        status, through_node = api.call("PATCH", f"{NODES}/cap-node", node_too, MERGE)
        assert status == 200 and through_node["spec"]["unschedulable"] is True
        assert through_node["status"]["capacity"]["example.com/dongle"] == "1"
        escaped = [{"op": "add", "path": "/metadata/annotations", "value": {}},
                   {"op": "add", "path": "/metadata/annotations/a~0b~1c", "value": "tilde"}]
        status, annotated = api.call("PATCH", f"{NODES}/cap-node/status", escaped, JSON_PATCH)
        assert status == 200 and annotated["metadata"]["annotations"] == {"a~b/c": "tilde"}
    finally:
        stream.close()
    log = [entry for entry in api.writes() if entry["kind"] == "Node"]
    assert [(entry["verb"], entry["name"], entry["subresource"], entry["user"]) for entry in log[:2]] == [
        ("patch", "cap-node", "status", None)] * 2
    assert log[0]["resourceVersion"] == patched["metadata"]["resourceVersion"]
    assert api.call("POST", f"{NODES}", {"metadata": {"name": "new"}})[0] == 405
    assert api.call("DELETE", f"{NODES}/cap-node/status")[0] == 405
    assert api.call("GET", f"{NODES}/cap-node/proxy")[0] == 404
    assert api.call("POST", "/_testenv/nodes", {"name": "cap-node"})[0] == 400


def test_node_quantities_are_parsed_checked_and_kept_canonical_as_the_real_server_does(api):
    api.call("POST", "/_testenv/nodes", {"name": "quantities"})

    def add(name: str, value) -> tuple[int, dict]:
        key = name.replace("~", "~0").replace("/", "~1")
        return api.call("PATCH", f"{NODES}/quantities/status",
                        [{"op": "add", "path": f"/status/capacity/{key}", "value": value}], JSON_PATCH)

    status, refused = add("example.com/foo", "lots")
    assert (status, refused["reason"], refused["details"]["causes"][0]["field"]) == (422, "Invalid", "patch")
    assert refused["message"].endswith("\": quantities must match the regular expression "
                                       "'^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'")
    assert add("example.com/foo", "1K")[1]["message"].endswith(": unable to parse quantity's suffix")
    status, refused = add("example.com/foo", "-1")
    assert (status, refused["message"]) == (422, 'Node "quantities" is invalid: status.capacity.example.com/foo: '
                                                 'Invalid value: "-1": must be greater than or equal to 0')
    assert refused["details"] == {"name": "quantities", "kind": "Node", "causes": [
        {"reason": "FieldValueInvalid", "message": 'Invalid value: "-1": must be greater than or equal to 0',
         "field": "status.capacity.example.com/foo"}]}
    status, refused = add("example.com/foo", "1500m")  # an extended resource is whole
    assert (status, refused["message"]) == (422, 'Node "quantities" is invalid: status.capacity.example.com/foo: '
                                                 'Invalid value: "1500m": must be an integer')
    status, node = add("example.com/foo", "1.5Gi")  # whole: kept as its canonical form
    assert status == 200 and node["status"]["capacity"]["example.com/foo"] == "1536Mi"
    status, node = add("example.com/bar", 3000)
    assert status == 200 and node["status"]["capacity"]["example.com/bar"] == "3k"
    # The real server checks values, not names: names outside the rules of extended resources are kept.
    status, node = add("kubernetes.io/bogus", "0.5")
    assert status == 200 and node["status"]["capacity"]["kubernetes.io/bogus"] == "500m"
    shown = api.call("GET", f"{NODES}/quantities")[1]
    assert shown["status"]["allocatable"]["kubernetes.io/bogus"] == "500m"  # the kubelet copies every name
    status, refused = api.call("PUT", f"{NODES}/quantities/status",
                               shown | {"status": shown["status"] | {"allocatable": {"pods": "-2.5"}}})
    assert (status, refused["message"]) == (422, 'Node "quantities" is invalid: [status.allocatable.pods: Invalid '
                                                 'value: "-2500m": must be greater than or equal to 0, '
                                                 'status.allocatable.pods: Invalid value: "-2500m": must be an '
                                                 'integer]')
    status, refused = api.call("PUT", f"{NODES}/quantities/status",
                               shown | {"status": shown["status"] | {"capacity": {"cpu": "two"}}})
    assert (status, refused["message"]) == (400, 'Node in version "v1" cannot be handled as a Node: quantities must '
                                                 "match the regular expression "
                                                 "'^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'")
    for text, canonical in (("2000m", "2"), ("0.1", "100m"), ("1024Ki", "1Mi"), ("1025Ki", "1025Ki"),
                            ("512Ki", "512Ki"), ("0.5Ki", "512"), ("1e3", "1e3"), ("10000", "10k"), ("1n", "1n")):
        assert kube.quantity(text) == canonical, text


def test_reregistering_a_node_clears_its_extended_resources(api):
    _, node = api.call("POST", "/_testenv/nodes", {"name": "again", "instance_type": "t3.medium"})
    patch = [{"op": "add", "path": "/status/capacity/multus-ipmgr.io~1eni-ips", "value": "6"}]
    api.call("PATCH", f"{NODES}/again/status", patch, JSON_PATCH)
    api.call("PATCH", f"{NODES}/again", {"metadata": {"labels": {"added": "by-admin"}}}, MERGE)
    before = api.call("GET", f"{NODES}/again")[1]
    assert before["status"]["allocatable"]["multus-ipmgr.io/eni-ips"] == "6"
    stream = Stream(api, f"{NODES}?watch=1&resourceVersion={version(before)}")
    try:
        status, fresh = api.call("POST", "/_testenv/nodes/again/reregister")
        assert status == 200 and fresh["metadata"]["uid"] not in (node["metadata"]["uid"], before["metadata"]["uid"])
        assert fresh["status"]["capacity"] == node["status"]["capacity"]
        assert fresh["status"]["allocatable"] == node["status"]["allocatable"]
        assert "added" not in fresh["metadata"]["labels"] and version(fresh) == version(before) + 2
        events = [stream.next(), stream.next()]
        assert [event["type"] for event in events] == ["DELETED", "ADDED"] and events[1]["object"] == fresh
    finally:
        stream.close()
    assert api.call("GET", f"{NODES}/again") == (200, fresh)
    status, refused = api.call("POST", "/_testenv/nodes/nowhere/reregister")
    assert (status, refused) == (400, {"error": "reregister: no node nowhere"})


def test_the_kubelets_update_can_lag(api):
    api.call("POST", "/_testenv/nodes", {"name": "lagging"})
    assert api.call("POST", "/_testenv/config", {"kubelet_sync_seconds": 0.5}) == (200, {})
    try:
        patch = [{"op": "add", "path": "/status/capacity/multus-ipmgr.io~1eni-ips", "value": "3"}]
        started = time.monotonic()
        api.call("PATCH", f"{NODES}/lagging/status", patch, JSON_PATCH)
        assert "multus-ipmgr.io/eni-ips" not in api.call("GET", f"{NODES}/lagging")[1]["status"]["allocatable"]
        while "multus-ipmgr.io/eni-ips" not in api.call("GET", f"{NODES}/lagging")[1]["status"]["allocatable"]:
            assert time.monotonic() - started < 5
            time.sleep(0.05)
        assert time.monotonic() - started >= 0.45
    finally:
        api.call("POST", "/_testenv/config", {"kubelet_sync_seconds": 0})
    assert api.call("POST", "/_testenv/config", {"kubelet_sync_seconds": -1})[0] == 400


def nad(name: str, config, resource_name: str | None = None, **fields) -> dict:
    annotations = {"k8s.v1.cni.cncf.io/resourceName": resource_name} if resource_name else {}
    return {"apiVersion": "k8s.cni.cncf.io/v1", "kind": "NetworkAttachmentDefinition",
            "metadata": {"name": name, "annotations": annotations}, "spec": {"config": config}} | fields


def test_network_attachment_definitions_are_created_listed_changed_and_deleted(api):
    config = json.dumps({"cniVersion": "0.3.1", "type": "ipvlan", "master": "eth1", "ipam": {"type": "static"}})
    status, made = api.call("POST", NADS, nad("ipvlan-wb", config, "multus-ipmgr.io/eni-ips",
                                             status={"state": "ok"}, extra=True))
    assert status == 201 and (made["kind"], made["apiVersion"]) == ("NetworkAttachmentDefinition",
                                                                      "k8s.cni.cncf.io/v1")
    assert made["spec"] == {"config": config} and made["metadata"]["generation"] == 1
    assert "extra" not in made and made["status"] == {"state": "ok"}  # pruned to the schema
    assert made["metadata"]["annotations"] == {"k8s.v1.cni.cncf.io/resourceName": "multus-ipmgr.io/eni-ips"}
    assert api.call("GET", f"{NADS}/ipvlan-wb") == (200, made)
    api.call("POST", "/api/v1/namespaces", {"metadata": {"name": "nets"}})
    other = "/apis/k8s.cni.cncf.io/v1/namespaces/nets/network-attachment-definitions"
    assert api.call("POST", other, nad("macvlan", "{}"))[0] == 201
    _, listing = api.call("GET", "/apis/k8s.cni.cncf.io/v1/network-attachment-definitions")
    assert listing["kind"] == "NetworkAttachmentDefinitionList" and listing["apiVersion"] == "k8s.cni.cncf.io/v1"
    assert [(item["metadata"]["namespace"], item["metadata"]["name"]) for item in listing["items"]] == [
        ("default", "ipvlan-wb"), ("nets", "macvlan")]
    assert names(api.call("GET", f"{other}?fieldSelector=metadata.name%3Dmacvlan")[1]["items"]) == ["macvlan"]
    assert api.call("GET", f"{other}?fieldSelector=spec.config%3D%7B%7D")[0] == 400

    status, refused = api.call("POST", NADS, nad("typed", 42))
    assert (status, refused["message"]) == (
        422, 'NetworkAttachmentDefinition.k8s.cni.cncf.io "typed" is invalid: spec.config: Invalid value: '
             '"integer": spec.config in body must be of type string: "integer"')
    assert refused["details"]["causes"][0]["reason"] == "FieldValueTypeInvalid"
    status, refused = api.call("POST", NADS, {"metadata": {"name": "empty"}, "spec": {}})
    assert (status, refused["message"]) == (
        422, 'NetworkAttachmentDefinition.k8s.cni.cncf.io "empty" is invalid: spec.config: Required value')
    status, refused = api.call("POST", NADS, {"metadata": {"name": "bare"}})
    assert refused["message"].endswith('"bare" is invalid: spec: Required value')
    assert api.call("POST", NADS, nad("ipvlan-wb", config))[1]["message"] == (
        'network-attachment-definitions.k8s.cni.cncf.io "ipvlan-wb" already exists')

    status, patched = api.call("PATCH", f"{NADS}/ipvlan-wb", {"spec": {"config": "{}"}}, MERGE)
    assert status == 200 and patched["spec"]["config"] == "{}" and patched["metadata"]["generation"] == 2
    status, labelled = api.call("PATCH", f"{NADS}/ipvlan-wb", {"metadata": {"labels": {"a": "b"}}}, MERGE)
    assert status == 200 and labelled["metadata"]["generation"] == 2
    status, refused = api.call("PUT", f"{NADS}/ipvlan-wb", nad("ipvlan-wb", config))
    assert (status, refused["message"]) == (
        422, 'network-attachment-definitions.k8s.cni.cncf.io "ipvlan-wb" is invalid: metadata.resourceVersion: '
             "Invalid value: 0: must be specified for an update")
    replaced = nad("ipvlan-wb", config)
    replaced["metadata"]["resourceVersion"] = labelled["metadata"]["resourceVersion"]
    status, updated = api.call("PUT", f"{NADS}/ipvlan-wb", replaced)
    assert status == 200 and updated["spec"]["config"] == config and "status" not in updated
    status, deleted = api.call("DELETE", f"{NADS}/ipvlan-wb")
    assert (status, deleted["details"]) == (200, {"name": "ipvlan-wb", "group": "k8s.cni.cncf.io",
                                                  "kind": "network-attachment-definitions",
                                                  "uid": made["metadata"]["uid"]})
    assert api.call("GET", f"{NADS}/ipvlan-wb")[1]["message"] == (
        'network-attachment-definitions.k8s.cni.cncf.io "ipvlan-wb" not found')
    assert [entry["kind"] for entry in api.writes()[-3:]] == ["NetworkAttachmentDefinition"] * 3


AGENT = "system:serviceaccount:multus-ipmgr:multus-ipmgr-agent"


def test_rbac_allows_exactly_what_the_rules_allow_and_denies_with_the_real_message(api):
    api.call("POST", "/_testenv/nodes", {"name": "rbac-node"})
    api.call("POST", "/_testenv/nodes", {"name": "rbac-other"})
    api.call("POST", "/api/v1/namespaces", {"metadata": {"name": "multus"}})
    rules = [{"apiGroups": [""], "resources": ["nodes/status"], "verbs": ["patch"]},
             {"apiGroups": [""], "resources": ["nodes"], "verbs": ["get", "list", "watch"],
              "resourceNames": ["rbac-node"]},
             {"apiGroups": ["k8s.cni.cncf.io"], "resources": ["*"], "verbs": ["get", "list", "create"],
              "namespace": "multus"}]
    status, made = api.call("POST", "/_testenv/rbac", {"user": AGENT, "rules": rules})
    assert status == 200 and made["user"] == AGENT and len(made["token"]) == 32
    config = yaml.safe_load(Path(made["kubeconfig"]).read_text())
    assert config["users"][0]["user"] == {"token": made["token"]}
    assert config["clusters"][0]["cluster"]["server"] == api.endpoint
    assert config["contexts"][0]["context"]["namespace"] == "multus-ipmgr"
    token = made["token"]

    def call(method: str, path: str, body=None, content_type: str = "application/json"):
        return api.call(method, path, body, content_type, token)

    def refusal(verb: str, what: str, resource: str, scope: str = "at the cluster scope", group: str = "") -> str:
        return (f'{what} is forbidden: User "{AGENT}" cannot {verb} resource "{resource}" in API group "{group}" '
                f"{scope}")

    patch = [{"op": "add", "path": "/status/capacity/multus-ipmgr.io~1eni-ips", "value": "4"}]
    assert call("PATCH", f"{NODES}/rbac-node/status", patch, JSON_PATCH)[0] == 200
    assert call("PATCH", f"{NODES}/rbac-other/status", patch, JSON_PATCH)[0] == 200  # no resourceNames there
    status, refused = call("PATCH", f"{NODES}/rbac-node", {"metadata": {"labels": {"a": "b"}}}, MERGE)
    assert (status, refused["reason"], refused["message"], refused["details"]) == (
        403, "Forbidden", refusal("patch", 'nodes "rbac-node"', "nodes"), {"name": "rbac-node", "kind": "nodes"})
    assert call("GET", f"{NODES}/rbac-node")[0] == 200
    assert call("GET", f"{NODES}/rbac-node/status")[1]["message"] == refusal("get", 'nodes "rbac-node"',
                                                                              "nodes/status")
    assert call("GET", f"{NODES}/rbac-other")[1]["message"] == refusal("get", 'nodes "rbac-other"', "nodes")
    # resourceNames: a list or watch is allowed only when named by field selector.
    status, listing = call("GET", f"{NODES}?fieldSelector=metadata.name%3Drbac-node")
    assert status == 200 and names(listing["items"]) == ["rbac-node"]
    status, refused = call("GET", NODES)
    assert (status, refused["message"], refused["details"]) == (403, refusal("list", "nodes", "nodes"),
                                                                {"kind": "nodes"})
    assert call("GET", f"{NODES}?watch=1&timeoutSeconds=1")[1]["message"] == refusal("watch", "nodes", "nodes")
    stream = Stream(api, f"{NODES}?watch=1&fieldSelector=metadata.name%3Drbac-node&resourceVersion=0", token)
    assert stream.next()["object"]["metadata"]["name"] == "rbac-node"
    stream.close()
    # A Role's rules hold in its namespace only.
    multus = "/apis/k8s.cni.cncf.io/v1/namespaces/multus/network-attachment-definitions"
    assert call("POST", multus, nad("allowed", "{}"))[0] == 201
    assert call("GET", f"{multus}/allowed")[0] == 200
    assert call("DELETE", f"{multus}/allowed")[1]["message"] == refusal(
        "delete", 'network-attachment-definitions.k8s.cni.cncf.io "allowed"', "network-attachment-definitions",
        'in the namespace "multus"', "k8s.cni.cncf.io")
    status, refused = call("POST", NADS, nad("elsewhere", "{}"))
    assert (status, refused["message"]) == (403, refusal(
        "create", "network-attachment-definitions.k8s.cni.cncf.io", "network-attachment-definitions",
        'in the namespace "default"', "k8s.cni.cncf.io"))
    assert call("GET", "/apis/k8s.cni.cncf.io/v1/network-attachment-definitions")[0] == 403  # cluster-wide
    assert call("GET", "/api/v1/namespaces/multus/secrets")[1]["message"] == refusal(
        "list", "secrets", "secrets", 'in the namespace "multus"')
    # Every authenticated user may get the discovery paths (not served here: 404), nothing else.
    assert call("GET", "/version")[0] == 404
    status, refused = call("GET", "/metrics")
    assert (status, refused["message"], refused["details"]) == (
        403, f'forbidden: User "{AGENT}" cannot get path "/metrics"', {})

    denied = api.call("GET", "/_testenv/denied")[1]["denied"]
    assert denied[0]["user"] == AGENT and (denied[0]["verb"], denied[0]["resource"], denied[0]["name"]) == (
        "patch", "nodes", "rbac-node")
    assert denied[-1]["message"] == refused["message"] and not denied[-1]["resourceRequest"]
    writes = [entry for entry in api.writes() if entry["user"] == AGENT]
    assert [(entry["verb"], entry["name"], entry["subresource"], entry["code"]) for entry in writes] == [
        ("patch", "rbac-node", "status", 200), ("patch", "rbac-other", "status", 200),
        ("patch", "rbac-node", None, 403), ("create", "allowed", None, 201), ("delete", "allowed", None, 403),
        ("create", "elsewhere", None, 403)]
    # Without a token, or with an unknown one, everything is allowed as before.
    assert api.call("PATCH", f"{NODES}/rbac-node", {"metadata": {"labels": {"a": "b"}}}, MERGE)[0] == 200
    assert api.call("GET", NODES, token="not-registered")[0] == 200
    # Wildcards, */subresource, and a token registered again.
    wide = [{"apiGroups": ["*"], "resources": ["*/status"], "verbs": ["*"]}]
    assert api.call("POST", "/_testenv/rbac", {"user": "wide", "token": token, "rules": wide})[1]["token"] == token
    assert call("GET", f"{NODES}/rbac-node/status")[0] == 200
    assert call("GET", f"{NODES}/rbac-node")[1]["message"].startswith('nodes "rbac-node" is forbidden: User "wide"')
    assert api.call("POST", "/_testenv/rbac", {"rules": []})[0] == 400
