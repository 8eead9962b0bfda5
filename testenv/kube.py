"""A minimal Kubernetes API server for the test bed: the bed's pods, their namespaces and the
topology's nodes as `v1` Pod, Namespace and Node objects, read-only, over plain HTTP on the
bed's gateway, for clients such as the node agent's `kube::runtime::watcher` (kube 5), whose
default is list-then-watch: `GET /api/v1/pods?fieldSelector=...&limit=500`, then
`?watch=true&timeoutSeconds=290&allowWatchBookmarks=true&resourceVersion=<the list's>`
(kube-runtime 5.0.0, watcher.rs `to_list_params` and `to_watch_params`; kube-core 5.0.0,
params.rs).

Paths: `GET /api/v1/pods`, `/api/v1/namespaces/{ns}/pods`, `/api/v1/namespaces` and
`/api/v1/nodes` (lists, or watches with `watch`), `/api/v1/namespaces/{ns}/pods/{name}`,
`/api/v1/namespaces/{name}` and `/api/v1/nodes/{name}`. Each rule follows the real API server
and names its source (k8s.io/apiserver unless said otherwise; "API concepts" is the
Kubernetes documentation page of that name):

* One resourceVersion counter for every kind, as etcd's revision; each kind has a watch cache
  of its own (its event history), as each resource has a cacher.
* Lists answer the current state with `metadata.resourceVersion`, whatever `resourceVersion`
  the client asks for (each of "", "0" and NotOlderThan may be served from the latest);
  `limit` is not applied, so a list never has a `continue` token. Items sit in etcd's key
  order (namespace, then name) and, as in every list, carry no apiVersion and kind.
* `fieldSelector`: the fields each kind can be selected by (pkg/registry/core/{pod,namespace,
  node}/strategy.go, `*ToSelectableFields`), with `=`, `==` and `!=`, terms joined by commas;
  any other field is 400 BadRequest "field label not supported" (backslash escapes are not
  read). `labelSelector`: `k`, `!k`, `k=v`, `k==v`, `k!=v`, `k in (a,b)`, `k notin (a,b)`.
* Watches stream `{"type", "object"}` lines in a chunked response. `resourceVersion` unset or
  "0" starts with a synthetic ADDED for each object, then the changes after the current
  version; any other version gets the changes after it (API concepts, "Semantics for watch").
  A version older than the kind's event history is a 410 Expired ERROR event
  (storage/cacher/watch_cache.go, "too old resource version"); one newer than the current
  waits up to 3 s, then is a 504 Timeout ERROR event ("Too large resource version",
  watch_cache.go `waitUntilFreshAndBlock`). A change that makes an object match or stop
  matching the selectors reaches the watcher as ADDED or DELETED (cacher/cache_watcher.go,
  `convertToWatchEvent`). `sendInitialEvents=true` (with `resourceVersionMatch=NotOlderThan`
  and `allowWatchBookmarks`) ends the synthetic ADDEDs with a BOOKMARK annotated
  `k8s.io/initial-events-end` (API concepts, "Streaming lists").
* With `allowWatchBookmarks`, a BOOKMARK (an object of the watched kind holding only its
  resourceVersion) roughly every `bookmark_seconds` (60, the cacher's frequency) and 2 s
  before the watch's deadline (cache_watcher.go, `nextBookmarkTime`). `timeoutSeconds` ends
  the stream; without it the server picks between 1800 and 3600 s (kube-apiserver
  `--min-request-timeout`, randomised as in endpoints/handlers/get.go).

The objects change only through the bed: a pod's creation is one ADDED with the whole object
(scheduling and the status updates before it are left out), its namespace's ADDED before it
when the namespace is new; an annotation change is one MODIFIED, none when it changes nothing
(storage/etcd3 `GuaranteedUpdate` does not write an unchanged object); a deletion is what a
graceful delete shows: MODIFIED with `deletionTimestamp`, then, once the runtime has removed
the sandbox, DELETED. The system namespaces exist from the start and each topology node has
its Node (read-only).

Faults: for some seconds every watch, open or new, delivers nothing (no event, no bookmark,
not its end) and then what it held, in order, while lists are answered (a proxy or API
server that silently stops delivering); or every new request is refused with 503 (open
watches go on).
"""

from __future__ import annotations

import collections
import json
import random
import re
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Callable, Iterator, NamedTuple
from urllib.parse import parse_qs, urlsplit

NETWORK_STATUS = "k8s.v1.cni.cncf.io/network-status"
INITIAL_EVENTS_END = "k8s.io/initial-events-end"
# The network Multus delegates eth0 to on EKS: the VPC CNI's configuration, named aws-cni.
DEFAULT_NETWORK = "aws-cni"
DEFAULT_MULTUS_NETWORK = "multus-net"
WAIT_FOR_FRESH_SECONDS = 3.0  # watch_cache.go, blockTimeout of waitUntilFreshAndBlock
PRE_TIMEOUT_BOOKMARK_SECONDS = 2.0  # cache_watcher.go, nextBookmarkTime: deadline - 2 s

# pkg/registry/core/pod/strategy.go, PodToSelectableFields, with the generic metadata ones.
POD_FIELDS: dict[str, Callable[[dict], str]] = {
    "metadata.name": lambda pod: pod["metadata"]["name"],
    "metadata.namespace": lambda pod: pod["metadata"]["namespace"],
    "spec.nodeName": lambda pod: pod["spec"].get("nodeName", ""),
    "spec.restartPolicy": lambda pod: pod["spec"]["restartPolicy"],
    "spec.schedulerName": lambda pod: pod["spec"]["schedulerName"],
    "spec.serviceAccountName": lambda pod: pod["spec"]["serviceAccountName"],
    "spec.hostNetwork": lambda pod: "true" if pod["spec"].get("hostNetwork") else "false",
    "status.phase": lambda pod: pod["status"]["phase"],
    "status.podIP": lambda pod: pod["status"].get("podIP", ""),
    "status.nominatedNodeName": lambda pod: pod["status"].get("nominatedNodeName", ""),
}
# pkg/registry/core/namespace/strategy.go, NamespaceToSelectableFields ("name" too: "a bug,
# but we need to support it for backward compatibility").
NAMESPACE_FIELDS: dict[str, Callable[[dict], str]] = {
    "metadata.name": lambda namespace: namespace["metadata"]["name"],
    "name": lambda namespace: namespace["metadata"]["name"],
    "status.phase": lambda namespace: namespace["status"]["phase"],
}
# pkg/registry/core/node/strategy.go, NodeToSelectableFields.
NODE_FIELDS: dict[str, Callable[[dict], str]] = {
    "metadata.name": lambda node: node["metadata"]["name"],
    "spec.unschedulable": lambda node: "true" if node["spec"].get("unschedulable") else "false",
}


class Resource(NamedTuple):
    """A kind the server serves: its path's plural, whether its objects live in a namespace,
    and the fields they can be selected by."""

    kind: str
    plural: str
    namespaced: bool
    fields: dict[str, Callable[[dict], str]]


RESOURCES = {resource.plural: resource for resource in (
    Resource("Pod", "pods", True, POD_FIELDS), Resource("Namespace", "namespaces", False, NAMESPACE_FIELDS),
    Resource("Node", "nodes", False, NODE_FIELDS))}
# The namespaces the control plane makes at start (pkg/controlplane/controller: the system
# namespaces controller, and the kubernetes Service's controller for "default").
SYSTEM_NAMESPACES = ("default", "kube-node-lease", "kube-public", "kube-system")
NAMESPACE_NAME_LABEL = "kubernetes.io/metadata.name"  # pkg/apis/core/v1/defaults.go, SetDefaults_Namespace
LABEL_KEY = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9._/-]*[A-Za-z0-9])?$")


class ApiError(Exception):
    """A request the API server refuses: HTTP status, reason and message of its Status."""

    def __init__(self, code: int, reason: str, message: str):
        super().__init__(message)
        self.code, self.reason, self.message = code, reason, message

    def status(self) -> dict:
        return status_object(self.code, self.reason, self.message)


def status_object(code: int, reason: str, message: str) -> dict:
    """A `v1` Status of failure, as the API server answers errors (metav1.Status)."""
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": message,
            "reason": reason, "code": code}


def now_rfc3339() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def query_bool(query: dict[str, list[str]], name: str) -> bool:
    """A boolean query parameter: set and neither "0" nor "false" in any case
    (apimachinery runtime/conversion.go, Convert_Slice_string_To_bool)."""
    values = query.get(name)
    return bool(values) and values[0] != "0" and values[0].lower() != "false"


def field_selector(text: str, fields: dict[str, Callable[[dict], str]]) -> Callable[[dict], bool]:
    """The predicate of a field selector over objects with `fields` (fields.ParseSelector,
    escapes aside)."""
    terms = []
    for term in filter(None, (part.strip() for part in text.split(","))):
        for operator in ("!=", "==", "="):
            field, found, value = term.partition(operator)
            if found:
                break
        else:
            raise ApiError(400, "BadRequest", f"invalid selector: '{text}'; can't understand '{term}'")
        if field not in fields:
            raise ApiError(400, "BadRequest", f"field label not supported: {field}")
        terms.append((fields[field], operator == "!=", value))
    return lambda item: all((get(item) == value) != negated for get, negated, value in terms)


def label_selector(text: str) -> Callable[[dict], bool]:
    """The predicate of a label selector (labels.Parse: equality, existence and set terms;
    `gt` and `lt` are not read)."""
    requirements = [label_requirement(term) for term in re.split(r",(?![^()]*\))", text) if term.strip()]
    for key, _ in requirements:
        if not LABEL_KEY.match(key):
            raise ApiError(400, "BadRequest", f"unable to parse requirement: invalid label key {key!r}")
    return lambda item: all(test(item["metadata"].get("labels", {})) for _, test in requirements)


def label_requirement(term: str) -> tuple[str, Callable[[dict[str, str]], bool]]:
    """One term of a label selector: its key and its test on a pod's labels (`!=` and
    `notin` match a pod without the label, as in labels.Requirement.Matches)."""
    term = term.strip()
    if match := re.fullmatch(r"(\S+)\s+(in|notin)\s+\(([^()]*)\)", term):
        key, values = match[1], {value.strip() for value in match[3].split(",")}
        if match[2] == "in":
            return key, lambda labels: labels.get(key) in values
        return key, lambda labels: labels.get(key) not in values
    for operator in ("!=", "==", "="):
        key, found, value = term.partition(operator)
        if found:
            key, value = key.strip(), value.strip()
            if operator == "!=":
                return key, lambda labels: labels.get(key) != value
            return key, lambda labels: labels.get(key) == value
    if term.startswith("!"):
        key = term[1:].strip()
        return key, lambda labels: key not in labels
    return term, lambda labels: term in labels


def network_status(spec: dict, pod: dict) -> list[dict]:
    """The `k8s.v1.cni.cncf.io/network-status` list Multus' thick plugin writes at CNI ADD:
    the cluster default network on eth0, then each Multus interface of the creation request
    (Multus pkg/types NetworkStatus: empty `ips` and `mac` left out, `dns` always there).
    Addresses added later are not in it: Multus writes it once."""
    entries = [{"name": DEFAULT_NETWORK, "interface": "eth0", "ips": [pod["pod_ip"]], "default": True, "dns": {}}]
    macs = {interface["name"]: interface["mac"] for interface in pod["interfaces"]}
    for interface in spec.get("interfaces", []):
        entry = {"name": f"{pod['namespace']}/{interface.get('network', DEFAULT_MULTUS_NETWORK)}",
                 "interface": interface["name"]}
        addresses = [address.split("/")[0] for address in interface.get("addresses", [])]
        if addresses:
            entry["ips"] = addresses
        entry["mac"] = macs[interface["name"]]
        entry["dns"] = {}
        entries.append(entry)
    return entries


def string_map(spec: dict, key: str) -> dict[str, str]:
    """`spec[key]`, a map of strings as ObjectMeta's labels and annotations are."""
    value = spec.get(key, {})
    if not isinstance(value, dict) or not all(isinstance(item, str) for item in value.values()):
        raise ValueError(f"{key} must map names to strings")
    return value


def object_meta(name: str, labels: dict[str, str], annotations: dict[str, str], uid: str | None = None,
                namespace: str | None = None) -> dict:
    """An object's metadata as the API server stores it (empty labels and annotations left out)."""
    metadata = {"name": name} | ({"namespace": namespace} if namespace is not None else {})
    metadata |= {"uid": uid or str(uuid.uuid4()), "creationTimestamp": now_rfc3339()}
    if labels:
        metadata["labels"] = labels
    if annotations:
        metadata["annotations"] = annotations
    return metadata


def pod_object(spec: dict, pod: dict, host_ip: str) -> dict:
    """The `v1` Pod of a bed pod: `spec` is its creation request, `pod` what the bed made of
    it (name, node, namespace, uid, eth0 address, interface MACs), `host_ip` its node's
    address of the pod IP's family (as on an IPv6 cluster, where the kubelet's node IP is
    IPv6). Defaulted fields are filled in as the API server's defaulting does."""
    annotations = {}
    if spec.get("network_status", True):
        # Multus writes it with Go's json.MarshalIndent(statuses, "", "    ").
        annotations[NETWORK_STATUS] = json.dumps(network_status(spec, pod), indent=4)
    annotations |= string_map(spec, "annotations")
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": object_meta(pod["name"], string_map(spec, "labels"), annotations, pod["uid"], pod["namespace"]),
        "spec": {"nodeName": pod["node"], "containers": [{"name": "app", "image": "busybox"}],
                 "restartPolicy": "Always", "schedulerName": "default-scheduler", "serviceAccountName": "default"},
        "status": {"phase": "Running", "hostIP": host_ip, "hostIPs": [{"ip": host_ip}], "podIP": pod["pod_ip"],
                   "podIPs": [{"ip": pod["pod_ip"]}]},
    }


def namespace_object(name: str, labels: dict[str, str] | None = None,
                     annotations: dict[str, str] | None = None) -> dict:
    """A `v1` Namespace as created: the `kubernetes.io/metadata.name` label (SetDefaults_Namespace),
    the kubernetes finalizer and phase Active (namespace strategy.go, PrepareForCreate)."""
    labels = dict(labels or {}) | {NAMESPACE_NAME_LABEL: name}
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": object_meta(name, labels, dict(annotations or {})),
            "spec": {"finalizers": ["kubernetes"]}, "status": {"phase": "Active"}}


def node_object(name: str, node: dict, region: str, address: str, address6: str) -> dict:
    """The `v1` Node of topology node `name` (`node`: its instance id, type and zone): the
    kubelet's labels and addresses (pkg/kubelet/kubelet_node_status.go, nodestatus/setters.go:
    the node IPs, then the hostname), the AWS cloud provider's (k8s.io/cloud-provider-aws:
    providerID `aws:///<zone>/<instance id>`, zone, region and instance type labels). Its
    InternalIPs are its namespace's eth0 addresses, where its pods' traffic comes from."""
    labels = {"kubernetes.io/arch": "amd64", "kubernetes.io/hostname": name, "kubernetes.io/os": "linux",
              "node.kubernetes.io/instance-type": node["instance_type"], "topology.kubernetes.io/region": region,
              "topology.kubernetes.io/zone": node["availability_zone"]}
    return {
        "apiVersion": "v1", "kind": "Node", "metadata": object_meta(name, labels, {}),
        "spec": {"providerID": f"aws:///{node['availability_zone']}/{node['instance_id']}"},
        "status": {"addresses": [{"type": "InternalIP", "address": address},
                                 {"type": "InternalIP", "address": address6}, {"type": "Hostname", "address": name}],
                   "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady",
                                   "message": "kubelet is posting ready status"}]},
    }


class Event(NamedTuple):
    """One change in a kind's history: its version and type, the object after it (None once
    deleted) and before it (None when added)."""

    version: int
    type: str
    object: dict | None
    previous: dict | None


def copy(value: dict) -> dict:
    return json.loads(json.dumps(value))


class Cluster:
    """The objects by (kind, key) (a pod's key is its bed name, other objects' their name), the
    resourceVersion counter they share and each kind's bounded history of changes that
    watches are served from (the API server's watch caches)."""

    def __init__(self, history: int = 1000, bookmark_seconds: float = 60.0):
        self.changed = threading.Condition()
        self.objects: dict[tuple[str, str], dict] = {}
        self.version = 1
        self.history_size = history
        self.histories: dict[str, collections.deque[Event]] = {}
        # By kind: the newest version its history dropped (a watch must start at it or later).
        self.dropped: dict[str, int] = {}
        self.bookmark_seconds = bookmark_seconds
        self.stalled_until = 0.0
        self.unavailable_until = 0.0
        self.closed = False
        self.streams = 0
        for name in SYSTEM_NAMESPACES:
            self.add("Namespace", name, namespace_object(name))

    def configure(self, history: int | None = None, bookmark_seconds: float | None = None) -> None:
        """Resizes the event histories (keeping their newest events) or changes the bookmark interval."""
        with self.changed:
            if history is not None:
                self.history_size = history
                for kind, events in self.histories.items():
                    kept = collections.deque(events, maxlen=history)
                    if len(kept) < len(events):
                        self.dropped[kind] = events[len(events) - len(kept) - 1].version
                    self.histories[kind] = kept
            if bookmark_seconds is not None:
                self.bookmark_seconds = bookmark_seconds
            self.changed.notify_all()

    def faults(self, stall_seconds: float | None = None, unavailable_seconds: float | None = None) -> None:
        """Stalls every watch for `stall_seconds`, or refuses every request for
        `unavailable_seconds`, from now."""
        with self.changed:
            now = time.monotonic()
            if stall_seconds is not None:
                self.stalled_until = max(self.stalled_until, now + stall_seconds)
            if unavailable_seconds is not None:
                self.unavailable_until = max(self.unavailable_until, now + unavailable_seconds)
            self.changed.notify_all()

    def wait_unstalled(self) -> None:
        """Returns once no stall is on (or the bed closes)."""
        with self.changed:
            while not self.closed and (left := self.stalled_until - time.monotonic()) > 0:
                self.changed.wait(left)

    def unavailable(self) -> bool:
        return time.monotonic() < self.unavailable_until

    def record(self, kind: str, key: str, event_type: str, item: dict | None, previous: dict | None) -> dict:
        """Stores a change under the next resourceVersion and wakes the watches; the caller
        holds `changed`."""
        self.version += 1
        stored = copy(item if item is not None else previous)
        stored["metadata"]["resourceVersion"] = str(self.version)
        if event_type == "DELETED":
            self.objects.pop((kind, key))
        else:
            self.objects[(kind, key)] = stored
        history = self.histories.setdefault(kind, collections.deque(maxlen=self.history_size))
        if len(history) == history.maxlen:
            self.dropped[kind] = history[0].version if history else self.version
        history.append(Event(self.version, event_type, stored if item is not None else None, previous))
        self.changed.notify_all()
        return stored

    def add(self, kind: str, key: str, item: dict) -> dict:
        with self.changed:
            if (kind, key) in self.objects:
                plural = next(resource.plural for resource in RESOURCES.values() if resource.kind == kind)
                raise ValueError(f'{plural} "{item["metadata"]["name"]}" already exists')
            return self.record(kind, key, "ADDED", item, None)

    def ensure_namespace(self, name: str) -> None:
        """Namespace `name`, made (ADDED) unless it exists."""
        with self.changed:
            if ("Namespace", name) not in self.objects:
                self.add("Namespace", name, namespace_object(name))

    def annotate(self, kind: str, key: str, changes: dict) -> dict:
        """`{"set": {name: value}, "remove": [name]}` on the object's annotations; the object."""
        with self.changed:
            current = self.get(kind, key)
            annotations = dict(current["metadata"].get("annotations", {}))
            for name in changes.get("remove", []):
                annotations.pop(name, None)
            annotations |= string_map(changes, "set")
            if annotations == current["metadata"].get("annotations", {}):
                return current
            changed = copy(current)
            changed["metadata"]["annotations"] = annotations
            if not annotations:
                del changed["metadata"]["annotations"]
            return self.record(kind, key, "MODIFIED", changed, current)

    def start_deletion(self, kind: str, key: str) -> dict:
        """A graceful delete's first step: `deletionTimestamp` set, 30 s of grace (the default)."""
        with self.changed:
            current = self.get(kind, key)
            terminating = copy(current)
            terminating["metadata"] |= {"deletionTimestamp": now_rfc3339(), "deletionGracePeriodSeconds": 30}
            return self.record(kind, key, "MODIFIED", terminating, current)

    def delete(self, kind: str, key: str) -> None:
        with self.changed:
            self.record(kind, key, "DELETED", None, self.get(kind, key))

    def get(self, kind: str, key: str) -> dict:
        """The object; KeyError when there is none."""
        with self.changed:
            return self.objects[(kind, key)]

    def has(self, kind: str, key: str) -> bool:
        with self.changed:
            return (kind, key) in self.objects

    def find(self, kind: str, namespace: str | None, name: str) -> dict | None:
        """The object named `name` (in `namespace`, for a kind that lives in one)."""
        with self.changed:
            item = self.objects.get((kind, name))
            return item if item is not None and item["metadata"].get("namespace") == namespace else None

    def snapshot(self, kind: str, matches: Callable[[dict], bool]) -> tuple[int, list[dict]]:
        """The current version and the objects of `kind` that match, in etcd's key order."""
        with self.changed:
            items = sorted((item for (of_kind, _), item in self.objects.items() if of_kind == kind and matches(item)),
                           key=lambda item: (item["metadata"].get("namespace", ""), item["metadata"]["name"]))
            return self.version, items

    def close(self, limit: float = 2.0) -> None:
        """Ends every watch stream (waiting up to `limit` for them to finish writing)."""
        deadline = time.monotonic() + limit
        with self.changed:
            self.closed = True
            self.changed.notify_all()
            while self.streams and time.monotonic() < deadline:
                self.changed.wait(deadline - time.monotonic())

    def watch(self, kind: str, since: str, matches: Callable[[dict], bool], deadline: float, bookmarks: bool,
              initial_events: bool) -> Iterator[dict]:
        """The events of one watch on `kind` until `deadline`, the bed's end or an ERROR event."""
        if since not in ("", "0"):
            with self.changed:
                fresh = self.changed.wait_for(lambda: self.version >= int(since) or self.closed,
                                              WAIT_FOR_FRESH_SECONDS)
                current = self.version
            if not fresh:
                error = status_object(504, "Timeout", f"Too large resource version: {since}, current: {current}")
                error["details"] = {"causes": [{"reason": "ResourceVersionTooLarge",
                                                "message": "Too large resource version"}], "retryAfterSeconds": 1}
                yield {"type": "ERROR", "object": error}
                return
        if since in ("", "0") or initial_events:
            version, items = self.snapshot(kind, matches)
            yield from ({"type": "ADDED", "object": item} for item in items)
            if initial_events:
                yield bookmark(kind, version, {INITIAL_EVENTS_END: "true"})
        else:
            version = int(since)
        next_bookmark = self.next_bookmark(time.monotonic(), deadline) if bookmarks else None
        while True:
            with self.changed:
                while (self.version == version and not self.closed and time.monotonic() < deadline
                       and (next_bookmark is None or time.monotonic() < next_bookmark)):
                    wake = deadline if next_bookmark is None else min(deadline, next_bookmark)
                    self.changed.wait(wake - time.monotonic())
                if self.closed or time.monotonic() >= deadline:
                    return
                oldest = self.dropped.get(kind, 0)
                history = self.histories.get(kind, ())
                events = [event for event in history if event.version > version] if version >= oldest else None
                version = self.version if events is not None else version
            if events is None:
                yield {"type": "ERROR", "object": status_object(
                    410, "Expired", f"too old resource version: {version} ({oldest})")}
                return
            for event in events:
                shown = visible(event, matches)
                if shown:
                    yield shown
            if next_bookmark is not None and time.monotonic() >= next_bookmark:
                yield bookmark(kind, version)
                next_bookmark = self.next_bookmark(time.monotonic(), deadline)

    def next_bookmark(self, now: float, deadline: float) -> float | None:
        """When the next BOOKMARK is due: in `bookmark_seconds`, or 2 s before the deadline
        when that comes first; None when that moment has passed (nextBookmarkTime)."""
        due = min(now + self.bookmark_seconds, deadline - PRE_TIMEOUT_BOOKMARK_SECONDS)
        return due if due >= now else None


def visible(event: Event, matches: Callable[[dict], bool]) -> dict | None:
    """What a watcher with selector `matches` sees of `event` (convertToWatchEvent): an
    object that starts matching is ADDED, one that stops is DELETED (its last matching
    state, at the event's version)."""
    now_matches = event.object is not None and matches(event.object)
    matched = event.previous is not None and matches(event.previous)
    if now_matches:
        return {"type": "MODIFIED" if matched else "ADDED", "object": event.object}
    if matched:
        gone = copy(event.previous)
        gone["metadata"]["resourceVersion"] = str(event.version)
        return {"type": "DELETED", "object": gone}
    return None


def bookmark(kind: str, version: int, annotations: dict[str, str] | None = None) -> dict:
    """A BOOKMARK event: an object of `kind` holding only the version (and the
    initial-events-end mark)."""
    metadata: dict = {"resourceVersion": str(version)}
    if annotations:
        metadata["annotations"] = annotations
    return {"type": "BOOKMARK", "object": {"kind": kind, "apiVersion": "v1", "metadata": metadata}}


def handler(cluster: Cluster):
    class Handler(BaseHTTPRequestHandler):
        """One connection to the API server: GETs of pods, namespaces and nodes, everything
        else 405."""

        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True  # as the IMDS handler: no delayed-ACK stall per answer

        def log_message(self, *args):  # quiet
            pass

        def do_GET(self):
            if self.refused():
                return
            url = urlsplit(self.path)
            query = parse_qs(url.query, keep_blank_values=True)
            try:
                self.route(url.path.rstrip("/").split("/")[1:], query)
            except ApiError as error:
                self.reply(error.code, error.status())

        def do_POST(self):
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            if not self.refused():
                self.reply(405, status_object(405, "MethodNotAllowed",
                                              "the server does not allow this method on the requested resource"))

        do_PUT = do_PATCH = do_DELETE = do_POST

        def refused(self) -> bool:
            """Answers 503 while the server is unavailable (apimachinery pkg/api/errors,
            NewGenericServerResponse's message for 503)."""
            if cluster.unavailable():
                self.reply(503, status_object(503, "ServiceUnavailable",
                                              "the server is currently unable to handle the request"))
                return True
            return False

        def route(self, parts: list[str], query: dict[str, list[str]]) -> None:
            rest, namespace = parts[2:], None
            if parts[:2] != ["api", "v1"]:
                rest = []
            elif len(rest) >= 3 and rest[0] == "namespaces" and rest[2] in RESOURCES and RESOURCES[rest[2]].namespaced:
                namespace, rest = rest[1], rest[2:]
            resource = RESOURCES.get(rest[0]) if rest else None
            if resource is None or len(rest) > 2 or (resource.namespaced and namespace is None and len(rest) == 2):
                raise ApiError(404, "NotFound", "the server could not find the requested resource")
            if len(rest) == 1:
                return self.collection(resource, namespace, query)
            item = cluster.find(resource.kind, namespace, rest[1])
            if item is None:
                error = status_object(404, "NotFound", f'{resource.plural} "{rest[1]}" not found')
                error["details"] = {"name": rest[1], "kind": resource.plural}
                return self.reply(404, error)
            return self.reply(200, item)

        def collection(self, resource: Resource, namespace: str | None, query: dict[str, list[str]]) -> None:
            fields = field_selector(query.get("fieldSelector", [""])[0], resource.fields)
            labels = label_selector(query.get("labelSelector", [""])[0])

            def matches(item: dict) -> bool:
                return ((namespace is None or item["metadata"]["namespace"] == namespace) and fields(item)
                        and labels(item))

            version = query.get("resourceVersion", [""])[0]
            if version not in ("", "0") and not version.isdigit():
                raise ApiError(400, "BadRequest", f"invalid resource version: {version}")
            if query_bool(query, "watch"):
                return self.watch(resource.kind, version, matches, query)
            if query_bool(query, "sendInitialEvents"):
                raise ApiError(422, "Invalid", "sendInitialEvents: Forbidden: sendInitialEvents is forbidden for list")
            current, items = cluster.snapshot(resource.kind, matches)
            items = [{key: value for key, value in item.items() if key not in ("apiVersion", "kind")} for item in items]
            self.reply(200, {"kind": f"{resource.kind}List", "apiVersion": "v1",
                             "metadata": {"resourceVersion": str(current)}, "items": items})

        def watch(self, kind: str, version: str, matches, query: dict[str, list[str]]) -> None:
            bookmarks = query_bool(query, "allowWatchBookmarks")
            initial_events = query_bool(query, "sendInitialEvents")
            match = query.get("resourceVersionMatch", [""])[0]
            # apis/meta/internalversion/validation, ValidateListOptions.
            if initial_events and match != "NotOlderThan":
                raise ApiError(422, "Invalid", "resourceVersionMatch: Forbidden: sendInitialEvents requires "
                                               "setting resourceVersionMatch to NotOlderThan")
            if initial_events and not bookmarks:
                raise ApiError(422, "Invalid", "allowWatchBookmarks: Required value: sendInitialEvents requires "
                                               "setting allowWatchBookmarks to true")
            if match and not initial_events:
                raise ApiError(422, "Invalid", "resourceVersionMatch: Forbidden: resourceVersionMatch is forbidden "
                                               "for watch unless sendInitialEvents is provided")
            try:
                timeout = float(query["timeoutSeconds"][0]) if "timeoutSeconds" in query else 1800 * (1 + random.random())
            except ValueError:
                raise ApiError(400, "BadRequest", f"invalid timeoutSeconds: {query['timeoutSeconds'][0]}") from None
            deadline = time.monotonic() + timeout
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Cache-Control", "no-cache, private")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            with cluster.changed:
                cluster.streams += 1
            try:
                # A stall holds each event, and the stream's end, until it is over.
                for event in cluster.watch(kind, version, matches, deadline, bookmarks, initial_events):
                    cluster.wait_unstalled()
                    self.chunk(json.dumps(event).encode() + b"\n")
                cluster.wait_unstalled()
                self.chunk(b"")
            except OSError:  # the watcher went away
                self.close_connection = True
            finally:
                with cluster.changed:
                    cluster.streams -= 1
                    cluster.changed.notify_all()

        def chunk(self, data: bytes) -> None:
            self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))

        def reply(self, code: int, body: dict) -> None:
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    return Handler


def start(host: str, cluster: Cluster) -> ThreadingHTTPServer:
    """Serves `cluster` on `host`, on a port of its own; every request has a thread."""
    server = ThreadingHTTPServer((host, 0), handler(cluster))
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True, name="kube").start()
    return server


def write_kubeconfig(path: Path, endpoint: str, name: str) -> None:
    """A kubeconfig whose one cluster is `endpoint` (plain HTTP, so no certificate) and
    whose user has no credentials (the stand-in checks none)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"""apiVersion: v1
kind: Config
clusters:
- name: {name}
  cluster:
    server: {endpoint}
users:
- name: {name}
  user: {{}}
contexts:
- name: {name}
  context:
    cluster: {name}
    user: {name}
    namespace: default
current-context: {name}
""")
