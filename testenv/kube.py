"""A minimal Kubernetes API server for the test bed: the bed's pods, their namespaces and the
topology's nodes as `v1` Pod, Namespace and Node objects (Nodes and their status written too,
with a kubelet of their own), and `v1` Secrets, `admissionregistration.k8s.io/v1`
MutatingWebhookConfigurations and `k8s.cni.cncf.io/v1` NetworkAttachmentDefinitions that
clients write (a webhook keeping its CA and serving certificate in a Secret and the caBundle
of its configuration up to date, an admin's Multus networks), optionally under RBAC, over
plain HTTP on the bed's gateway, for clients such as the
node agent's `kube::runtime::watcher` (kube 5), whose default is list-then-watch:
`GET /api/v1/pods?fieldSelector=...&limit=500`, then
`?watch=true&timeoutSeconds=290&allowWatchBookmarks=true&resourceVersion=<the list's>`
(kube-runtime 5.0.0, watcher.rs `to_list_params` and `to_watch_params`; kube-core 5.0.0,
params.rs). `python3 -m testenv.kube` runs it alone (see Standalone below).

Paths: `GET /api/v1/pods`, `/api/v1/namespaces/{ns}/pods`, `/api/v1/namespaces`,
`/api/v1/nodes`, `/api/v1/secrets`, `/api/v1/namespaces/{ns}/secrets`,
`/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations`,
`/apis/k8s.cni.cncf.io/v1/network-attachment-definitions` and
`/apis/k8s.cni.cncf.io/v1/namespaces/{ns}/network-attachment-definitions` (lists, or watches
with `watch`), `/api/v1/namespaces/{ns}/pods/{name}`, `/api/v1/namespaces/{name}`,
`/api/v1/nodes/{name}`, `/api/v1/nodes/{name}/status` (the whole Node, as the real server
answers it), `/api/v1/namespaces/{ns}/secrets/{name}`,
`/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations/{name}` and
`.../namespaces/{ns}/network-attachment-definitions/{name}`. Writes: POST (create) on
`/api/v1/namespaces/{ns}/secrets`, `.../mutatingwebhookconfigurations`,
`.../namespaces/{ns}/network-attachment-definitions` and `/api/v1/namespaces`; PUT (update),
PATCH and DELETE on a Secret, a MutatingWebhookConfiguration or a
NetworkAttachmentDefinition; PUT and PATCH on a Node and on its status; any other method is
405 (the real server also creates and deletes Nodes: here the bed makes them). No discovery
(`/api`, `/apis`) is served: 404. Each rule follows the real API server and names its source
(k8s.io/apiserver unless said otherwise; "API concepts" is the Kubernetes documentation page
of that name; pkg/... is k8s.io/kubernetes):

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
  30 s (pkg/apis/admissionregistration/validation); a Node's capacity and allocatable values
  are not negative, and whole for pods and extended resources (`Node "node1" is invalid:
  status.capacity.example.com/foo: Invalid value: "1500m": must be an integer`,
  ValidateNodeUpdate, ValidateNodeResources; resource names are not checked, as in the real
  server), its addresses not repeated, its providerID unchanged. Other rules are not checked.
* Nodes (pkg/registry/core/node/strategy.go): an update or patch of `nodes/NAME` keeps the
  stored status and one of `nodes/NAME/status` the stored spec (PrepareForUpdate: a change
  to the other part is dropped silently); metadata changes through either. A Node's
  status.capacity and status.allocatable are maps of quantities (resource.Quantity): one that
  does not parse is a decoding error (`quantities must match the regular expression ...`:
  400 for an update, 422 on field "patch" for a patch) and each is stored and answered in
  its canonical form (1.5Gi is 1536Mi, 2000m is 2: quantity.go CanonicalizeBytes). A
  topology node's Node has the capacity and allocatable an EKS kubelet reports for its
  instance type (kubelet_resources: cpu, memory, pods, ephemeral-storage, hugepages).
* The kubelet: after each write to a Node, its kubelet's next status update (pkg/kubelet
  nodestatus/setters.go MachineInfo) puts its own cpu, memory, pods, ephemeral-storage and
  hugepages back in capacity and allocatable, gives every other resource of capacity (an
  extended resource a device plugin or agent advertises) the same value in allocatable, and
  takes out of allocatable an extended resource capacity no longer has: a MODIFIED of its
  own when that changes anything, not in the write log (the bed's own change, as pods' are).
  It comes at once, before the write is answered, unless `kubelet_sync_seconds` (config) is
  set: then that long after the first write (writes in between go into the same update; the
  real kubelet's comes within nodeStatusUpdateFrequency, 10 s).
* NetworkAttachmentDefinitions (the CRD of
  k8snetworkplumbingwg/network-attachment-definition-client artifacts/networks-crd.yaml,
  served as apiextensions-apiserver serves a custom resource):
  namespaced, selectable by metadata.name and metadata.namespace; fields the schema does not
  name, and nulls, are pruned (schema/pruning); spec is required, spec.config required and a
  string (the config's JSON is not checked): `NetworkAttachmentDefinition.k8s.cni.cncf.io
  "NAME" is invalid: spec.config: Invalid value: "integer": spec.config in body must be of
  type string: "integer"` (pkg/apiserver/validation ValidateCustomResource); generation 1 at
  creation, bumped when anything but metadata changes; an update needs a resourceVersion
  (customresource/strategy.go: AllowUnconditionalUpdate false).
* RBAC (optional): a request bearing `Authorization: Bearer <token>` for a token registered
  with the `rbac` call is that user's, and allowed only what its PolicyRules (a ClusterRole's
  everywhere, a Role's in its namespace) and the roles of every authenticated user
  (system:basic-user, system:discovery, system:public-info-viewer) allow, with RBAC's
  matching (plugin/pkg/auth/authorizer/rbac rbac.go RuleAllows, pkg/apis/rbac/v1
  evaluation_helpers.go): verbs get, list, watch, create, update, patch, delete,
  deletecollection as requestinfo.go derives them (a list or watch with the field selector
  metadata.name=X is named X), `*` wildcards, `resource/subresource` and `*/subresource`,
  resourceNames (never matching a list, watch or create without a name), nonResourceURLs. A
  denial is checked before routing and answered 403 Forbidden: `nodes "node1" is
  forbidden: User "system:serviceaccount:ns:sa" cannot patch resource "nodes/status" in API
  group "" at the cluster scope` (responsewriters/errors.go forbiddenMessage, api/errors
  NewForbidden); it goes to the denials (and a write to the write log, code 403). A request
  without a token, or with one not registered, is not authenticated and allowed everything,
  as before (the real server answers 401 to an unknown token). The Node authorizer and
  admission (NodeRestriction) are not modelled.
* Namespaces can be created (POST /api/v1/namespaces: the `kubernetes.io/metadata.name`
  label, the kubernetes finalizer, phase Active), so that a namespaced create has its
  namespace; they are not updated or deleted here.

The bed's own objects change only through the bed: a pod's creation is one ADDED with the
whole object (scheduling and the status updates before it are left out), its namespace's
ADDED before it when the namespace is new; an annotation change is one MODIFIED, none when it
changes nothing; a deletion is what a graceful delete shows: MODIFIED with
`deletionTimestamp`, then, once the runtime has removed the sandbox, DELETED. The system
namespaces exist from the start and each topology node has its Node, as its kubelet
registers it. Re-registration (the `nodes/NAME/reregister` call) is the kubelet registering
the node anew, as when its object was deleted or its instance replaced: DELETED, then ADDED
with a new uid, creationTimestamp and resourceVersion and only what the kubelet reports (no
extended resources, no labels or annotations others added: kubelet_node_status.go
registerWithAPIServer).

Faults: for some seconds every watch, open or new, delivers nothing (no event, no bookmark,
not its end) and then what it held, in order, while lists are answered (a proxy or API
server that silently stops delivering); or every new request is refused with 503 (open
watches go on); or the next N writes of a kind (Secret, MutatingWebhookConfiguration,
Namespace, Node, NetworkAttachmentDefinition) are answered 409 Conflict, as if another
writer had just changed the object, before the object is read or the body checked.

The test environment's calls, not part of the Kubernetes API (never refused, JSON both ways;
400 {"error"} when refused; the bed's control API has each under kube/ instead of /_testenv/,
testenv/awsenv.py; `control` serves them):

* `POST /_testenv/faults` {"stall_seconds", "unavailable_seconds", "conflicts": {"kind",
  "count" (1; 0 clears)}} -> {} (a kind that takes no write is refused).
* `GET /_testenv/writes` -> {"writes": [{"time" (Unix seconds), "verb" (create, update,
  patch, delete), "kind", "namespace" (null when cluster-scoped), "name", "subresource" (null
  or "status"), "user" (the token's; null without one), "resourceVersion" (the object's after
  the write, the deletion's for a delete, "" when refused), "code"}]}: every write request,
  oldest first (the last 10000).
* `POST /_testenv/rbac` {"user", "rules": [PolicyRule {"apiGroups", "resources",
  "resourceNames", "verbs", "nonResourceURLs"}, with "namespace" for a Role's rule], "token"
  (made up when not given)} -> {"token", "user", "kubeconfig" (a kubeconfig for the server
  with `token:`, its context's namespace the service account's; removed when the server
  stops)}. `GET /_testenv/denied` -> {"denied": [{"time", "user", "verb", "resourceRequest",
  "path", "apiGroup", "resource", "subresource", "namespace", "name", "message"}]}.
* `POST /_testenv/nodes/NAME/reregister` -> the new Node; `POST /_testenv/nodes` {"name",
  "instance_type" (m5.large; any type moto knows), "availability_zone", "instance_id",
  "address", "address6"} -> a Node more (ADDED), as its kubelet registers it.
* `POST /_testenv/config` {"kubelet_sync_seconds" (0), "event_history" (1000),
  "bookmark_seconds" (60)} -> {}.
* `POST /_testenv/request` {"method" (GET), "path" (and query), "body" (JSON), "content_type"
  (application/json), "token"} -> {"status", "body"}: one API request but a watch, as a
  client's (the bed's pods and nodes reach the API server; its controller does not).

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
import functools
import gzip
import hashlib
import importlib.util
import json
import math
import random
import re
import secrets
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
import uuid
from fractions import Fraction
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
# registry/generic/matcher.go, DefaultNamespaceScopedAttr: a custom resource by name and namespace.
CUSTOM_RESOURCE_FIELDS: dict[str, Callable[[dict], str]] = {
    "metadata.name": lambda item: item["metadata"]["name"],
    "metadata.namespace": lambda item: item["metadata"]["namespace"],
}
ADMISSION_GROUP = "admissionregistration.k8s.io"
# k8snetworkplumbingwg/network-attachment-definition-client, artifacts/networks-crd.yaml.
NAD_GROUP = "k8s.cni.cncf.io"
WRITE_VERBS = frozenset({"create", "update", "patch", "delete"})


class Resource(NamedTuple):
    """A kind the server serves: its path's plural, whether its objects live in a namespace,
    the fields they can be selected by, its API group ("" for the core group), the writes it
    takes (of "create", "update", "patch", "delete"), whether an update without a
    resourceVersion is allowed (its strategy's AllowUnconditionalUpdate) and the
    subresources it serves (each takes get, update and patch)."""

    kind: str
    plural: str
    namespaced: bool
    fields: dict[str, Callable[[dict], str]]
    group: str = ""
    verbs: frozenset[str] = frozenset()
    unconditional_update: bool = True
    subresources: frozenset[str] = frozenset()

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
    # Nodes are updated and patched, and their status through nodes/status; the bed makes
    # them (and the reregister call remakes one), so they are not created or deleted here.
    Resource("Node", "nodes", False, NODE_FIELDS, verbs=frozenset({"update", "patch"}),
             subresources=frozenset({"status"})),
    Resource("Secret", "secrets", True, SECRET_FIELDS, verbs=WRITE_VERBS),
    # pkg/registry/admissionregistration/mutatingwebhookconfiguration/strategy.go:
    # AllowUnconditionalUpdate is false.
    Resource("MutatingWebhookConfiguration", "mutatingwebhookconfigurations", False, CLUSTER_SCOPED_FIELDS,
             ADMISSION_GROUP, WRITE_VERBS, unconditional_update=False),
    # A custom resource (apiextensions-apiserver pkg/registry/customresource/strategy.go:
    # AllowUnconditionalUpdate is false).
    Resource("NetworkAttachmentDefinition", "network-attachment-definitions", True, CUSTOM_RESOURCE_FIELDS,
             NAD_GROUP, WRITE_VERBS, unconditional_update=False))}
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
    its details, when it has them; the user refused, for a denial)."""

    def __init__(self, code: int, reason: str, message: str, details: dict | None = None, user: str | None = None):
        super().__init__(message)
        self.code, self.reason, self.message, self.details, self.user = code, reason, message, details, user

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
    it (name, node, namespace, uid, eth0 address, interface MACs; `containers`, when given,
    are its containers as admitted), `host_ip` its node's
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
        "spec": {"nodeName": pod["node"], "containers": spec.get("containers") or [{"name": "app", "image": "busybox"}],
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
    the node IPs, then the hostname), capacity and allocatable (kubelet_resources), the AWS
    cloud provider's (k8s.io/cloud-provider-aws: providerID `aws:///<zone>/<instance id>`,
    zone, region and instance type labels). Its InternalIPs are its namespace's eth0
    addresses, where its pods' traffic comes from."""
    labels = {"kubernetes.io/arch": "amd64", "kubernetes.io/hostname": name, "kubernetes.io/os": "linux",
              "node.kubernetes.io/instance-type": node["instance_type"], "topology.kubernetes.io/region": region,
              "topology.kubernetes.io/zone": node["availability_zone"]}
    capacity, allocatable = kubelet_resources(node["instance_type"])
    return {
        "apiVersion": "v1", "kind": "Node", "metadata": object_meta(name, labels, {}),
        "spec": {"providerID": f"aws:///{node['availability_zone']}/{node['instance_id']}"},
        "status": {"capacity": capacity, "allocatable": allocatable,
                   "addresses": [{"type": "InternalIP", "address": address},
                                 {"type": "InternalIP", "address": address6}, {"type": "Hostname", "address": name}],
                   "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady",
                                   "message": "kubelet is posting ready status"}]},
    }


# moto's copy of EC2's DescribeInstanceTypes data, as the topology uses it (testenv/topology.py):
# found without importing moto (the standalone server starts without it).
MOTO = importlib.util.find_spec("moto")
INSTANCE_TYPES_FILE = Path(MOTO.origin).parent / "ec2/resources/instance_types.json.gz" if MOTO else None
M5_LARGE = (2, 8192, 29)  # vCPUs, memory (MiB), maxPods: the bed's default instance type
ROOT_VOLUME = ("20959212Ki", "18242267924")  # a 20 GiB root volume: capacity, allocatable (-1Gi, -10%)


@functools.cache
def instance_types() -> dict:
    if INSTANCE_TYPES_FILE is None or not INSTANCE_TYPES_FILE.exists():
        return {}
    return json.loads(gzip.decompress(INSTANCE_TYPES_FILE.read_bytes()))


def instance_shape(instance_type: str) -> tuple[int, int, int]:
    """An instance type's vCPUs and memory (MiB), and the maxPods an EKS node of that type
    gets: the VPC CNI's ENI limit, ENIs of network card 0 * (IPv4 addresses an ENI - 1) + 2
    (amazon-eks-ami eni-max-pods.txt and its max-pods calculator: m5.large 29, m5.xlarge 58,
    p5.48xlarge 100). An m5.large's for a type moto does not know."""
    data = instance_types().get(instance_type)
    if data is None:
        return M5_LARGE
    network = data["NetworkInfo"]
    cards = [card for card in network.get("NetworkCards", []) if card.get("NetworkCardIndex") == 0]
    enis = cards[0]["MaximumNetworkInterfaces"] if cards else network["MaximumNetworkInterfaces"]
    return (data["VCpuInfo"]["DefaultVCpus"], data["MemoryInfo"]["SizeInMiB"],
            enis * (network["Ipv4AddressesPerInterface"] - 1) + 2)


def kubelet_resources(instance_type: str) -> tuple[dict[str, str], dict[str, str]]:
    """The capacity and allocatable an EKS node's kubelet reports (pkg/kubelet/nodestatus
    setters.go MachineInfo) for its instance type (instance_shape): cpu, the memory the
    kernel shows (about 94.3 % of the instance's), maxPods, a 20 GiB root volume, no
    hugepages; allocatable less the EKS AMI's kube-reserved (cpu: 6 % of the first core, 1 %
    of the second, 0.5 % of the third and fourth, 0.25 % of the others; memory: 255 Mi + 11 Mi
    a pod) and the 100 Mi memory eviction threshold (amazon-eks-ami, the kubelet
    configuration it writes). An m5.large: cpu 2 (1930m), memory 7910457Ki (7220281Ki), pods 29."""
    cpus, memory_mib, max_pods = instance_shape(instance_type)
    reserved_millicpu = round(60 * min(cpus, 1) + 10 * min(max(cpus - 1, 0), 1) + 5 * min(max(cpus - 2, 0), 2)
                              + 2.5 * max(cpus - 4, 0))
    memory_ki = memory_mib * 1024 * 943 // 1000
    reserved_memory_ki = (255 + 11 * max_pods + 100) * 1024
    capacity = {"cpu": str(cpus), "ephemeral-storage": ROOT_VOLUME[0], "hugepages-1Gi": "0", "hugepages-2Mi": "0",
                "memory": f"{memory_ki}Ki", "pods": str(max_pods)}
    allocatable = capacity | {"cpu": f"{cpus * 1000 - reserved_millicpu}m", "ephemeral-storage": ROOT_VOLUME[1],
                              "memory": f"{memory_ki - reserved_memory_ki}Ki"}
    return ({key: quantity(value) for key, value in capacity.items()},
            {key: quantity(value) for key, value in allocatable.items()})


def is_extended_resource(name: str) -> bool:
    """pkg/apis/core/v1/helper IsExtendedResourceName: outside the kubernetes.io domain
    (IsNativeResource: no prefix, or one containing "kubernetes.io/"), not "requests."-prefixed,
    and a qualified name once "requests." is put before it."""
    if "/" not in name or "kubernetes.io/" in name or name.startswith("requests."):
        return False
    return is_qualified_name("requests." + name)


QUALIFIED_NAME = "([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]"  # util/validation, qualifiedNameFmt


def is_qualified_name(value: str) -> bool:
    """util/validation IsQualifiedName: an optional DNS subdomain prefix and '/', then a name
    of at most 63 alphanumerics, '-', '_' and '.' that starts and ends alphanumeric."""
    parts = value.split("/")
    if len(parts) > 2 or (len(parts) == 2 and (not parts[0] or subdomain_errors(parts[0]))):
        return False
    return len(parts[-1]) <= 63 and re.fullmatch(QUALIFIED_NAME, parts[-1]) is not None


# pkg/apis/core/helper, integerResources (the quota's counts); extended resources are too.
INTEGER_RESOURCES = frozenset({"pods", "quotas", "services", "replicationcontrollers", "secrets", "configmaps",
                               "persistentvolumeclaims", "services.nodeports", "services.loadbalancers"})


def kubelet_status(status: dict, reported: dict) -> dict:
    """`status` after the kubelet's next node status update (pkg/kubelet/nodestatus/setters.go
    MachineInfo), `reported` being what the kubelet measures: its own resources (cpu, memory,
    pods, ephemeral-storage, hugepages) over status.capacity, whose other entries (extended
    resources a device plugin or another writer put there) stay; then in status.allocatable
    an extended resource no longer in capacity goes, and every resource of capacity gets
    capacity's value (the kubelet's own: its allocatable, less its reservations)."""
    capacity = dict(status.get("capacity") or {}) | reported["capacity"]
    allocatable = {name: value for name, value in (status.get("allocatable") or {}).items()
                   if name in capacity or not is_extended_resource(name)}
    for name, value in capacity.items():
        allocatable[name] = reported["allocatable"].get(name, value)
    return status | {"capacity": capacity, "allocatable": allocatable}


# k8s.io/apimachinery/pkg/api/resource/quantity.go: ErrFormatWrong, ErrSuffix; the suffixes
# (suffix.go) by power of 10 and of 2.
QUANTITY_FORMAT_ERROR = ("quantities must match the regular expression "
                         "'^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'")
QUANTITY_SUFFIX_ERROR = "unable to parse quantity's suffix"
QUANTITY = re.compile(r"([+-]?)([0-9]*)(?:\.([0-9]*))?([eEinumkKMGTP]*[-+]?[0-9]*)")
DECIMAL_SUFFIXES = {"n": -9, "u": -6, "m": -3, "": 0, "k": 3, "M": 6, "G": 9, "T": 12, "P": 15, "E": 18}
BINARY_SUFFIXES = {"": 0, "Ki": 10, "Mi": 20, "Gi": 30, "Ti": 40, "Pi": 50, "Ei": 60}


def parse_quantity(text: str) -> tuple[Fraction, str]:
    """resource.ParseQuantity (parseQuantityString, then the suffix): the value, rounded up
    to a whole nano ("if you want some resources, you should get some resources"), and its
    format by the suffix: DecimalSI (none, n to E), BinarySI (Ki to Ei), DecimalExponent
    (e or E and a number). DecodeError with the package's messages when it does not parse."""
    match = QUANTITY.fullmatch(text)
    if not text or match is None:
        raise DecodeError(QUANTITY_FORMAT_ERROR)
    sign, whole, fraction, suffix = match[1], match[2], match[3] or "", match[4]
    if suffix in DECIMAL_SUFFIXES:
        scale, form = Fraction(10) ** DECIMAL_SUFFIXES[suffix], "DecimalSI"
    elif suffix in BINARY_SUFFIXES:
        scale, form = Fraction(2) ** BINARY_SUFFIXES[suffix], "BinarySI"
    elif len(suffix) > 1 and suffix[0] in "eE" and re.fullmatch(r"[-+]?[0-9]{1,4}", suffix[1:]):
        scale, form = Fraction(10) ** int(suffix[1:]), "DecimalExponent"
    else:
        raise DecodeError(QUANTITY_SUFFIX_ERROR)
    value = Fraction(math.ceil(Fraction(int(whole + fraction or "0"), 10 ** len(fraction)) * scale * 10 ** 9),
                     10 ** 9)
    return (-value if sign == "-" else value), form


def canonical_quantity(value: Fraction, form: str) -> str:
    """Quantity.String(), the form the server stores and answers (CanonicalizeBytes): BinarySI
    as a whole number with the largest power-of-1024 suffix that keeps it whole (below 1024,
    or not whole, it is DecimalSI); DecimalSI and DecimalExponent as the mantissa without
    trailing zeros, its exponent brought down to a multiple of 3 (AsCanonicalBytes), then its
    SI suffix or `e<exponent>`. So 1.5Gi is 1536Mi, 2000m is 2, 1000 is 1k, 0.5 is 500m."""
    if value == 0:
        return "0"
    sign, magnitude = "-" if value < 0 else "", abs(value)
    if form == "BinarySI" and magnitude >= 1024 and magnitude.denominator == 1:
        number, power = int(magnitude), 0
        while number % 1024 == 0 and power < 60:
            number, power = number // 1024, power + 10
        return f"{sign}{number}{next(key for key, bits in BINARY_SUFFIXES.items() if bits == power)}"
    number, exponent = int(magnitude * 10 ** 9), -9
    while number % 10 == 0:
        number, exponent = number // 10, exponent + 1
    number, exponent = number * 10 ** (exponent % 3), exponent - exponent % 3
    if form == "DecimalExponent" or exponent not in DECIMAL_SUFFIXES.values():
        return f"{sign}{number}" + (f"e{exponent}" if exponent else "")
    return f"{sign}{number}{next(key for key, power in DECIMAL_SUFFIXES.items() if power == exponent)}"


def quantity(value) -> str:
    """A resource.Quantity field as decoded (Quantity.UnmarshalJSON: a string without its
    quotes and surrounding space, or the JSON text of any other value; null is 0) and
    encoded again: its canonical form. DecodeError when it is not a quantity."""
    if value is None:
        return "0"
    text = value.strip() if isinstance(value, str) else json.dumps(value, separators=(",", ":"))
    return canonical_quantity(*parse_quantity(text))


def quantity_value(text: str) -> Fraction:
    """The value of a canonical quantity."""
    return parse_quantity(text)[0]


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
    elif resource.kind == "Node":
        decode_node(item)
    elif resource.kind == "NetworkAttachmentDefinition":
        prune_custom_resource(item, NAD_SCHEMA)
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


def decode_node(node: dict) -> None:
    """A Node's spec and status as objects; status.capacity and status.allocatable maps of
    quantities, each answered in its canonical form (quantity)."""
    expect(node.get("spec"), dict, "Node.spec", "v1.NodeSpec")
    status = expect(node.get("status"), dict, "Node.status", "v1.NodeStatus")
    for key in ("capacity", "allocatable"):
        if status is not None and status.get(key) is not None:
            resources = expect(status[key], dict, f"NodeStatus.status.{key}", "v1.ResourceList")
            status[key] = {name: quantity(value) for name, value in resources.items()}
    prune(node, ("spec", "status"))


# The NetworkAttachmentDefinition CRD's schema (k8snetworkplumbingwg/network-attachment-definition-client,
# artifacts/networks-crd.yaml): spec (required) with config, a string (required); status with
# state and observation, strings. No subresources, no x-kubernetes-preserve-unknown-fields.
NAD_SCHEMA = {"type": "object", "required": ["spec"], "properties": {
    "apiVersion": {"type": "string"}, "kind": {"type": "string"}, "metadata": {"type": "object"},
    "spec": {"type": "object", "required": ["config"], "properties": {"config": {"type": "string"}}},
    "status": {"type": "object", "properties": {"state": {"type": "string"}, "observation": {"type": "string"}}}}}


def prune_custom_resource(value: dict, schema: dict) -> None:
    """apiextensions-apiserver's pruning of a custom resource by its structural schema
    (pkg/apiserver/schema/pruning): fields the schema does not name are dropped (the real
    server warns of them), and so are nulls where the schema does not allow them (nullable
    false: pkg/apiserver/schema/defaulting PruneNonNullableNullsWithoutDefaults); metadata is
    ObjectMeta's business."""
    properties = schema.get("properties", {})
    for key in list(value):
        if key not in properties or value[key] is None:
            del value[key]
        elif key != "metadata" and properties[key].get("type") == "object" and isinstance(value[key], dict):
            prune_custom_resource(value[key], properties[key])


def schema_errors(value, schema: dict, path: str) -> list[FieldError]:
    """apiextensions-apiserver's validation of a custom resource by its OpenAPI schema
    (pkg/apiserver/validation ValidateCustomResource, kube-openapi's type and required
    validators): a value of another type is `<path>: Invalid value: "<its type>": <path> in
    body must be of type <type>: "<its type>"` (FieldValueTypeInvalid), a missing required
    field `<path>.<field>: Required value`."""
    kind = ("boolean" if isinstance(value, bool) else "integer" if isinstance(value, int)
            else "number" if isinstance(value, float) else "string" if isinstance(value, str)
            else "array" if isinstance(value, list) else "object")
    if kind != schema["type"] and not (schema["type"] == "number" and kind == "integer"):
        return [FieldError("FieldValueTypeInvalid", path, f'Invalid value: "{kind}": {path} in body must be of type '
                                                          f'{schema["type"]}: "{kind}"')]
    if kind != "object":
        return []
    errors = [required(f"{path}.{key}" if path else key) for key in schema.get("required", []) if key not in value]
    for key, item in value.items():
        if key in schema.get("properties", {}) and key != "metadata":
            errors += schema_errors(item, schema["properties"][key], f"{path}.{key}" if path else key)
    return errors


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


def node_errors(node: dict, old: dict) -> list[FieldError]:
    """pkg/apis/core/validation ValidateNodeUpdate, what a status writer meets: each value of
    status.capacity and status.allocatable non-negative, and whole for an integer resource
    (an extended resource, pods: ValidateNodeResources, ValidateResourceQuantityValue; the
    field path is `status.capacity.<name>`, the value the quantity's text; the real server
    reports them in Go's random map order, here in name order); no repeated status.addresses;
    spec.providerID unchanged once set. Resource names themselves are not checked, as in the
    real server (ValidateNodeResources checks values only). (Taints, podCIDRs and configSource
    are not checked.)"""
    errors = metadata_errors(KINDS["Node"], node)
    status = node.get("status", {})
    for key in ("capacity", "allocatable"):
        for name, text in sorted((status.get(key) or {}).items()):
            value = quantity_value(text)
            if value < 0:  # ValidateNonnegativeQuantity
                errors.append(invalid(f"status.{key}.{name}", text, "must be greater than or equal to 0"))
            if (name in INTEGER_RESOURCES or is_extended_resource(name)) and math.ceil(abs(value) * 1000) % 1000:
                errors.append(invalid(f"status.{key}.{name}", text, "must be an integer"))  # MilliValue() % 1000
    addresses = status.get("addresses") or []
    for index, address in enumerate(addresses):
        if address in addresses[:index]:
            errors.append(duplicate(f"status.addresses[{index}]", address))
    provider = old.get("spec", {}).get("providerID")
    if provider and node.get("spec", {}).get("providerID") != provider:
        errors.append(forbidden("spec.providerID", 'node updates may not change providerID except from "" to valid'))
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
    if resource.kind == "Node" and old is not None:
        return errors + node_errors(item, old)
    if resource.kind == "NetworkAttachmentDefinition":
        return errors + metadata_errors(resource, item) + schema_errors(item, NAD_SCHEMA, "")
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
    server's watch caches), the faults, the write log, each Node as its kubelet reports it,
    the RBAC tokens and the denials."""

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
        # By node name: the Node as its kubelet registered it (its status is what it reports).
        self.kubelet_nodes: dict[str, dict] = {}
        self.kubelet_sync_seconds = 0.0
        self.kubelet_pending: set[str] = set()
        # By bearer token: the user and its rules, each with the namespace of its Role (None:
        # a ClusterRole's, bound cluster-wide).
        self.tokens: dict[str, tuple[str, list[tuple[str | None, dict]]]] = {}
        self.denials: collections.deque[dict] = collections.deque(maxlen=WRITE_LOG_SIZE)
        self.endpoint: str | None = None  # start() sets it: the kubeconfigs of tokens name it
        self.kubeconfig_dir: Path | None = None
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

    def configure_kubelet(self, sync_seconds: float) -> None:
        """How long after a client's write to a Node its kubelet's next status update comes (0:
        at once, before the write is answered; the real kubelet's comes within
        nodeStatusUpdateFrequency, 10 s)."""
        if not isinstance(sync_seconds, (int, float)) or isinstance(sync_seconds, bool) or sync_seconds < 0:
            raise ValueError(f"kubelet_sync_seconds must be a number of seconds, not {sync_seconds!r}")
        with self.changed:
            self.kubelet_sync_seconds = float(sync_seconds)

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
        """Makes an object of the bed (ADDED); a Node as its kubelet registers it, which the
        kubelet's status updates and re-registration go back to."""
        with self.changed:
            if (kind, key) in self.objects:
                raise ValueError(f'{KINDS[kind].qualified_resource} "{item["metadata"]["name"]}" already exists')
            if kind == "Node":
                self.kubelet_nodes[key] = copy(item)
            return self.record(kind, key, "ADDED", item, None)

    def add_node(self, request: dict) -> dict:
        """A Node for `request` {"name", "instance_type" (m5.large), "availability_zone"
        (us-east-2a), "instance_id" (made up), "address", "address6" (made up)}, as its kubelet
        registers it (ADDED). ValueError when it exists or the request is not one."""
        name = request.get("name")
        if not isinstance(name, str) or subdomain_errors(name):
            raise ValueError(f"nodes: a node name (a DNS subdomain) is expected, not {name!r}")
        zone = request.get("availability_zone", "us-east-2a")
        node = {"instance_type": request.get("instance_type", "m5.large"), "availability_zone": zone,
                "instance_id": request.get("instance_id") or "i-" + uuid.uuid4().hex[:17]}
        with self.changed:
            number = len(self.kubelet_nodes) + 1
            address, address6 = request.get("address", f"192.0.2.{number}"), request.get("address6",
                                                                                          f"2001:db8::{number:x}")
            return self.add("Node", name, node_object(name, node, zone[:-1], address, address6))

    def reregister(self, name: str) -> dict:
        """The kubelet registering Node `name` anew, as when the node's object was deleted (or
        its instance replaced): the object goes (DELETED) and comes back (ADDED, a new uid and
        creationTimestamp) as the kubelet makes it (pkg/kubelet/kubelet_node_status.go
        registerWithAPIServer): its own labels, capacity and allocatable, so without the
        extended resources, labels and annotations others had put there. KeyError for a node
        the bed does not have."""
        with self.changed:
            reported, current = self.kubelet_nodes[name], self.objects.get(("Node", name))
            if current is not None:
                self.record("Node", name, "DELETED", None, current)
            fresh = copy(reported)
            fresh["metadata"] |= {"uid": str(uuid.uuid4()), "creationTimestamp": now_rfc3339()}
            return self.record("Node", name, "ADDED", fresh, None)

    def node_written(self, name: str) -> None:
        """A client wrote Node `name`: its kubelet's next status update (kubelet_status), at once
        or `kubelet_sync_seconds` later (writes in between go into the same update). The caller
        holds `changed`."""
        if self.kubelet_sync_seconds <= 0:
            return self.kubelet_update(name)
        if name not in self.kubelet_pending:
            self.kubelet_pending.add(name)
            timer = threading.Timer(self.kubelet_sync_seconds, self.kubelet_tick, (name,))
            timer.daemon = True
            timer.start()

    def kubelet_tick(self, name: str) -> None:
        with self.changed:
            self.kubelet_pending.discard(name)
            if not self.closed:
                self.kubelet_update(name)

    def kubelet_update(self, name: str) -> None:
        """The kubelet's status update of Node `name`: MODIFIED when it changes something
        (the kubelet patches nodes/status only then). Not a request: not in the write log."""
        reported, current = self.kubelet_nodes.get(name), self.objects.get(("Node", name))
        if reported is None or current is None:
            return
        status = kubelet_status(current.get("status", {}), reported["status"])
        if status != current.get("status"):
            changed = copy(current)
            changed["status"] = status
            self.record("Node", name, "MODIFIED", changed, current)

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
              operation: Callable[[], tuple[int, dict]], subresource: str | None = None,
              user: str | None = None) -> tuple[int, dict]:
        """One write request (`verb`: create, update, patch or delete) as the registry gets
        it, `operation` doing it: a pending conflicts fault answers 409 Conflict first; the
        request goes to the write log with its outcome. Writes are serialised, so each
        reads the object it changes and stores the result at once (GuaranteedUpdate's
        retries never happen). A Node written has its kubelet's status update follow
        (node_written)."""
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
                if resource.kind == "Node":
                    self.node_written(name)
                return code, answer
            except ApiError as error:
                code = error.code
                raise
            finally:
                self.log_write(verb, resource, namespace, name, subresource, user, version, code)

    def log_write(self, verb: str, resource: Resource, namespace: str | None, name: str, subresource: str | None,
                  user: str | None, version: str, code: int) -> None:
        with self.changed:
            self.write_log.append({"time": time.time(), "verb": verb, "kind": resource.kind, "namespace": namespace,
                                   "name": name, "subresource": subresource, "user": user, "resourceVersion": version,
                                   "code": code})

    def writes(self) -> list[dict]:
        """The write log, oldest first: {"time" (Unix seconds), "verb", "kind", "namespace"
        (null when cluster-scoped), "name", "subresource" (null, or "status"), "user" (the
        token's, null without one), "resourceVersion" (the object's after the write; the
        deletion's for a delete; "" when it failed), "code"}."""
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
        if resource.kind in ("MutatingWebhookConfiguration", "NetworkAttachmentDefinition"):
            # mutatingwebhookconfiguration/strategy.go, customresource/strategy.go: PrepareForCreate
            metadata["generation"] = 1
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

    def update(self, resource: Resource, namespace: str | None, name: str, body,
               subresource: str | None = None) -> tuple[int, dict]:
        """PUT: endpoints/handlers/update.go (namespace and name matched to the path: 400),
        then store.go Update (update_object)."""
        item = decoded(resource, body)
        match_namespace(item["metadata"], namespace if resource.namespaced else None)
        check_name(item, name)
        return 200, self.update_object(resource, self.existing(resource, namespace, name), item, subresource)

    def patch(self, resource: Resource, namespace: str | None, name: str, patch_type: str,
              text: str, subresource: str | None = None) -> tuple[int, dict]:
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
        return 200, self.update_object(resource, current, item, subresource)

    def update_object(self, resource: Resource, current: dict, item: dict, subresource: str | None = None) -> dict:
        """store.go Update with the new object `item`: no resourceVersion is an unconditional
        update where the strategy allows it (Secret), else 422 "must be specified for an
        update" (MutatingWebhookConfiguration); one that differs from the stored one is 409
        Conflict; then rest/update.go BeforeUpdate (generation, uid, creationTimestamp and
        deletion fields kept from the stored object; a MutatingWebhookConfiguration's
        generation bumped when its webhooks change, its strategy's PrepareForUpdate; a
        custom resource's when anything but its metadata changes, apiextensions-apiserver
        customresource/strategy.go PrepareForUpdate; a Node keeps its stored status through
        nodes and its stored spec through nodes/status, pkg/registry/core/node/strategy.go
        nodeStrategy and nodeStatusStrategy PrepareForUpdate, so a change of the other part is
        dropped without a word; its metadata changes through either), validation (422), and
        no write at all when nothing changed (etcd3 GuaranteedUpdate: the stored object, same
        version, no event). The object (MODIFIED)."""
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
        if resource.kind == "NetworkAttachmentDefinition" and any(
                item.get(key) != current.get(key) for key in set(item) | set(current) if key != "metadata"):
            metadata["generation"] = old.get("generation", 0) + 1
        if resource.kind == "Node":
            kept = "spec" if subresource == "status" else "status"
            item.pop(kept, None)
            if kept in current:
                item[kept] = copy(current[kept])
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
        """Ends every watch stream (waiting up to `limit` for them to finish writing) and
        removes the kubeconfigs of the tokens."""
        deadline = time.monotonic() + limit
        with self.changed:
            self.closed = True
            self.changed.notify_all()
            while self.streams and time.monotonic() < deadline:
                self.changed.wait(deadline - time.monotonic())
            if self.kubeconfig_dir is not None:
                shutil.rmtree(self.kubeconfig_dir, ignore_errors=True)

    def register_token(self, request: dict) -> dict:
        """`request` {"user", "rules": [PolicyRule, each with "namespace" for a Role's rule],
        "token" (made up when not given)}: a request bearing the token is user's, allowed
        what the rules and the default ones (DEFAULT_RULES) allow (authorize). A token
        registered again gets the new user and rules. {"token", "user", "kubeconfig" (a
        kubeconfig for the server that uses the token, removed at close; null before start)};
        ValueError when the request is not one."""
        user, rules = request.get("user"), request.get("rules", [])
        token = request.get("token") or secrets.token_hex(16)
        if not isinstance(user, str) or not user:
            raise ValueError("rbac: a user name is expected")
        if not isinstance(token, str) or " " in token:
            raise ValueError("rbac: a token is a string without spaces")
        if not isinstance(rules, list):
            raise ValueError("rbac: rules must be a list of PolicyRules")
        for rule in rules:
            if not isinstance(rule, dict) or not all(
                    isinstance(rule.get(key, []), list) and all(isinstance(item, str) for item in rule.get(key, []))
                    for key in ("apiGroups", "resources", "resourceNames", "verbs", "nonResourceURLs")):
                raise ValueError(f"rbac: a PolicyRule has lists of strings, not {rule!r}")
            if not isinstance(rule.get("namespace", ""), str):
                raise ValueError(f"rbac: a Role's namespace is a string, not {rule['namespace']!r}")
        with self.changed:
            self.tokens[token] = (user, [(rule.get("namespace") or None, rule) for rule in rules])
            kubeconfig = None
            if self.endpoint is not None:
                if self.kubeconfig_dir is None:
                    self.kubeconfig_dir = Path(tempfile.mkdtemp(prefix="ipmgr-kube-tokens-"))
                path = self.kubeconfig_dir / f"{hashlib.sha256(token.encode()).hexdigest()[:16]}.kubeconfig"
                namespace = user.split(":")[2] if user.startswith("system:serviceaccount:") else "default"
                write_kubeconfig(path, self.endpoint, "ipmgr-kube", token=token, namespace=namespace)
                kubeconfig = str(path)
        return {"token": token, "user": user, "kubeconfig": kubeconfig}

    def authorize(self, authorization: str, attributes: Attributes) -> str | None:
        """The user of a request with header `authorization` and `attributes`: None without a
        registered bearer token (such requests are not authenticated here, and allowed
        everything: the real server answers 401 to an unknown token); else the token's user
        when one of its rules allows the request (rule_allows: a ClusterRole's anywhere, a
        Role's in its namespace), else 403 Forbidden (forbidden_error), in the denials."""
        parts = authorization.strip().split(" ", 2)  # authentication/request/bearertoken
        if len(parts) < 2 or parts[0].lower() != "bearer":
            return None
        with self.changed:
            user, rules = self.tokens.get(parts[1], (None, []))
        if user is None:
            return None
        if any(rule_allows(attributes, rule) for namespace, rule in DEFAULT_RULES + rules
               if namespace is None or namespace == attributes.namespace):
            return user
        error = forbidden_error(user, attributes)
        error.user = user
        with self.changed:
            self.denials.append({"time": time.time(), "user": user} | attributes._asdict() | {"message": error.message})
        raise error

    def denied(self) -> list[dict]:
        """The denials, oldest first: {"time", "user", "verb", "resourceRequest", "path",
        "apiGroup", "resource", "subresource", "namespace", "name" ("" when not there),
        "message"}."""
        with self.changed:
            return list(self.denials)

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


class Attributes(NamedTuple):
    """What the authorizer is asked about a request (authorizer.Attributes, as
    endpoints/request/requestinfo.go NewRequestInfo makes them): the verb, whether it is a
    resource request and its path; for a resource request the API group, resource,
    subresource, namespace and name ("" when not there)."""

    verb: str
    resourceRequest: bool
    path: str
    apiGroup: str = ""
    resource: str = ""
    subresource: str = ""
    namespace: str = ""
    name: str = ""


def request_attributes(method: str, path: str, query: dict[str, list[str]]) -> Attributes:
    """endpoints/request/requestinfo.go NewRequestInfo: `/api/v1/...` and `/apis/<group>/<version>/...`
    are resource requests (anything else, `/api` and `/version` among them, a non-resource
    request whose verb is the method in lower case); the verb from the method (GET get, a
    GET without a name list, or watch with `watch`; POST create, PUT update, PATCH patch,
    DELETE delete, deletecollection without a name); `namespaces/<ns>/` gives the namespace
    (a Namespace's own path too: its name is its namespace); then resource, name,
    subresource. A list or watch with the field selector `metadata.name=<name>` has that name."""
    parts = [part for part in path.split("/") if part]
    if len(parts) >= 3 and parts[0] == "api":
        rest = parts[2:]
    elif len(parts) >= 4 and parts[0] == "apis":
        rest = parts[3:]
    else:
        return Attributes(method.lower(), False, path)
    group = parts[1] if parts[0] == "apis" else ""
    verb = {"POST": "create", "GET": "get", "HEAD": "get", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}.get(
        method, "")
    if rest[0] in ("watch", "proxy"):  # the special verbs, as the first part
        verb, rest = rest[0], rest[1:]
    namespace = ""
    if rest and rest[0] == "namespaces" and len(rest) > 1:
        namespace = rest[1]
        if len(rest) > 2 and rest[2] not in ("status", "finalize"):  # namespaceSubresources
            rest = rest[2:]
    resource, name, subresource = (rest + ["", "", ""])[:3]
    if verb == "get" and not name:
        verb = "watch" if query_bool(query, "watch") else "list"
        for term in query.get("fieldSelector", [""])[0].split(","):  # RequiresExactMatch("metadata.name")
            field, operator, value = re.match(r"\s*([^!=\s]*)\s*(==|=|!=)?\s*(.*?)\s*$", term).groups()
            if field == "metadata.name" and operator in ("=", "==") and value and "/" not in value:
                name = value
    elif verb == "delete" and not name:
        verb = "deletecollection"
    return Attributes(verb, True, path, group, resource, subresource, namespace, name)


# The ClusterRoles the API server binds to every authenticated user (system:authenticated:
# plugin/pkg/auth/authorizer/rbac/bootstrappolicy/policy.go, system:basic-user,
# system:discovery and system:public-info-viewer).
DEFAULT_RULES: list[tuple[str | None, dict]] = [(None, rule) for rule in (
    {"apiGroups": ["authorization.k8s.io"], "resources": ["selfsubjectaccessreviews", "selfsubjectrulesreviews"],
     "verbs": ["create"]},
    {"apiGroups": ["authentication.k8s.io"], "resources": ["selfsubjectreviews"], "verbs": ["create"]},
    {"nonResourceURLs": ["/api", "/api/*", "/apis", "/apis/*", "/healthz", "/livez", "/openapi", "/openapi/*",
                         "/readyz", "/version", "/version/"], "verbs": ["get"]},
)]


def rule_allows(attributes: Attributes, rule: dict) -> bool:
    """plugin/pkg/auth/authorizer/rbac/rbac.go RuleAllows, with the matchers of
    pkg/apis/rbac/v1/evaluation_helpers.go: the verb (or `*`); for a resource request the API
    group (or `*`), the resource as `resource` or `resource/subresource` (or `*`, or
    `*/subresource`), and the name among resourceNames when the rule has any (so never a
    list, watch or create without a name); for a non-resource request the path among
    nonResourceURLs (`*`, or a prefix ending in `*`)."""
    verbs = rule.get("verbs", [])
    if "*" not in verbs and attributes.verb not in verbs:
        return False
    if not attributes.resourceRequest:
        return any(url == "*" or url == attributes.path or (url.endswith("*") and attributes.path.startswith(url[:-1]))
                   for url in rule.get("nonResourceURLs", []))
    groups = rule.get("apiGroups", [])
    if "*" not in groups and attributes.apiGroup not in groups:
        return False
    combined = attributes.resource + (f"/{attributes.subresource}" if attributes.subresource else "")
    if not any(resource in ("*", combined) or (attributes.subresource and resource == f"*/{attributes.subresource}")
               for resource in rule.get("resources", [])):
        return False
    names = rule.get("resourceNames", [])
    return not names or attributes.name in names


def forbidden_error(user: str, attributes: Attributes) -> ApiError:
    """The RBAC authorizer's denial (endpoints/handlers/responsewriters/errors.go Forbidden and
    forbiddenMessage, then api/errors NewForbidden over the resource without its subresource):
    403 Forbidden, `nodes "node1" is forbidden: User "u" cannot patch resource "nodes/status"
    in API group "" at the cluster scope` (`in the namespace "ns"` for a namespaced request;
    `nodes is forbidden: ...` without a name; `forbidden: User "u" cannot get path "/x"` for
    a non-resource request). The RBAC authorizer gives no reason when it finds no rule."""
    if not attributes.resourceRequest:
        return ApiError(403, "Forbidden", f'forbidden: User "{user}" cannot {attributes.verb} path '
                                          f'"{attributes.path}"', {})
    resource = attributes.resource + (f"/{attributes.subresource}" if attributes.subresource else "")
    scope = f'in the namespace "{attributes.namespace}"' if attributes.namespace else "at the cluster scope"
    reason = (f'User "{user}" cannot {attributes.verb} resource "{resource}" in API group "{attributes.apiGroup}" '
              f"{scope}")
    qualified = f"{attributes.resource}.{attributes.apiGroup}" if attributes.apiGroup else attributes.resource
    what = f'{qualified} "{attributes.name}"' if attributes.name else qualified
    details = {key: value for key, value in (("name", attributes.name), ("group", attributes.apiGroup),
                                             ("kind", attributes.resource)) if value}
    return ApiError(403, "Forbidden", f"{what} is forbidden: {reason}", details)


def locate(parts: list[str]) -> tuple[Resource, str | None, str | None, str | None]:
    """The resource, namespace, name and subresource a request path names: `/api/v1/...` for
    the core group, `/apis/<group>/v1/...` for the others, a subresource the kind serves
    after the name; 404 for anything else."""
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
    subresource = rest[2] if len(rest) == 3 else None
    if (resource is None or len(rest) > 3 or (subresource is not None and subresource not in resource.subresources)
            or (resource.namespaced and namespace is None and len(rest) >= 2)):
        raise ApiError(404, "NotFound", "the server could not find the requested resource")
    return resource, namespace, rest[1] if len(rest) >= 2 else None, subresource


WRITES = {"POST": "create", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}
TESTENV_PATH = "/_testenv/"


class Request(NamedTuple):
    """One request to the API: method, path, query, Content-Type and Authorization headers, body."""

    method: str
    path: str
    query: dict[str, list[str]]
    content_type: str
    authorization: str
    body: bytes


def admit(cluster: Cluster, request: Request) -> tuple[str | None, Resource, str | None, str | None, str | None]:
    """Authorization (Cluster.authorize: 403, a write among the writes too), then routing
    (locate: 404): the user, resource, namespace, name and subresource, as the real server's
    filters do it (authorization before the handler, so a denied request for no resource is
    403 too)."""
    attributes = request_attributes(request.method, request.path, request.query)
    try:
        user = cluster.authorize(request.authorization, attributes)
    except ApiError as error:
        verb = WRITES.get(request.method)
        try:
            resource, namespace, name, subresource = locate(request.path.rstrip("/").split("/")[1:])
        except ApiError:
            raise error from None
        if verb is not None:
            name = name or (body_name(request.body.decode(errors="replace")) if verb == "create" else "")
            cluster.log_write(verb, resource, namespace, name, subresource, error.user, "", error.code)
        raise
    return (user, *locate(request.path.rstrip("/").split("/")[1:]))


def selection(resource: Resource, namespace: str | None, query: dict[str, list[str]]) -> tuple[Callable[[dict], bool],
                                                                                                 str]:
    """A list's or watch's predicate (namespace, fieldSelector, labelSelector) and the
    resourceVersion asked for (400 when it is not a number)."""
    fields = field_selector(query.get("fieldSelector", [""])[0], resource.fields)
    labels = label_selector(query.get("labelSelector", [""])[0])

    def matches(item: dict) -> bool:
        return (namespace is None or item["metadata"]["namespace"] == namespace) and fields(item) and labels(item)

    version = query.get("resourceVersion", [""])[0]
    if version not in ("", "0") and not version.isdigit():
        raise ApiError(400, "BadRequest", f"invalid resource version: {version}")
    return matches, version


def respond(cluster: Cluster, request: Request, user: str | None, resource: Resource, namespace: str | None,
            name: str | None, subresource: str | None) -> tuple[int, dict]:
    """A read (an object, its status subresource being the whole object, or a list) or a
    write, once admitted; a watch is the handler's."""
    if request.method == "GET":
        if name is None:
            matches, _ = selection(resource, namespace, request.query)
            if query_bool(request.query, "sendInitialEvents"):
                raise ApiError(422, "Invalid", "sendInitialEvents: Forbidden: sendInitialEvents is forbidden for list")
            current, items = cluster.snapshot(resource.kind, matches)
            items = [{key: value for key, value in item.items() if key not in ("apiVersion", "kind")}
                     for item in items]
            return 200, {"kind": f"{resource.kind}List", "apiVersion": resource.api_version,
                         "metadata": {"resourceVersion": str(current)}, "items": items}
        return 200, cluster.existing(resource, namespace, name)
    return write(cluster, request, user, resource, namespace, name, subresource)


def write(cluster: Cluster, request: Request, user: str | None, resource: Resource, namespace: str | None,
          name: str | None, subresource: str | None) -> tuple[int, dict]:
    """A write the kind takes (a create on its collection, the others on an object, always
    in a namespace for a namespaced kind; update and patch on a subresource), else 405."""
    verb = WRITES.get(request.method, "")
    allowed = {"update", "patch"} if subresource is not None else resource.verbs
    if verb not in allowed or (name is None) != (verb == "create") or (resource.namespaced and namespace is None):
        raise ApiError(405, "MethodNotAllowed", "the server does not allow this method on the requested resource")
    if "dryRun" in request.query:
        raise bad_request("dryRun is not supported by the stand-in API server")
    text = request.body.decode(errors="replace")
    if verb == "patch":
        # patch.go: the Content-Type first, "; charset=" dropped; strategic merge and
        # apply patches are not modelled, so not accepted.
        patch_type = request.content_type.split(";")[0].strip()
        if patch_type not in PATCH_TYPES:
            raise ApiError(415, "UnsupportedMediaType",
                           "the body of the request was in an unknown format - accepted media types include: "
                           + ", ".join(PATCH_TYPES))
        operation = lambda: cluster.patch(resource, namespace, name, patch_type, text, subresource)  # noqa: E731
    elif verb == "delete":
        operation = lambda: cluster.remove(resource, namespace, name, delete_options(text))  # noqa: E731
    elif verb == "update":
        operation = lambda: cluster.update(resource, namespace, name, parse_object(resource, text),  # noqa: E731
                                           subresource)
    else:
        name = body_name(text)
        operation = lambda: cluster.create(resource, namespace, parse_object(resource, text))  # noqa: E731
    return cluster.write(verb, resource, namespace, name, operation, subresource, user)


def api_call(cluster: Cluster, request: Request) -> tuple[int, dict]:
    """One request but a watch, from admission to answer (the test environment's `request`
    call): status and JSON answer."""
    try:
        user, resource, namespace, name, subresource = admit(cluster, request)
        if request.method == "GET" and name is None and query_bool(request.query, "watch"):
            raise bad_request("a watch is not answered here: ask the API server")
        return respond(cluster, request, user, resource, namespace, name, subresource)
    except ApiError as error:
        return error.code, error.status()


def control(cluster: Cluster, method: str, path: str, request) -> tuple[int, dict]:
    """The test environment's calls, not part of the Kubernetes API (never refused, JSON both
    ways; the standalone server's under /_testenv/, the bed's under kube/): GET writes, GET
    denied, POST faults, POST config, POST nodes, POST nodes/NAME/reregister, POST rbac,
    POST request. 400 {"error"} when refused, 404 for an unknown call."""
    try:
        if not isinstance(request, dict):
            raise ValueError(f"{path}: a JSON object is expected")
        parts = path.strip("/").split("/")
        if method == "GET" and path == "writes":
            return 200, {"writes": cluster.writes()}
        if method == "GET" and path == "denied":
            return 200, {"denied": cluster.denied()}
        if method == "POST" and path == "faults":
            cluster.faults(request.get("stall_seconds"), request.get("unavailable_seconds"), request.get("conflicts"))
            return 200, {}
        if method == "POST" and path == "config":
            if "event_history" in request or "bookmark_seconds" in request:
                cluster.configure(request.get("event_history"), request.get("bookmark_seconds"))
            if "kubelet_sync_seconds" in request:
                cluster.configure_kubelet(request["kubelet_sync_seconds"])
            return 200, {}
        if method == "POST" and path == "nodes":
            return 200, cluster.add_node(request)
        if method == "POST" and len(parts) == 3 and parts[0] == "nodes" and parts[2] == "reregister":
            try:
                return 200, cluster.reregister(parts[1])
            except KeyError:
                raise ValueError(f"reregister: no node {parts[1]}") from None
        if method == "POST" and path == "rbac":
            return 200, cluster.register_token(request)
        if method == "POST" and path == "request":
            return 200, request_call(cluster, request)
    except ValueError as error:
        return 400, {"error": str(error)}
    return 404, {"error": f"unknown test environment call {method} {path}"}


def request_call(cluster: Cluster, request: dict) -> dict:
    """`request` {"method" (GET), "path" (with its query), "body" (JSON, none for null),
    "content_type" (application/json), "token" (none: no Authorization)} as a client's
    request to the API, a watch aside: {"status", "body"}."""
    method, target = request.get("method", "GET"), request.get("path")
    if not isinstance(target, str) or not target.startswith("/") or method not in ("GET", *WRITES):
        raise ValueError("request: a method (GET, POST, PUT, PATCH, DELETE) and an absolute path are expected")
    url = urlsplit(target)
    body = b"" if request.get("body") is None else json.dumps(request["body"]).encode()
    token = request.get("token")
    code, answer = api_call(cluster, Request(method, url.path, parse_qs(url.query, keep_blank_values=True),
                                             request.get("content_type", "application/json"),
                                             f"Bearer {token}" if token else "", body))
    return {"status": code, "body": answer}


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
                try:
                    request = json.loads(body or b"{}")
                except ValueError as error:
                    return self.reply(400, {"error": f"not JSON: {error}"})
                return self.reply(*control(cluster, method, url.path[len(TESTENV_PATH):], request))
            if self.refused():
                return
            request = Request(method, url.path, parse_qs(url.query, keep_blank_values=True),
                              self.headers.get("Content-Type") or "", self.headers.get("Authorization") or "", body)
            try:
                user, resource, namespace, name, subresource = admit(cluster, request)
                if method == "GET" and name is None and query_bool(request.query, "watch"):
                    return self.watch(resource, namespace, request.query)
                self.reply(*respond(cluster, request, user, resource, namespace, name, subresource))
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

        def watch(self, resource: Resource, namespace: str | None, query: dict[str, list[str]]) -> None:
            matches, version = selection(resource, namespace, query)
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
                for event in cluster.watch(resource.kind, version, matches, deadline, bookmarks, initial_events):
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
    has a thread. The cluster learns its endpoint (the kubeconfigs of its tokens name it)."""

    class Server(ThreadingHTTPServer):
        address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
        daemon_threads = True

    server = Server((host, port), handler(cluster))
    threading.Thread(target=server.serve_forever, daemon=True, name="kube").start()
    cluster.endpoint = f"http://{f'[{host}]' if ':' in host else host}:{server.server_address[1]}"
    return server


def write_kubeconfig(path: Path, endpoint: str, name: str, token: str | None = None,
                     namespace: str = "default") -> None:
    """A kubeconfig whose one cluster is `endpoint` (plain HTTP, so no certificate) and
    whose user has no credentials (the stand-in then checks none), or bearer `token`;
    its context's namespace `namespace`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    user = f"{{token: {json.dumps(token)}}}" if token else "{}"
    path.write_text(f"""apiVersion: v1
kind: Config
clusters:
- name: {name}
  cluster:
    server: {endpoint}
users:
- name: {name}
  user: {user}
contexts:
- name: {name}
  context:
    cluster: {name}
    user: {name}
    namespace: {namespace}
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
