"""A minimal Kubernetes API server for the test bed: the bed's pods, their namespaces and the
topology's nodes as `v1` Pod, Namespace and Node objects (read-only), and `v1` Secrets and
`admissionregistration.k8s.io/v1` MutatingWebhookConfigurations that clients write (a
webhook keeping its CA and serving certificate in a Secret and the caBundle of its
configuration up to date), over plain HTTP on the bed's gateway, for clients such as the
node agent's `kube::runtime::watcher` (kube 5), whose default is list-then-watch:
`GET /api/v1/pods?fieldSelector=...&limit=500`, then
`?watch=true&timeoutSeconds=290&allowWatchBookmarks=true&resourceVersion=<the list's>`
(kube-runtime 5.0.0, watcher.rs `to_list_params` and `to_watch_params`; kube-core 5.0.0,
params.rs). `python3 -m testenv.kube` runs it alone (see Standalone below).

Paths: `GET /api/v1/pods`, `/api/v1/namespaces/{ns}/pods`, `/api/v1/namespaces`,
`/api/v1/nodes`, `/api/v1/secrets`, `/api/v1/namespaces/{ns}/secrets` and
`/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations` (lists, or watches with
`watch`), `/api/v1/namespaces/{ns}/pods/{name}`, `/api/v1/namespaces/{name}`,
`/api/v1/nodes/{name}`, `/api/v1/namespaces/{ns}/secrets/{name}` and
`/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations/{name}`. Writes: POST
(create) on `/api/v1/namespaces/{ns}/secrets`, `.../mutatingwebhookconfigurations` and
`/api/v1/namespaces`; PUT (update), PATCH and DELETE on a Secret or a
MutatingWebhookConfiguration; any other method is 405. Each rule follows the real API server
and names its source (k8s.io/apiserver unless said otherwise; "API concepts" is the
Kubernetes documentation page of that name; pkg/... is k8s.io/kubernetes):

* One resourceVersion counter for every kind, as etcd's revision; each kind has a watch cache
  of its own (its event history), as each resource has a cacher.
* Lists answer the current state with `metadata.resourceVersion`, whatever `resourceVersion`
  the client asks for (each of "", "0" and NotOlderThan may be served from the latest);
  `limit` is not applied, so a list never has a `continue` token. Items sit in etcd's key
  order (namespace, then name) and, as in every list, carry no apiVersion and kind; a single
  object carries both.
* `fieldSelector`: the fields each kind can be selected by (pkg/registry/core/{pod,namespace,
  node,secret}/strategy.go, `*ToSelectableFields`, SelectableFields; metadata.name for a
  MutatingWebhookConfiguration, registry/generic DefaultClusterScopedAttr), with `=`, `==` and
  `!=`, terms joined by commas; any other field is 400 BadRequest "field label not
  supported" (backslash escapes are not read). `labelSelector`: `k`, `!k`, `k=v`, `k==v`,
  `k!=v`, `k in (a,b)`, `k notin (a,b)`.
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

Writes (endpoints/handlers/{create,update,patch,delete}.go, registry/generic/registry/store.go,
each kind's strategy; the details are on Cluster.create, update, patch, update_object and
remove):

* Every write that stores something takes the next resourceVersion and is one watch event:
  ADDED, MODIFIED or DELETED. An update or patch that changes nothing writes nothing: the
  stored object comes back, same version, no event (storage/etcd3 `GuaranteedUpdate`).
* Create (201): uid and creationTimestamp set by the server; generateName expanded; the body's
  namespace must be the path's (400); the namespace must exist (404, NamespaceLifecycle);
  a resourceVersion set is 500 "resourceVersion should not be set on objects to be created"
  (storage.ErrResourceVersionSetOnCreate reaches the client as an error without a Status:
  reason Unknown, code 500); an existing name is 409 AlreadyExists.
* Update (PUT, 200): 404 when absent; name and namespace must be the path's (400); a
  resourceVersion that is not the stored one is 409 Conflict, `Operation cannot be fulfilled
  on secrets "NAME": the object has been modified; please apply your changes to the latest
  version and try again`; none is an unconditional update for a Secret
  (AllowUnconditionalUpdate true, pkg/registry/core/secret/strategy.go) but 422
  "metadata.resourceVersion: Invalid value: 0: must be specified for an update" for a
  MutatingWebhookConfiguration (AllowUnconditionalUpdate false,
  pkg/registry/admissionregistration/mutatingwebhookconfiguration/strategy.go). uid,
  creationTimestamp and generation stay the stored ones (rest/update.go BeforeUpdate; a uid
  that differs is 422); a MutatingWebhookConfiguration's generation is 1 at creation and goes
  up when its webhooks change (its strategy's PrepareForCreate and PrepareForUpdate).
* Patch (200): `application/merge-patch+json` (RFC 7386) and `application/json-patch+json`
  (RFC 6902: add, remove, replace, test, move, copy), applied to the object as served, so a
  resourceVersion in the patch is a precondition (409 as above) and a `test` of it works; a
  JSON patch that does not apply (a failing `test`, a missing path) is 422 Invalid "the
  server rejected our request due to an error in our request"; a result that does not decode
  is 422 Invalid on field "patch". `application/strategic-merge-patch+json` and
  `application/apply-patch+yaml` (server-side apply), which the real server takes, are not
  modelled: 415 UnsupportedMediaType, as for any other type.
* Delete (200): a Status of success naming the object (store.go finalizeDelete); 404 when
  absent; DeleteOptions preconditions (uid, resourceVersion) that do not hold are 409.
* Decoding (the body into the Go type and back): a []byte field (Secret `data` values, a
  webhook's `clientConfig.caBundle`) must be base64 as Go's encoding/base64 reads it, and is
  answered re-encoded; otherwise a create or update is 400 BadRequest `Secret in version "v1"
  cannot be handled as a Secret: illegal base64 data at input byte N` (handlers/rest.go
  transformDecodeError) and a patch 422 Invalid on field "patch". Secret `stringData` is merged
  into `data` and never stored; defaults are set (a Secret's type Opaque, a webhook's
  failurePolicy, matchPolicy, selectors, timeoutSeconds, reinvocationPolicy, a service's port);
  null and empty known fields are left out. Unknown fields are kept as given (the real server
  drops them with a warning, or refuses them with fieldValidation=Strict); managedFields are
  not kept; dryRun is refused (400).
* Validation (422 Invalid, `Secret "NAME" is invalid: ...` with one cause per error): names
  are DNS subdomains (a Namespace's a DNS label); a Secret's data keys are config keys, a
  kubernetes.io/tls Secret has tls.crt and tls.key, its type cannot change, nor its data once
  `immutable` (pkg/apis/core/validation ValidateSecret, ValidateSecretUpdate); a
  MutatingWebhookConfiguration's webhooks have unique fully qualified names, sideEffects None
  or NoneOnDryRun, admissionReviewVersions, exactly one of url and service, a timeout of 1 to
  30 s (pkg/apis/admissionregistration/validation). Other rules are not checked.
* Namespaces can be created (POST /api/v1/namespaces: the `kubernetes.io/metadata.name`
  label, the kubernetes finalizer, phase Active), so that a namespaced create has its
  namespace; they are not updated or deleted here.

The bed's own objects change only through the bed: a pod's creation is one ADDED with the
whole object (scheduling and the status updates before it are left out), its namespace's
ADDED before it when the namespace is new; an annotation change is one MODIFIED, none when it
changes nothing; a deletion is what a graceful delete shows: MODIFIED with
`deletionTimestamp`, then, once the runtime has removed the sandbox, DELETED. The system
namespaces exist from the start and each topology node has its Node (read-only).

Faults: for some seconds every watch, open or new, delivers nothing (no event, no bookmark,
not its end) and then what it held, in order, while lists are answered (a proxy or API
server that silently stops delivering); or every new request is refused with 503 (open
watches go on); or the next N writes of a kind (Secret, MutatingWebhookConfiguration,
Namespace) are answered 409 Conflict, as if another writer had just changed the object,
before the object is read or the body checked.

The test environment's calls, not part of the Kubernetes API (never refused, JSON both ways):
`POST /_testenv/faults` {"stall_seconds", "unavailable_seconds", "conflicts": {"kind",
"count" (1; 0 clears)}} -> {} (400 {"error"} for an unknown kind), and `GET /_testenv/writes`
-> {"writes": [{"time" (Unix seconds), "verb" (create, update, patch, delete), "kind",
"namespace" (null when cluster-scoped), "name", "resourceVersion" (the object's after the
write, the deletion's for a delete, "" when refused), "code"}]}: every write request, oldest
first (the last 10000). The bed's control API has them as `POST kube/faults` and
`GET kube/writes` (testenv/awsenv.py).

Standalone: `python3 -m testenv.kube [--host 127.0.0.1] [--port 0] [--kubeconfig PATH]`
serves a cluster of only the system namespaces (no bed, no root, no EC2) on a free port,
writes a kubeconfig for it to PATH when asked (removed at exit), prints one JSON line
`{"kube_endpoint": "http://HOST:PORT", "kubeconfig": PATH or null}`, and serves until
SIGTERM, SIGINT or the end of its standard input (so a parent that dies stops it: give it a
pipe, not /dev/null). crates/testbed's KubeApi starts it for Rust tests.
"""

from __future__ import annotations

import argparse
import base64
import collections
import json
import random
import re
import signal
import socket
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Callable, Iterator, NamedTuple
from urllib.parse import parse_qs, urlsplit

import jsonpatch
import jsonpointer

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


# pkg/registry/core/secret/strategy.go, SelectableFields.
SECRET_FIELDS: dict[str, Callable[[dict], str]] = {
    "metadata.name": lambda secret: secret["metadata"]["name"],
    "metadata.namespace": lambda secret: secret["metadata"]["namespace"],
    "type": lambda secret: secret.get("type", ""),
}
# registry/generic/matcher.go, DefaultClusterScopedAttr: cluster-scoped kinds by name only.
CLUSTER_SCOPED_FIELDS: dict[str, Callable[[dict], str]] = {"metadata.name": lambda item: item["metadata"]["name"]}
ADMISSION_GROUP = "admissionregistration.k8s.io"
WRITE_VERBS = frozenset({"create", "update", "patch", "delete"})


class Resource(NamedTuple):
    """A kind the server serves: its path's plural, whether its objects live in a namespace,
    the fields they can be selected by, its API group ("" for the core group), the writes it
    takes (of "create", "update", "patch", "delete") and whether an update without a
    resourceVersion is allowed (its strategy's AllowUnconditionalUpdate)."""

    kind: str
    plural: str
    namespaced: bool
    fields: dict[str, Callable[[dict], str]]
    group: str = ""
    verbs: frozenset[str] = frozenset()
    unconditional_update: bool = True

    @property
    def api_version(self) -> str:
        return f"{self.group}/v1" if self.group else "v1"

    @property
    def qualified_resource(self) -> str:
        """schema.GroupResource.String(): `secrets`, `mutatingwebhookconfigurations.admissionregistration.k8s.io`."""
        return f"{self.plural}.{self.group}" if self.group else self.plural

    @property
    def qualified_kind(self) -> str:
        """schema.GroupKind.String(): `Secret`, `MutatingWebhookConfiguration.admissionregistration.k8s.io`."""
        return f"{self.kind}.{self.group}" if self.group else self.kind

    def key(self, namespace: str | None, name: str) -> str:
        """Where the cluster keeps an object: a pod under its bed name (unique across
        namespaces), a Secret under `namespace/name`, a cluster-scoped object under its name."""
        return f"{namespace}/{name}" if self.namespaced and self.kind != "Pod" else name


RESOURCES = {(resource.group, resource.plural): resource for resource in (
    Resource("Pod", "pods", True, POD_FIELDS),
    # Namespaces can be created (a namespaced create needs its namespace), not changed here.
    Resource("Namespace", "namespaces", False, NAMESPACE_FIELDS, verbs=frozenset({"create"})),
    Resource("Node", "nodes", False, NODE_FIELDS),
    Resource("Secret", "secrets", True, SECRET_FIELDS, verbs=WRITE_VERBS),
    # pkg/registry/admissionregistration/mutatingwebhookconfiguration/strategy.go:
    # AllowUnconditionalUpdate is false.
    Resource("MutatingWebhookConfiguration", "mutatingwebhookconfigurations", False, CLUSTER_SCOPED_FIELDS,
             ADMISSION_GROUP, WRITE_VERBS, unconditional_update=False))}
KINDS = {resource.kind: resource for resource in RESOURCES.values()}
# The namespaces the control plane makes at start (pkg/controlplane/controller: the system
# namespaces controller, and the kubernetes Service's controller for "default").
SYSTEM_NAMESPACES = ("default", "kube-node-lease", "kube-public", "kube-system")
NAMESPACE_NAME_LABEL = "kubernetes.io/metadata.name"  # pkg/apis/core/v1/defaults.go, SetDefaults_Namespace
LABEL_KEY = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9._/-]*[A-Za-z0-9])?$")
# registry/generic/registry/store.go, OptimisticLockErrorMsg.
OPTIMISTIC_LOCK = "the object has been modified; please apply your changes to the latest version and try again"
PATCH_TYPES = ("application/json-patch+json", "application/merge-patch+json")
MAX_JSON_PATCH_OPERATIONS = 10000  # endpoints/handlers/patch.go, maxJSONPatchOperations
WRITE_LOG_SIZE = 10000


class ApiError(Exception):
    """A request the API server refuses: HTTP status, reason and message of its Status (and
    its details, when it has them)."""

    def __init__(self, code: int, reason: str, message: str, details: dict | None = None):
        super().__init__(message)
        self.code, self.reason, self.message, self.details = code, reason, message, details

    def status(self) -> dict:
        status = status_object(self.code, self.reason, self.message)
        if self.details is not None:
            status["details"] = self.details
        return status


def status_object(code: int, reason: str, message: str) -> dict:
    """A `v1` Status of failure, as the API server answers errors (metav1.Status; an empty
    reason, StatusReasonUnknown, is left out as Go's omitempty does)."""
    status = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": message,
              "reason": reason, "code": code}
    if not reason:
        del status["reason"]
    return status


def status_details(resource: Resource, name: str, kind: str | None = None, **more) -> dict:
    """metav1.StatusDetails as apimachinery's errors fill them: name, group, and the plural
    (or `kind`) as "kind"; empty fields left out."""
    details = {"name": name, "group": resource.group, "kind": kind or resource.plural} | more
    return {key: value for key, value in details.items() if value not in ("", None)}


def not_found(resource: Resource, name: str) -> ApiError:
    """api/errors NewNotFound."""
    return ApiError(404, "NotFound", f'{resource.qualified_resource} "{name}" not found',
                    status_details(resource, name))


def conflict(resource: Resource, name: str, cause: str = OPTIMISTIC_LOCK, kind_as_resource: bool = False) -> ApiError:
    """api/errors NewConflict: 409 Conflict, "Operation cannot be fulfilled on <resource> "<name>": <cause>".
    `kind_as_resource`: the GroupResource is made of the kind, as rest/delete.go BeforeDelete makes it."""
    what = resource.qualified_kind if kind_as_resource else resource.qualified_resource
    return ApiError(409, "Conflict", f'Operation cannot be fulfilled on {what} "{name}": {cause}',
                    status_details(resource, name, resource.kind if kind_as_resource else None))


def bad_request(message: str) -> ApiError:
    return ApiError(400, "BadRequest", message)


class FieldError(NamedTuple):
    """One field.Error: its cause type (metav1.CauseType), path and ErrorBody."""

    type: str
    field: str
    body: str

    def __str__(self) -> str:
        return f"{self.field}: {self.body}"


def go_value(value) -> str:
    """A bad value as field.Error.ErrorBody renders it: %v for numbers and booleans, %q for
    strings, JSON for the rest (apimachinery util/validation/field/errors.go)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def required(field: str, detail: str = "") -> FieldError:
    return FieldError("FieldValueRequired", field, "Required value" + (f": {detail}" if detail else ""))


def invalid(field: str, value, detail: str) -> FieldError:
    return FieldError("FieldValueInvalid", field, f"Invalid value: {go_value(value)}: {detail}")


def not_supported(field: str, value, supported: list[str]) -> FieldError:
    values = ", ".join(json.dumps(item) for item in supported)
    return FieldError("FieldValueNotSupported", field,
                      f"Unsupported value: {go_value(value)}: supported values: {values}")


def forbidden(field: str, detail: str) -> FieldError:
    return FieldError("FieldValueForbidden", field, f"Forbidden: {detail}")


def duplicate(field: str, value) -> FieldError:
    return FieldError("FieldValueDuplicate", field, f"Duplicate value: {go_value(value)}")


def invalid_error(group: str, kind: str, name: str, errors: list[FieldError]) -> ApiError:
    """api/errors NewInvalid: 422 Invalid, `<Kind.group> "<name>" is invalid: <errors>` (one
    error bare, several in brackets, repeats dropped: util/errors aggregate), each a cause."""
    texts = list(dict.fromkeys(str(error) for error in errors))
    what = f"{kind}.{group}" if group else kind
    message = f'{what} "{name}" is invalid: ' + (texts[0] if len(texts) == 1 else f"[{', '.join(texts)}]")
    details = {key: value for key, value in (("name", name), ("group", group), ("kind", kind)) if value}
    details["causes"] = [{"reason": error.type, "message": error.body, "field": error.field} for error in errors]
    return ApiError(422, "Invalid", message, details)


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


class DecodeError(Exception):
    """A body the API server cannot decode into the kind's Go type: the decoder's reason."""


class VersionMismatch(DecodeError):
    """A body whose apiVersion is not the path's."""


B64_VALUES = {byte: value for value, byte in enumerate(
    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/")}


def go_base64(text: str) -> bytes:
    """`text` decoded as Go's encoding/base64 StdEncoding.Decode does it for a []byte field
    in JSON (padding required, CR and LF skipped, non-zero trailing bits accepted); a
    DecodeError "illegal base64 data at input byte N" (CorruptInputError) otherwise, N
    counted as decodeQuantum counts it."""
    source, decoded, at = text.encode(), bytearray(), 0
    while at < len(source):
        quantum: list[int] = []
        while len(quantum) < 4:
            if at == len(source):
                if not quantum:
                    return bytes(decoded)
                raise DecodeError(f"illegal base64 data at input byte {at - len(quantum)}")
            byte, at = source[at], at + 1
            if byte in B64_VALUES:
                quantum.append(B64_VALUES[byte])
                continue
            if byte in b"\r\n":
                continue
            if byte != ord("=") or len(quantum) < 2:
                raise DecodeError(f"illegal base64 data at input byte {at - 1}")
            if len(quantum) == 2:  # "==" expected: the second one
                while at < len(source) and source[at] in b"\r\n":
                    at += 1
                if at == len(source):
                    raise DecodeError(f"illegal base64 data at input byte {len(source)}")
                if source[at] != ord("="):
                    raise DecodeError(f"illegal base64 data at input byte {at - 1}")
                at += 1
            while at < len(source) and source[at] in b"\r\n":
                at += 1
            if at < len(source):  # trailing garbage
                raise DecodeError(f"illegal base64 data at input byte {at}")
            break
        value = sum(part << (18 - 6 * index) for index, part in enumerate(quantum))
        decoded += value.to_bytes(3, "big")[:len(quantum) - 1]
    return bytes(decoded)


def json_type(value) -> str:
    """The JSON type name Go's json.UnmarshalTypeError names."""
    return ("bool" if isinstance(value, bool) else "number" if isinstance(value, (int, float))
            else "string" if isinstance(value, str) else "array" if isinstance(value, list)
            else "object" if isinstance(value, dict) else "null")


def expect(value, kind: type, field: str, go_type: str):
    """`value` when it is of `kind` (or null); else the decoder's type error."""
    if value is not None and (not isinstance(value, kind) or (kind is int and isinstance(value, bool))):
        raise DecodeError(f"json: cannot unmarshal {json_type(value)} into Go struct field {field} of type {go_type}")
    return value


def canonical_bytes(value, field: str) -> str | None:
    """A []byte field as the server stores and answers it: decoded (go_base64), encoded
    again with padding (so `YWJj\\n` comes back `YWJj`)."""
    if expect(value, str, field, "[]uint8") is None:
        return None
    return base64.b64encode(go_base64(value)).decode()


def prune(mapping: dict, keys: tuple[str, ...]) -> None:
    """Drops the known fields that are null or empty: Go decodes them to zero values, which
    omitempty leaves out."""
    for key in keys:
        if key in mapping and mapping[key] in (None, "", 0, {}, []) and mapping[key] is not False:
            del mapping[key]


def decode(resource: Resource, body) -> dict:
    """`body` as the API server decodes it into `resource`'s type and encodes it back
    (endpoints/handlers/create.go and update.go decode, then the storage encodes): kind and
    apiVersion filled in from the path, []byte fields (Secret `data`, a webhook's
    `clientConfig.caBundle`) checked and re-encoded (canonical_bytes), Secret `stringData`
    merged into `data` and dropped (pkg/apis/core/v1/conversion.go,
    Convert_v1_Secret_To_core_Secret), defaults set (pkg/apis/core/v1/defaults.go,
    SetDefaults_Secret: type Opaque; pkg/apis/admissionregistration/v1/defaults.go:
    failurePolicy Fail, matchPolicy Equivalent, empty selectors, timeoutSeconds 10,
    reinvocationPolicy Never, a rule's scope "*", a service's port 443), known fields that
    are null or empty left out. Unknown fields are kept as given (the real server drops
    them, with a warning: fieldValidation defaults to Warn). DecodeError when it does not
    decode."""
    if not isinstance(body, dict):
        raise DecodeError(f"json: cannot unmarshal {json_type(body)} into Go value of type {resource.kind}")
    item = copy(body)
    version, kind = item.get("apiVersion") or resource.api_version, item.get("kind") or resource.kind
    if version != resource.api_version:
        raise VersionMismatch(version)
    if kind != resource.kind:
        raise DecodeError(f"converting ({version}.{kind}) to ({resource.kind}): unknown conversion")
    metadata = expect(item.get("metadata"), dict, f"{resource.kind}.metadata", "v1.ObjectMeta") or {}
    item = {"kind": resource.kind, "apiVersion": resource.api_version, "metadata": metadata} | {
        key: value for key, value in item.items() if key not in ("kind", "apiVersion", "metadata")}
    for key in ("name", "generateName", "namespace", "uid", "resourceVersion", "creationTimestamp"):
        expect(metadata.get(key), str, f"ObjectMeta.metadata.{key}", "string")
    for key in ("labels", "annotations"):
        values = expect(metadata.get(key), dict, f"ObjectMeta.metadata.{key}", "map[string]string") or {}
        for value in values.values():
            expect(value, str, f"ObjectMeta.metadata.{key}", "string")
    metadata.pop("selfLink", None)  # rest/meta.go, WipeObjectMetaSystemFields
    metadata.pop("managedFields", None)  # not modelled: the server's field manager rewrites them
    prune(metadata, tuple(metadata))
    if resource.kind == "Secret":
        decode_secret(item)
    elif resource.kind == "MutatingWebhookConfiguration":
        decode_webhooks(item)
    return item


def decode_secret(secret: dict) -> None:
    data = expect(secret.get("data"), dict, "Secret.data", "map[string][]uint8") or {}
    data = {key: canonical_bytes(value, "Secret.data") for key, value in data.items()}
    for key, value in (expect(secret.pop("stringData", None), dict, "Secret.stringData", "map[string]string")
                       or {}).items():
        data[key] = base64.b64encode(expect(value, str, "Secret.stringData", "string").encode()).decode()
    secret["data"] = data
    secret["type"] = expect(secret.get("type"), str, "Secret.type", "v1.SecretType") or "Opaque"
    expect(secret.get("immutable"), bool, "Secret.immutable", "bool")
    prune(secret, ("data", "immutable"))


def decode_webhooks(configuration: dict) -> None:
    webhooks = expect(configuration.get("webhooks"), list, "MutatingWebhookConfiguration.webhooks",
                      "[]v1.MutatingWebhook") or []
    for hook in webhooks:
        expect(hook, dict, "MutatingWebhookConfiguration.webhooks", "v1.MutatingWebhook")
        defaults = {"failurePolicy": "Fail", "matchPolicy": "Equivalent", "namespaceSelector": {},
                    "objectSelector": {}, "timeoutSeconds": 10, "reinvocationPolicy": "Never"}
        for key, value in defaults.items():
            if hook.get(key) is None:
                hook[key] = value
        expect(hook["timeoutSeconds"], int, "MutatingWebhook.webhooks.timeoutSeconds", "int32")
        client = expect(hook.get("clientConfig"), dict, "MutatingWebhook.webhooks.clientConfig",
                        "v1.WebhookClientConfig") or {}
        client["caBundle"] = canonical_bytes(client.get("caBundle"),
                                             "WebhookClientConfig.webhooks.clientConfig.caBundle")
        service = expect(client.get("service"), dict, "WebhookClientConfig.webhooks.clientConfig.service",
                         "v1.ServiceReference")
        if service is not None and service.get("port") is None:
            service["port"] = 443
        prune(client, ("caBundle", "url", "service"))
        hook["clientConfig"] = client
        for rule in expect(hook.get("rules"), list, "MutatingWebhook.webhooks.rules", "[]v1.RuleWithOperations") or []:
            if expect(rule, dict, "MutatingWebhook.webhooks.rules", "v1.RuleWithOperations").get("scope") is None:
                rule["scope"] = "*"
        prune(hook, ("rules", "sideEffects", "admissionReviewVersions", "matchConditions"))
    configuration["webhooks"] = webhooks
    prune(configuration, ("webhooks",))


# k8s.io/apimachinery/pkg/util/validation/validation.go.
DNS1123_LABEL = "[a-z0-9]([-a-z0-9]*[a-z0-9])?"
DNS1123_SUBDOMAIN = DNS1123_LABEL + "(\\." + DNS1123_LABEL + ")*"
CONFIG_MAP_KEY = "[-._a-zA-Z0-9]+"


def regex_error(message: str, pattern: str, *examples: str) -> str:
    """util/validation RegexError."""
    if examples:
        message += " (e.g. " + " or ".join(f"'{example}', " for example in examples)
        return message + f"regex used for validation is '{pattern}')"
    return message + f" (regex used for validation is '{pattern}')"


def subdomain_errors(value: str) -> list[str]:
    """util/validation IsDNS1123Subdomain."""
    errors = ["must be no more than 253 characters"] if len(value) > 253 else []
    if not re.fullmatch(DNS1123_SUBDOMAIN, value):
        errors.append(regex_error("a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, "
                                  "'-' or '.', and must start and end with an alphanumeric character",
                                  DNS1123_SUBDOMAIN, "example.com"))
    return errors


def label_errors(value: str) -> list[str]:
    """util/validation IsDNS1123Label."""
    errors = ["must be no more than 63 characters"] if len(value) > 63 else []
    if re.fullmatch(DNS1123_SUBDOMAIN, value) and not re.fullmatch(DNS1123_LABEL, value):
        errors.append("must not contain dots")
    elif not re.fullmatch(DNS1123_LABEL, value):
        errors.append(regex_error("a lowercase RFC 1123 label must consist of lower case alphanumeric characters or "
                                  "'-', and must start and end with an alphanumeric character", DNS1123_LABEL,
                                  "my-name", "123-abc"))
    return errors


def config_key_errors(key: str) -> list[str]:
    """util/validation IsConfigMapKey: a Secret's data keys."""
    errors = ["must be no more than 253 characters"] if len(key) > 253 else []
    if not re.fullmatch(CONFIG_MAP_KEY, key):
        errors.append(regex_error("a valid config key must consist of alphanumeric characters, '-', '_' or '.'",
                                  CONFIG_MAP_KEY, "key.name", "KEY_NAME", "key-name"))
    if key in (".", ".."):
        errors.append(f"must not be '{key}'")
    elif key.startswith(".."):
        errors.append("must not start with '..'")
    return errors


def metadata_errors(resource: Resource, item: dict) -> list[FieldError]:
    """api/validation/objectmeta.go ValidateObjectMetaAccessor, name and generateName: a DNS
    subdomain (NameIsDNSSubdomain; NameIsDNSLabel for a Namespace)."""
    metadata, check = item["metadata"], label_errors if resource.kind == "Namespace" else subdomain_errors
    prefix = metadata.get("generateName", "")
    masked = prefix[:-2] + "a" if len(prefix) > 1 and prefix.endswith("-") else prefix  # maskTrailingDash
    errors = [invalid("metadata.generateName", prefix, message) for message in check(masked)] if prefix else []
    if not metadata.get("name"):
        return errors + [required("metadata.name", "name or generateName is required")]
    return errors + [invalid("metadata.name", metadata["name"], message) for message in check(metadata["name"])]


def secret_errors(secret: dict, old: dict | None) -> list[FieldError]:
    """pkg/apis/core/validation ValidateSecret (and ValidateSecretUpdate with `old`): data keys
    are config keys, a kubernetes.io/tls Secret has tls.crt and tls.key, a
    service-account-token one names its account; on update the type cannot change, nor,
    once `immutable` is set, the data or `immutable` itself. (The other types' rules,
    dockercfg, basic-auth and ssh-auth, and the 1 MiB limit are not modelled.)"""
    errors = []
    if old is not None:
        if secret["type"] != old["type"]:
            errors.append(invalid("type", secret["type"], "field is immutable"))
        if old.get("immutable"):
            if not secret.get("immutable"):
                errors.append(forbidden("immutable", "field is immutable when `immutable` is set"))
            if secret.get("data", {}) != old.get("data", {}):
                errors.append(forbidden("data", "field is immutable when `immutable` is set"))
    errors += metadata_errors(KINDS["Secret"], secret)
    data = secret.get("data", {})
    errors += [invalid(f"data[{key}]", key, message) for key in data for message in config_key_errors(key)]
    if secret["type"] == "kubernetes.io/tls":
        errors += [required(f"data[{key}]") for key in ("tls.crt", "tls.key") if key not in data]
    elif secret["type"] == "kubernetes.io/service-account-token":
        if not secret["metadata"].get("annotations", {}).get("kubernetes.io/service-account.name"):
            errors.append(required("metadata.annotations[kubernetes.io/service-account.name]"))
    return errors


def webhook_errors(configuration: dict) -> list[FieldError]:
    """pkg/apis/admissionregistration/validation ValidateMutatingWebhookConfiguration, the
    rules a webhook's own configuration meets: each webhook's name fully qualified
    (util/validation IsFullyQualifiedName) and unique, sideEffects None or NoneOnDryRun,
    admissionReviewVersions naming v1 or v1beta1, exactly one of clientConfig.url and
    clientConfig.service, timeoutSeconds 1 to 30, known policies. (Rules, selectors, match
    conditions, URLs and service references are not checked.)"""
    errors, names = metadata_errors(KINDS["MutatingWebhookConfiguration"], configuration), set()
    for index, hook in enumerate(configuration.get("webhooks", [])):
        path, name = f"webhooks[{index}]", hook.get("name") or ""
        if not name:
            errors.append(required(f"{path}.name"))
        elif messages := subdomain_errors(name):
            errors.append(invalid(f"{path}.name", name, ",".join(messages)))
        elif len(name.split(".")) < 3:
            errors.append(invalid(f"{path}.name", name,
                                  "should be a domain with at least three segments separated by dots"))
        for field, supported in (("failurePolicy", ["Fail", "Ignore"]), ("matchPolicy", ["Equivalent", "Exact"])):
            if hook[field] not in supported:
                errors.append(not_supported(f"{path}.{field}", hook[field], supported))
        if hook.get("sideEffects") is None:
            errors.append(required(f"{path}.sideEffects", "must specify one of None, NoneOnDryRun"))
        elif hook["sideEffects"] not in ("None", "NoneOnDryRun"):
            errors.append(not_supported(f"{path}.sideEffects", hook["sideEffects"], ["None", "NoneOnDryRun"]))
        if not 1 <= hook["timeoutSeconds"] <= 30:
            errors.append(invalid(f"{path}.timeoutSeconds", hook["timeoutSeconds"],
                                  "the timeout value must be between 1 and 30 seconds"))
        if hook["reinvocationPolicy"] not in ("IfNeeded", "Never"):
            errors.append(not_supported(f"{path}.reinvocationPolicy", hook["reinvocationPolicy"],
                                        ["IfNeeded", "Never"]))
        client = hook["clientConfig"]
        if ("url" in client) == ("service" in client):
            errors.append(required(f"{path}.clientConfig", "exactly one of url or service is required"))
        versions = hook.get("admissionReviewVersions", [])
        if not versions:
            errors.append(required(f"{path}.admissionReviewVersions", "must specify one of v1, v1beta1"))
        elif not {"v1", "v1beta1"} & set(versions):
            errors.append(invalid(f"{path}.admissionReviewVersions", versions,
                                  "must include at least one of v1, v1beta1"))
        if name in names:
            errors.append(duplicate(f"{path}.name", name))
        names.add(name)
    return errors


def validation_errors(resource: Resource, item: dict, old: dict | None) -> list[FieldError]:
    """The strategy's Validate (`old` None) or ValidateUpdate, after the common metadata
    update rule of rest/update.go (validateCommonFields: the uid cannot change)."""
    errors = []
    if old is not None and item["metadata"].get("uid") != old["metadata"].get("uid"):
        errors.append(invalid("metadata.uid", item["metadata"].get("uid", ""), "field is immutable"))
    if resource.kind == "Secret":
        return errors + secret_errors(item, old)
    if resource.kind == "MutatingWebhookConfiguration":
        return errors + webhook_errors(item)
    return errors + metadata_errors(resource, item)


def merge_patch(target, patch):
    """RFC 7386 JSON merge patch (evanphx/json-patch MergePatch): objects merge, null removes,
    anything else replaces."""
    if not isinstance(patch, dict):
        return copy(patch)
    merged = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            merged.pop(key, None)
        else:
            merged[key] = merge_patch(merged.get(key), value)
    return merged


def json_patch(document: dict, text: str):
    """RFC 6902 JSON patch (`jsonpatch`, as evanphx/json-patch in the API server): a patch
    that is not a list is 400 BadRequest; one that does not apply (a failing `test`, a
    missing path, an unknown op) is 422 Invalid with NewGenericServerResponse's message
    (endpoints/handlers/patch.go, applyJSPatch)."""
    operations = json.loads(text)
    if not isinstance(operations, list) or not all(isinstance(operation, dict) for operation in operations):
        raise bad_request(f"json: cannot unmarshal {json_type(operations)} into Go value of type jsonpatch.Patch")
    if len(operations) > MAX_JSON_PATCH_OPERATIONS:
        raise ApiError(413, "RequestEntityTooLarge",
                       f"Request entity too large: The allowed maximum operations in a JSON patch is "
                       f"{MAX_JSON_PATCH_OPERATIONS}, got {len(operations)}")
    try:
        return jsonpatch.JsonPatch(operations).apply(document)
    except (jsonpatch.JsonPatchException, jsonpointer.JsonPointerException, KeyError, IndexError, TypeError):
        raise ApiError(422, "Invalid", "the server rejected our request due to an error in our request",
                       {}) from None


def decoded(resource: Resource, body) -> dict:
    """`body` decoded for a create or an update; the decoder's errors as 400 BadRequest
    (endpoints/handlers/rest.go transformDecodeError; an apiVersion not the path's as
    create.go and update.go word it)."""
    try:
        return decode(resource, body)
    except VersionMismatch as error:
        raise bad_request(f"the API version in the data ({error}) does not match the expected API version "
                          f"({resource.api_version})") from None
    except DecodeError as error:
        raise bad_request(f'{resource.kind} in version "v1" cannot be handled as a {resource.kind}: {error}') from None


def match_namespace(metadata: dict, expected: str | None) -> None:
    """rest/meta.go EnsureObjectNamespaceMatchesRequestNamespace: an unset namespace becomes
    the path's, a cluster-scoped object's is cleared, another one is 400."""
    given = metadata.get("namespace", "")
    if given == (expected or ""):
        return
    if not given:
        metadata["namespace"] = expected
    elif expected is None:
        del metadata["namespace"]
    else:
        raise bad_request("the namespace of the provided object does not match the namespace sent on the request")


def check_name(item: dict, name: str) -> None:
    """endpoints/handlers/rest.go checkName: the object's name is the path's (400)."""
    if item["metadata"].get("name", "") != name:
        raise bad_request(f"the name of the object ({item['metadata'].get('name', '')}) does not match the name on the "
                          f"URL ({name})")


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
    """The objects by (kind, key) (Resource.key: a pod's is its bed name, a Secret's
    `namespace/name`, a cluster-scoped object's its name), the resourceVersion counter they
    share, each kind's bounded history of changes that watches are served from (the API
    server's watch caches), the faults and the write log."""

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
        # By kind: how many writes the conflicts fault still answers 409 Conflict.
        self.pending_conflicts: dict[str, int] = {}
        self.write_log: collections.deque[dict] = collections.deque(maxlen=WRITE_LOG_SIZE)
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

    def faults(self, stall_seconds: float | None = None, unavailable_seconds: float | None = None,
               conflicts: dict | None = None) -> None:
        """Stalls every watch for `stall_seconds`, or refuses every request for
        `unavailable_seconds`, from now; `conflicts` {"kind", "count" (1)}: the next `count`
        writes of that kind answer 409 Conflict (0 clears it). ValueError for an unknown kind."""
        if conflicts is not None:
            kind, count = conflicts.get("kind"), conflicts.get("count", 1)
            if kind not in KINDS or not KINDS[kind].verbs:
                writable = ", ".join(sorted(kind for kind, resource in KINDS.items() if resource.verbs))
                raise ValueError(f"conflicts: no writable kind {kind!r} (writable: {writable})")
            if not isinstance(count, int) or isinstance(count, bool) or count < 0:
                raise ValueError(f"conflicts: count must be a whole number, not {count!r}")
        with self.changed:
            now = time.monotonic()
            if stall_seconds is not None:
                self.stalled_until = max(self.stalled_until, now + stall_seconds)
            if unavailable_seconds is not None:
                self.unavailable_until = max(self.unavailable_until, now + unavailable_seconds)
            if conflicts is not None:
                self.pending_conflicts[conflicts["kind"]] = conflicts.get("count", 1)
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
                raise ValueError(f'{KINDS[kind].qualified_resource} "{item["metadata"]["name"]}" already exists')
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

    def find(self, resource: Resource, namespace: str | None, name: str) -> dict | None:
        """The object of `resource` named `name` (in `namespace`, for a kind that lives in one)."""
        with self.changed:
            item = self.objects.get((resource.kind, resource.key(namespace, name)))
            return item if item is not None and item["metadata"].get("namespace") == namespace else None

    def existing(self, resource: Resource, namespace: str | None, name: str) -> dict:
        """The object, or 404 NotFound."""
        item = self.find(resource, namespace, name)
        if item is None:
            raise not_found(resource, name)
        return item

    def write(self, verb: str, resource: Resource, namespace: str | None, name: str,
              operation: Callable[[], tuple[int, dict]]) -> tuple[int, dict]:
        """One write request (`verb`: create, update, patch or delete) as the registry gets
        it, `operation` doing it: a pending conflicts fault answers 409 Conflict first; the
        request goes to the write log with its outcome. Writes are serialised, so each
        reads the object it changes and stores the result at once (GuaranteedUpdate's
        retries never happen)."""
        code, version = 500, ""
        with self.changed:
            try:
                if self.pending_conflicts.get(resource.kind):
                    self.pending_conflicts[resource.kind] -= 1
                    raise conflict(resource, name)
                code, answer = operation()
                if verb != "delete":
                    name, version = answer["metadata"]["name"], answer["metadata"]["resourceVersion"]
                else:
                    version = str(self.version)
                return code, answer
            except ApiError as error:
                code = error.code
                raise
            finally:
                self.write_log.append({"time": time.time(), "verb": verb, "kind": resource.kind,
                                       "namespace": namespace, "name": name, "resourceVersion": version,
                                       "code": code})

    def writes(self) -> list[dict]:
        """The write log, oldest first: {"time" (Unix seconds), "verb", "kind", "namespace"
        (null when cluster-scoped), "name", "resourceVersion" (the object's after the write;
        the deletion's for a delete; "" when it failed), "code"}."""
        with self.changed:
            return list(self.write_log)

    def create(self, resource: Resource, namespace: str | None, body) -> tuple[int, dict]:
        """POST: endpoints/handlers/create.go, then registry/generic/registry/store.go Create:
        system fields wiped (rest/meta.go WipeObjectMetaSystemFields), the namespace matched
        to the path (400), the namespace required to exist (404, the NamespaceLifecycle
        admission plugin), generateName expanded (names.SimpleNameGenerator), uid and
        creationTimestamp set, the strategy's PrepareForCreate, validation (422), then the
        storage: a resourceVersion set is refused (500, storage.ErrResourceVersionSetOnCreate:
        an error without a Status, so reason Unknown) and an existing name is 409
        AlreadyExists. 201 Created with the object (ADDED)."""
        item = decoded(resource, body)
        metadata = item["metadata"]
        for key in ("uid", "creationTimestamp", "deletionTimestamp", "deletionGracePeriodSeconds"):
            metadata.pop(key, None)
        match_namespace(metadata, namespace if resource.namespaced else None)
        if resource.namespaced and self.find(KINDS["Namespace"], None, namespace) is None:
            raise not_found(KINDS["Namespace"], namespace)
        if not metadata.get("name") and metadata.get("generateName"):
            metadata["name"] = metadata["generateName"] + "".join(random.choices("bcdfghjklmnpqrstvwxz2456789", k=5))
        metadata["uid"], metadata["creationTimestamp"] = str(uuid.uuid4()), now_rfc3339()
        if resource.kind == "MutatingWebhookConfiguration":
            metadata["generation"] = 1  # mutatingwebhookconfiguration/strategy.go, PrepareForCreate
        elif resource.kind == "Namespace":  # namespace/strategy.go, PrepareForCreate; SetDefaults_Namespace
            metadata["labels"] = metadata.get("labels", {}) | {NAMESPACE_NAME_LABEL: metadata.get("name", "")}
            spec = expect(item.get("spec"), dict, "Namespace.spec", "v1.NamespaceSpec") or {}
            item["spec"] = spec | {"finalizers": list(dict.fromkeys([*(spec.get("finalizers") or []), "kubernetes"]))}
            item["status"] = {"phase": "Active"}
        if errors := validation_errors(resource, item, None):
            raise invalid_error(resource.group, resource.kind, metadata.get("name", ""), errors)
        version = metadata.pop("resourceVersion", "")
        if version.isdigit() and int(version):  # etcd3/store.go Create: a version that parses, not 0
            raise ApiError(500, "", "resourceVersion should not be set on objects to be created")
        key = resource.key(namespace, metadata["name"])
        if (resource.kind, key) in self.objects:
            raise ApiError(409, "AlreadyExists", f'{resource.qualified_resource} "{metadata["name"]}" already exists',
                           status_details(resource, metadata["name"]))
        return 201, self.record(resource.kind, key, "ADDED", item, None)

    def update(self, resource: Resource, namespace: str | None, name: str, body) -> tuple[int, dict]:
        """PUT: endpoints/handlers/update.go (namespace and name matched to the path: 400),
        then store.go Update (update_object)."""
        item = decoded(resource, body)
        match_namespace(item["metadata"], namespace if resource.namespaced else None)
        check_name(item, name)
        return 200, self.update_object(resource, self.existing(resource, namespace, name), item)

    def patch(self, resource: Resource, namespace: str | None, name: str, patch_type: str,
              text: str) -> tuple[int, dict]:
        """PATCH (endpoints/handlers/patch.go, jsonPatcher): the body must be JSON (400 "invalid
        JSON patch"); the object must exist (404); the patch applies to the object as
        served (kind, apiVersion and metadata.resourceVersion included, so a resourceVersion
        in a merge patch, or set by a JSON patch, is a precondition and a `test` of it
        works); a merge patch that is null or not an object or array is 400 "Invalid JSON
        Patch"; a result that does not decode is 422 Invalid on field "patch"; then as
        update_object."""
        try:
            patch = json.loads(text)
        except ValueError:
            raise bad_request("invalid JSON patch") from None
        current = self.existing(resource, namespace, name)
        if patch_type == "application/json-patch+json":
            patched = json_patch(copy(current), text)
        elif isinstance(patch, (dict, list)):
            patched = merge_patch(copy(current), patch)
        else:
            raise bad_request("Invalid JSON Patch")
        try:
            item = decode(resource, patched)
        except DecodeError as error:
            raise invalid_error("", "", "", [invalid("patch", json.dumps(patched, separators=(",", ":")),
                                                     str(error))]) from None
        match_namespace(item["metadata"], namespace if resource.namespaced else None)
        check_name(item, name)
        return 200, self.update_object(resource, current, item)

    def update_object(self, resource: Resource, current: dict, item: dict) -> dict:
        """store.go Update with the new object `item`: no resourceVersion is an unconditional
        update where the strategy allows it (Secret), else 422 "must be specified for an
        update" (MutatingWebhookConfiguration); one that differs from the stored one is 409
        Conflict; then rest/update.go BeforeUpdate (generation, uid, creationTimestamp and
        deletion fields kept from the stored object; a MutatingWebhookConfiguration's
        generation bumped when its webhooks change, its strategy's PrepareForUpdate),
        validation (422), and no write at all when nothing changed (etcd3 GuaranteedUpdate:
        the stored object, same version, no event). The object (MODIFIED)."""
        metadata, old = item["metadata"], current["metadata"]
        name, version = old["name"], metadata.get("resourceVersion", "")
        if version and not version.isdigit():  # APIObjectVersioner.ObjectResourceVersion; not a Status
            raise ApiError(500, "", f'resourceVersion: Invalid value: "{version}": strconv.ParseUint: parsing '
                                    f'"{version}": invalid syntax')
        if not version or not int(version):
            if not resource.unconditional_update:
                raise invalid_error(resource.group, resource.plural, name, [
                    invalid("metadata.resourceVersion", 0, "must be specified for an update")])
        elif int(version) != int(old["resourceVersion"]):
            raise conflict(resource, name)
        metadata["resourceVersion"] = old["resourceVersion"]
        metadata.pop("generation", None)
        if "generation" in old:
            metadata["generation"] = old["generation"]
        metadata.setdefault("uid", old["uid"])
        for key in ("creationTimestamp", "deletionTimestamp", "deletionGracePeriodSeconds"):
            if key in old:
                metadata[key] = old[key]
        if resource.kind == "MutatingWebhookConfiguration" and item.get("webhooks") != current.get("webhooks"):
            metadata["generation"] = old.get("generation", 0) + 1
        if errors := validation_errors(resource, item, current):
            raise invalid_error(resource.group, resource.kind, name, errors)
        if item == current:
            return current
        return self.record(resource.kind, resource.key(old.get("namespace"), name), "MODIFIED", item, current)

    def remove(self, resource: Resource, namespace: str | None, name: str, options: dict) -> tuple[int, dict]:
        """DELETE: store.go Delete of an object without finalizers or graceful deletion: 404
        when absent; DeleteOptions `preconditions` (uid, resourceVersion) that do not hold are
        409 Conflict (rest/delete.go BeforeDelete, whose GroupResource is made of the kind);
        then DELETED, and 200 with a Status of success naming it (store.go finalizeDelete:
        neither kind sets ReturnDeletedObject). Propagation and grace options are ignored."""
        current = self.existing(resource, namespace, name)
        preconditions = expect(options.get("preconditions"), dict, "DeleteOptions.preconditions",
                               "v1.Preconditions") or {}
        uid, version = preconditions.get("uid"), preconditions.get("resourceVersion")
        stored_uid, stored_version = current["metadata"]["uid"], current["metadata"]["resourceVersion"]
        if uid is not None and uid != stored_uid:
            raise conflict(resource, name, f"the UID in the precondition ({uid}) does not match the UID in record "
                                           f"({stored_uid}). The object might have been deleted and then recreated",
                           kind_as_resource=True)
        if version is not None and version != stored_version:
            raise conflict(resource, name, f"the ResourceVersion in the precondition ({version}) does not match the "
                                           f"ResourceVersion in record ({stored_version}). The object might have been "
                                           "modified", kind_as_resource=True)
        self.record(resource.kind, resource.key(namespace, name), "DELETED", None, current)
        return 200, {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success",
                     "details": status_details(resource, name, uid=stored_uid)}

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
    return {"type": "BOOKMARK", "object": {"kind": kind, "apiVersion": KINDS[kind].api_version, "metadata": metadata}}


def locate(parts: list[str]) -> tuple[Resource, str | None, str | None]:
    """The resource, namespace and name a request path names: `/api/v1/...` for the core
    group, `/apis/<group>/v1/...` for the others; 404 for anything else."""
    if parts[:2] == ["api", "v1"]:
        group, rest = "", parts[2:]
    elif len(parts) >= 3 and parts[0] == "apis" and parts[2] == "v1":
        group, rest = parts[1], parts[3:]
    else:
        group, rest = "", []
    namespace = None
    if len(rest) >= 3 and rest[0] == "namespaces" and getattr(RESOURCES.get((group, rest[2])), "namespaced", False):
        namespace, rest = rest[1], rest[2:]
    resource = RESOURCES.get((group, rest[0])) if rest else None
    if resource is None or len(rest) > 2 or (resource.namespaced and namespace is None and len(rest) == 2):
        raise ApiError(404, "NotFound", "the server could not find the requested resource")
    return resource, namespace, rest[1] if len(rest) == 2 else None


WRITES = {"POST": "create", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}
TESTENV_PATH = "/_testenv/"


def handler(cluster: Cluster):
    class Handler(BaseHTTPRequestHandler):
        """One connection to the API server: reads of every kind, the writes each kind takes,
        the test environment's calls under /_testenv/; anything else 404 or 405."""

        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True  # as the IMDS handler: no delayed-ACK stall per answer

        def log_message(self, *args):  # quiet
            pass

        def do_GET(self):
            self.serve("GET")

        def do_POST(self):
            self.serve("POST")

        def do_PUT(self):
            self.serve("PUT")

        def do_PATCH(self):
            self.serve("PATCH")

        def do_DELETE(self):
            self.serve("DELETE")

        def serve(self, method: str) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            url = urlsplit(self.path)
            if url.path.startswith(TESTENV_PATH):
                return self.testenv(method, url.path[len(TESTENV_PATH):], body)
            if self.refused():
                return
            query = parse_qs(url.query, keep_blank_values=True)
            try:
                resource, namespace, name = locate(url.path.rstrip("/").split("/")[1:])
                if method == "GET":
                    self.read(resource, namespace, name, query)
                else:
                    self.reply(*self.write(method, resource, namespace, name, query, body))
            except ApiError as error:
                self.reply(error.code, error.status())

        def refused(self) -> bool:
            """Answers 503 while the server is unavailable (apimachinery pkg/api/errors,
            NewGenericServerResponse's message for 503)."""
            if cluster.unavailable():
                self.reply(503, status_object(503, "ServiceUnavailable",
                                              "the server is currently unable to handle the request"))
                return True
            return False

        def read(self, resource: Resource, namespace: str | None, name: str | None,
                 query: dict[str, list[str]]) -> None:
            if name is None:
                return self.collection(resource, namespace, query)
            item = cluster.find(resource, namespace, name)
            if item is None:
                raise not_found(resource, name)
            return self.reply(200, item)

        def write(self, method: str, resource: Resource, namespace: str | None, name: str | None,
                  query: dict[str, list[str]], body: bytes) -> tuple[int, dict]:
            """A write the kind takes (a create on its collection, the others on an object,
            always in a namespace for a namespaced kind), else 405."""
            verb = WRITES[method]
            if verb not in resource.verbs or (name is None) != (verb == "create") or (
                    resource.namespaced and namespace is None):
                raise ApiError(405, "MethodNotAllowed", "the server does not allow this method on the requested "
                                                        "resource")
            if "dryRun" in query:
                raise bad_request("dryRun is not supported by the stand-in API server")
            text = body.decode(errors="replace")
            if verb == "patch":
                # patch.go: the Content-Type first, "; charset=" dropped; strategic merge and
                # apply patches are not modelled, so not accepted.
                patch_type = (self.headers.get("Content-Type") or "").split(";")[0].strip()
                if patch_type not in PATCH_TYPES:
                    raise ApiError(415, "UnsupportedMediaType",
                                   "the body of the request was in an unknown format - accepted media types include: "
                                   + ", ".join(PATCH_TYPES))
                return cluster.write(verb, resource, namespace, name,
                                     lambda: cluster.patch(resource, namespace, name, patch_type, text))
            if verb == "delete":
                return cluster.write(verb, resource, namespace, name,
                                     lambda: cluster.remove(resource, namespace, name, delete_options(text)))
            if verb == "update":
                return cluster.write(verb, resource, namespace, name,
                                     lambda: cluster.update(resource, namespace, name, parse_object(resource, text)))
            return cluster.write(verb, resource, namespace, body_name(text),
                                 lambda: cluster.create(resource, namespace, parse_object(resource, text)))

        def testenv(self, method: str, path: str, body: bytes) -> None:
            """The test environment's calls, not part of the Kubernetes API (never refused):
            GET writes, POST faults."""
            if method == "GET" and path == "writes":
                return self.reply(200, {"writes": cluster.writes()})
            if method == "POST" and path == "faults":
                try:
                    request = json.loads(body or b"{}")
                    if not isinstance(request, dict):
                        raise ValueError("faults: a JSON object is expected")
                    cluster.faults(request.get("stall_seconds"), request.get("unavailable_seconds"),
                                   request.get("conflicts"))
                except ValueError as error:
                    return self.reply(400, {"error": str(error)})
                return self.reply(200, {})
            return self.reply(404, {"error": f"unknown test environment call {method} {TESTENV_PATH}{path}"})

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
            self.reply(200, {"kind": f"{resource.kind}List", "apiVersion": resource.api_version,
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


def parse_object(resource: Resource, text: str):
    """The JSON body of a create or an update; 400 when it is not JSON (transformDecodeError
    without a kind)."""
    try:
        return json.loads(text)
    except ValueError as error:
        raise bad_request(f"the object provided is unrecognized (must be of type {resource.kind}): couldn't get "
                          f"version/kind; json parse error: {error}") from None


def body_name(text: str) -> str:
    """The metadata.name of a create's body, when it has one (for the write log and faults)."""
    try:
        name = json.loads(text)["metadata"]["name"]
    except (ValueError, KeyError, TypeError):
        return ""
    return name if isinstance(name, str) else ""


def delete_options(text: str) -> dict:
    """The DeleteOptions of a DELETE's body ({} without one); 400 when it is not a JSON object."""
    try:
        options = json.loads(text) if text.strip() else {}
    except ValueError as error:
        raise bad_request(f"error decoding DeleteOptions: {error}") from None
    if not isinstance(options, dict):
        raise bad_request(f"json: cannot unmarshal {json_type(options)} into Go value of type v1.DeleteOptions")
    return options


def start(host: str, cluster: Cluster, port: int = 0) -> ThreadingHTTPServer:
    """Serves `cluster` on `host` (IPv4 or IPv6), on `port` (0: a free one); every request
    has a thread."""

    class Server(ThreadingHTTPServer):
        address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
        daemon_threads = True

    server = Server((host, port), handler(cluster))
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


def main(arguments: list[str] | None = None) -> int:
    """Standalone: the API server alone (no bed, no root, no EC2), its system namespaces
    made, until SIGTERM, SIGINT or the end of standard input."""
    parser = argparse.ArgumentParser(description="A stand-in Kubernetes API server over plain HTTP (testenv/kube.py)")
    parser.add_argument("--host", default="127.0.0.1", help="listen address (IPv4 or IPv6)")
    parser.add_argument("--port", type=int, default=0, help="listen port (0: a free one)")
    parser.add_argument("--kubeconfig", type=Path, help="write a kubeconfig for the server here (removed at exit)")
    parser.add_argument("--name", default="ipmgr-kube", help="the kubeconfig's cluster, user and context name")
    options = parser.parse_args(arguments)
    cluster = Cluster()
    server = start(options.host, cluster, options.port)
    host = f"[{options.host}]" if ":" in options.host else options.host
    endpoint = f"http://{host}:{server.server_address[1]}"
    if options.kubeconfig:
        write_kubeconfig(options.kubeconfig, endpoint, options.name)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())

    def read_to_end() -> None:
        for _ in sys.stdin:
            pass
        stop.set()

    threading.Thread(target=read_to_end, daemon=True, name="stdin").start()
    kubeconfig = str(options.kubeconfig) if options.kubeconfig else None
    print(json.dumps({"kube_endpoint": endpoint, "kubeconfig": kubeconfig}), flush=True)
    try:
        stop.wait()
    finally:
        cluster.close()
        server.server_close()
        if options.kubeconfig:
            options.kubeconfig.unlink(missing_ok=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
