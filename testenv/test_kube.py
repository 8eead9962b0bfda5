"""The bed's Kubernetes API server (testenv/kube.py), asked from a node's namespace as a node
agent asks it: pods, namespaces and nodes, its faults, and metadata closed to pods. Needs root
(skipped otherwise)."""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
import time
from pathlib import Path
from urllib.parse import quote

import pytest
import yaml

from testenv.client import Bed, BedError, Node

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root: pods are network namespaces")

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
