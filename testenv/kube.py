"""A minimal Kubernetes API server for the test bed: the bed's pods as `v1` Pod objects,
read-only, over plain HTTP on the bed's gateway, for clients such as the node agent's
`kube::runtime::watcher` (kube 5), whose default is list-then-watch: `GET /api/v1/pods?
fieldSelector=...&limit=500`, then `?watch=true&timeoutSeconds=290&allowWatchBookmarks=true&
resourceVersion=<the list's>` (kube-runtime 5.0.0, watcher.rs `to_list_params` and
`to_watch_params`; kube-core 5.0.0, params.rs).

Paths: `GET /api/v1/pods`, `/api/v1/namespaces/{ns}/pods` (lists, or watches with `watch`)
and `/api/v1/namespaces/{ns}/pods/{name}`. Each rule follows the real API server and names
its source (k8s.io/apiserver unless said otherwise; "API concepts" is the Kubernetes
documentation page of that name):

* Lists answer the current state with `metadata.resourceVersion`, whatever `resourceVersion`
  the client asks for (each of "", "0" and NotOlderThan may be served from the latest);
  `limit` is not applied, so a list never has a `continue` token. Items sit in etcd's key
  order (namespace, then name) and, as in every list, carry no apiVersion and kind.
* `fieldSelector`: the fields a Pod can be selected by (pkg/registry/core/pod/strategy.go,
  `PodToSelectableFields`), with `=`, `==` and `!=`, terms joined by commas; any other field
  is 400 BadRequest "field label not supported" (backslash escapes are not read).
  `labelSelector`: `k`, `!k`, `k=v`, `k==v`, `k!=v`, `k in (a,b)`, `k notin (a,b)`.
* Watches stream `{"type", "object"}` lines in a chunked response. `resourceVersion` unset or
  "0" starts with a synthetic ADDED for each object, then the changes after the current
  version; any other version gets the changes after it (API concepts, "Semantics for watch").
  A version older than the event history is a 410 Expired ERROR event
  (storage/cacher/watch_cache.go, "too old resource version"); one newer than the current
  waits up to 3 s, then is a 504 Timeout ERROR event ("Too large resource version",
  watch_cache.go `waitUntilFreshAndBlock`). A change that makes an object match or stop
  matching the selectors reaches the watcher as ADDED or DELETED (cacher/cache_watcher.go,
  `convertToWatchEvent`). `sendInitialEvents=true` (with `resourceVersionMatch=NotOlderThan`
  and `allowWatchBookmarks`) ends the synthetic ADDEDs with a BOOKMARK annotated
  `k8s.io/initial-events-end` (API concepts, "Streaming lists").
* With `allowWatchBookmarks`, a BOOKMARK (a Pod holding only its resourceVersion) roughly
  every `bookmark_seconds` (60, the cacher's frequency) and 2 s before the watch's deadline
  (cache_watcher.go, `nextBookmarkTime`). `timeoutSeconds` ends the stream; without it the
  server picks between 1800 and 3600 s (kube-apiserver `--min-request-timeout`, randomised
  as in endpoints/handlers/get.go).

The objects change only through the bed: a pod's creation is one ADDED with the whole object
(scheduling and the status updates before it are left out); an annotation change is one
MODIFIED, none when it changes nothing (storage/etcd3 `GuaranteedUpdate` does not write an
unchanged object); a deletion is what a graceful delete shows: MODIFIED with
`deletionTimestamp`, then, once the runtime has removed the sandbox, DELETED.
"""

from __future__ import annotations

import collections
import json
import random
import re
import threading
import time
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


def field_selector(text: str) -> Callable[[dict], bool]:
    """The predicate of a field selector over Pods (fields.ParseSelector, escapes aside)."""
    terms = []
    for term in filter(None, (part.strip() for part in text.split(","))):
        for operator in ("!=", "==", "="):
            field, found, value = term.partition(operator)
            if found:
                break
        else:
            raise ApiError(400, "BadRequest", f"invalid selector: '{text}'; can't understand '{term}'")
        if field not in POD_FIELDS:
            raise ApiError(400, "BadRequest", f"field label not supported: {field}")
        terms.append((POD_FIELDS[field], operator == "!=", value))
    return lambda pod: all((get(pod) == value) != negated for get, negated, value in terms)


def label_selector(text: str) -> Callable[[dict], bool]:
    """The predicate of a label selector (labels.Parse: equality, existence and set terms;
    `gt` and `lt` are not read)."""
    requirements = [label_requirement(term) for term in re.split(r",(?![^()]*\))", text) if term.strip()]
    for key, _ in requirements:
        if not LABEL_KEY.match(key):
            raise ApiError(400, "BadRequest", f"unable to parse requirement: invalid label key {key!r}")
    return lambda pod: all(test(pod["metadata"].get("labels", {})) for _, test in requirements)


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


def pod_object(spec: dict, pod: dict, host_ip: str) -> dict:
    """The `v1` Pod of a bed pod: `spec` is its creation request, `pod` what the bed made of
    it (name, node, namespace, uid, eth0 address, interface MACs), `host_ip` its node's
    address. Defaulted fields are filled in as the API server's defaulting does."""
    annotations = {}
    if spec.get("network_status", True):
        # Multus writes it with Go's json.MarshalIndent(statuses, "", "    ").
        annotations[NETWORK_STATUS] = json.dumps(network_status(spec, pod), indent=4)
    annotations |= string_map(spec, "annotations")
    metadata = {"name": pod["name"], "namespace": pod["namespace"], "uid": pod["uid"],
                "creationTimestamp": now_rfc3339()}
    if labels := string_map(spec, "labels"):
        metadata["labels"] = labels
    if annotations:
        metadata["annotations"] = annotations
    return {
        "apiVersion": "v1", "kind": "Pod", "metadata": metadata,
        "spec": {"nodeName": pod["node"], "containers": [{"name": "app", "image": "busybox"}],
                 "restartPolicy": "Always", "schedulerName": "default-scheduler", "serviceAccountName": "default"},
        "status": {"phase": "Running", "hostIP": host_ip, "hostIPs": [{"ip": host_ip}], "podIP": pod["pod_ip"],
                   "podIPs": [{"ip": pod["pod_ip"]}]},
    }


class Event(NamedTuple):
    """One change in the history: its version and type, the object after it (None once
    deleted) and before it (None when added)."""

    version: int
    type: str
    object: dict | None
    previous: dict | None


class Cluster:
    """The Pod objects, their resourceVersion counter and the bounded history of changes
    watches are served from (the API server's watch cache)."""

    def __init__(self, history: int = 1000, bookmark_seconds: float = 60.0):
        self.changed = threading.Condition()
        self.objects: dict[str, dict] = {}  # by bed pod name
        self.version = 1
        self.history: collections.deque[Event] = collections.deque(maxlen=history)
        self.bookmark_seconds = bookmark_seconds
        self.closed = False
        self.streams = 0

    def configure(self, history: int | None = None, bookmark_seconds: float | None = None) -> None:
        """Resizes the event history (keeping its newest events) or changes the bookmark interval."""
        with self.changed:
            if history is not None:
                self.history = collections.deque(self.history, maxlen=history)
            if bookmark_seconds is not None:
                self.bookmark_seconds = bookmark_seconds
            self.changed.notify_all()

    def record(self, kind: str, name: str, pod: dict | None, previous: dict | None) -> dict:
        """Stores a change under the next resourceVersion and wakes the watches; the caller
        holds `changed`."""
        self.version += 1
        stored = json.loads(json.dumps(pod if pod is not None else previous))
        stored["metadata"]["resourceVersion"] = str(self.version)
        if kind == "DELETED":
            self.objects.pop(name)
        else:
            self.objects[name] = stored
        self.history.append(Event(self.version, kind, stored if pod is not None else None, previous))
        self.changed.notify_all()
        return stored

    def add(self, name: str, pod: dict) -> dict:
        with self.changed:
            return self.record("ADDED", name, pod, None)

    def annotate(self, name: str, changes: dict) -> dict:
        """`{"set": {name: value}, "remove": [name]}` on the pod's annotations; the object."""
        with self.changed:
            current = self.get(name)
            annotations = dict(current["metadata"].get("annotations", {}))
            for key in changes.get("remove", []):
                annotations.pop(key, None)
            annotations |= string_map(changes, "set")
            if annotations == current["metadata"].get("annotations", {}):
                return current
            changed = json.loads(json.dumps(current))
            changed["metadata"]["annotations"] = annotations
            if not annotations:
                del changed["metadata"]["annotations"]
            return self.record("MODIFIED", name, changed, current)

    def start_deletion(self, name: str) -> dict:
        """A graceful delete's first step: `deletionTimestamp` set, 30 s of grace (the default)."""
        with self.changed:
            current = self.get(name)
            terminating = json.loads(json.dumps(current))
            terminating["metadata"] |= {"deletionTimestamp": now_rfc3339(), "deletionGracePeriodSeconds": 30}
            return self.record("MODIFIED", name, terminating, current)

    def delete(self, name: str) -> None:
        with self.changed:
            self.record("DELETED", name, None, self.get(name))

    def get(self, name: str) -> dict:
        with self.changed:
            if name not in self.objects:
                raise KeyError(name)
            return self.objects[name]

    def find(self, namespace: str, name: str) -> dict | None:
        with self.changed:
            return next((pod for pod in self.objects.values()
                         if pod["metadata"]["namespace"] == namespace and pod["metadata"]["name"] == name), None)

    def snapshot(self, matches: Callable[[dict], bool]) -> tuple[int, list[dict]]:
        """The current version and the objects that match, in etcd's key order."""
        with self.changed:
            pods = sorted((pod for pod in self.objects.values() if matches(pod)),
                          key=lambda pod: (pod["metadata"]["namespace"], pod["metadata"]["name"]))
            return self.version, pods

    def close(self, limit: float = 2.0) -> None:
        """Ends every watch stream (waiting up to `limit` for them to finish writing)."""
        deadline = time.monotonic() + limit
        with self.changed:
            self.closed = True
            self.changed.notify_all()
            while self.streams and time.monotonic() < deadline:
                self.changed.wait(deadline - time.monotonic())

    def oldest_servable(self) -> int:
        """The oldest version a watch can start after: every later event is in the history."""
        return self.history[0].version - 1 if self.history else self.version

    def watch(self, since: str, matches: Callable[[dict], bool], deadline: float, bookmarks: bool,
              initial_events: bool) -> Iterator[dict]:
        """The events of one watch until `deadline`, the bed's end or an ERROR event."""
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
            version, pods = self.snapshot(matches)
            yield from ({"type": "ADDED", "object": pod} for pod in pods)
            if initial_events:
                yield bookmark(version, {INITIAL_EVENTS_END: "true"})
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
                oldest = self.oldest_servable()
                events = [event for event in self.history if event.version > version] if version >= oldest else None
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
                yield bookmark(version)
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
        gone = json.loads(json.dumps(event.previous))
        gone["metadata"]["resourceVersion"] = str(event.version)
        return {"type": "DELETED", "object": gone}
    return None


def bookmark(version: int, annotations: dict[str, str] | None = None) -> dict:
    """A BOOKMARK event: a Pod holding only the version (and the initial-events-end mark)."""
    metadata: dict = {"resourceVersion": str(version)}
    if annotations:
        metadata["annotations"] = annotations
    return {"type": "BOOKMARK", "object": {"kind": "Pod", "apiVersion": "v1", "metadata": metadata}}


def handler(cluster: Cluster):
    class Handler(BaseHTTPRequestHandler):
        """One connection to the API server: GETs of pods, everything else 405."""

        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True  # as the IMDS handler: no delayed-ACK stall per answer

        def log_message(self, *args):  # quiet
            pass

        def do_GET(self):
            url = urlsplit(self.path)
            query = parse_qs(url.query, keep_blank_values=True)
            try:
                self.route(url.path.rstrip("/").split("/")[1:], query)
            except ApiError as error:
                self.reply(error.code, error.status())

        def do_POST(self):
            self.refuse_method()

        do_PUT = do_PATCH = do_DELETE = do_POST

        def refuse_method(self):
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            self.reply(405, status_object(405, "MethodNotAllowed",
                                          "the server does not allow this method on the requested resource"))

        def route(self, parts: list[str], query: dict[str, list[str]]) -> None:
            if parts == ["api", "v1", "pods"]:
                return self.collection(None, query)
            if len(parts) == 5 and parts[:3] == ["api", "v1", "namespaces"] and parts[4] == "pods":
                return self.collection(parts[3], query)
            if len(parts) == 6 and parts[:3] == ["api", "v1", "namespaces"] and parts[4] == "pods":
                pod = cluster.find(parts[3], parts[5])
                if pod is None:
                    error = status_object(404, "NotFound", f'pods "{parts[5]}" not found')
                    error["details"] = {"name": parts[5], "kind": "pods"}
                    return self.reply(404, error)
                return self.reply(200, pod)
            raise ApiError(404, "NotFound", "the server could not find the requested resource")

        def collection(self, namespace: str | None, query: dict[str, list[str]]) -> None:
            fields = field_selector(query.get("fieldSelector", [""])[0])
            labels = label_selector(query.get("labelSelector", [""])[0])

            def matches(pod: dict) -> bool:
                return (namespace is None or pod["metadata"]["namespace"] == namespace) and fields(pod) and labels(pod)

            version = query.get("resourceVersion", [""])[0]
            if version not in ("", "0") and not version.isdigit():
                raise ApiError(400, "BadRequest", f"invalid resource version: {version}")
            if query_bool(query, "watch"):
                return self.watch(version, matches, query)
            if query_bool(query, "sendInitialEvents"):
                raise ApiError(422, "Invalid", "sendInitialEvents: Forbidden: sendInitialEvents is forbidden for list")
            current, pods = cluster.snapshot(matches)
            items = [{key: value for key, value in pod.items() if key not in ("apiVersion", "kind")} for pod in pods]
            self.reply(200, {"kind": "PodList", "apiVersion": "v1", "metadata": {"resourceVersion": str(current)},
                             "items": items})

        def watch(self, version: str, matches, query: dict[str, list[str]]) -> None:
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
                for event in cluster.watch(version, matches, deadline, bookmarks, initial_events):
                    self.chunk(json.dumps(event).encode() + b"\n")
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
