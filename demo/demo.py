#!/usr/bin/env python3
"""multus-ipmgr on one machine: the node agents start on every node, the webhook admits
Multus pods, the helper it injects asks its node's agent to make the pods' IPs routable on
the emulated nodes' ENIs in each mode (the agent backend: no AWS credentials in the pods,
which cannot reach instance metadata), a floating IP moves between pods on two nodes, and
the agents give back the addresses of pods that are gone. `--backend direct` runs the
helpers of the direct backend instead, which call EC2 themselves.

The containers run from the images of scripts/images under podman, with the security
context from the manifests and the webhook's patch, when those images are built (or
`--images`); otherwise (or `--binaries`) the built binaries run as root processes in the
same network namespaces. Needs root (network namespaces) and the Python packages of
tests/requirements.txt (for the AWS stand-in). `scripts/demo` provides all of that;
`run(check_results=True)` is the end-to-end test (demo/test_demo.py).
"""

from __future__ import annotations

import argparse
import base64
import http.client
import json
import os
import re
import shutil
import signal
import socket
import ssl
import sys
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import jsonpatch
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from demo.containers import ContainerError, PodSpec, Started, environment, readiness_probe, unavailable  # noqa: E402
from demo.launchers import Binaries, Images, Launcher  # noqa: E402
from testenv.client import Bed, Pod  # noqa: E402

SERVICE_NAME = "ipmgr-webhook.multus-ipmgr.svc"
FLOATING_IP = "10.0.1.100"
# Where a pod declares the addresses it may float (not in Multus' record).
FLOATING_IPS = "multus-ipmgr.io/floating-ips"
FLOATING_IP_CIDRS = "multus-ipmgr.io/floating-ip-cidrs"
AGENT_GRACE_SECONDS = 2
BACKENDS = ("agent", "direct")
# What would give a helper AWS access or settings: every AWS_* variable, and the helper's
# own EC2 and instance metadata settings (IPMGR_EC2_*, IPMGR_METADATA_*) but their retry
# budgets: only a number of seconds, which the webhook sets so that the startup probe lasts
# the first pass (the agent backend's helper bounds its questions by IPMGR_EC2_RETRY_SECONDS).
AWS_SETTING = re.compile(r"^(AWS_|IPMGR_(EC2|METADATA)_(?!RETRY_SECONDS$))")
# Where scripts/images puts the images (no registry).
IMAGES = "localhost"
CAP_SYS_ADMIN = 1 << 21


class Output:
    """Short progress lines; colour only on a terminal."""

    def __init__(self, quiet: bool):
        self.quiet = quiet
        self.colour = sys.stdout.isatty()

    def _paint(self, code: str, text: str) -> str:
        return f"\033[{code}m{text}\033[0m" if self.colour else text

    def step(self, text: str) -> None:
        if not self.quiet:
            print(self._paint("1;34", "==> ") + self._paint("1", text), flush=True)

    def line(self, text: str = "") -> None:
        if not self.quiet:
            print(text, flush=True)

    def ok(self, text: str) -> None:
        if not self.quiet:
            print(self._paint("32", "  ok ") + text, flush=True)


@dataclass
class World:
    """Everything the demo starts, so that it can all be cleaned up (the bed removes its own
    namespaces when it stops)."""

    launcher: Launcher
    beds: list[Bed] = field(default_factory=list)
    workdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="ipmgr-demo-")))

    def cleanup(self) -> None:
        # A second Ctrl-C must not leave containers or namespaces behind.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        self.launcher.remove_all()
        for bed in self.beds:
            bed.close()
        shutil.rmtree(self.workdir, ignore_errors=True)


def manifest(path: str, kind: str) -> dict:
    """The first object of `kind` in a file of manifests/."""
    return next(document for document in yaml.safe_load_all((ROOT / "manifests" / path).read_text())
                if document and document["kind"] == kind)


def workload_pod(path: str, kind: str, image: str) -> tuple[dict, dict]:
    """The container and pod spec of a Deployment or DaemonSet in manifests/, with our image
    (as a kustomize `images:` entry would set it)."""
    template = manifest(path, kind)["spec"]["template"]
    container = dict(template["spec"]["containers"][0], image=image)
    return container, template["spec"]


class Webhook:
    """The webhook Deployment's container on loopback (the Service), with a certificate from
    `ipmgr-webhook certs` in the directory that stands in for its Secret."""

    def __init__(self, world: World, image: str, helper_image: str, pod_client_image: str,
                 settings: dict[str, str]):
        container, template = workload_pod("base/deployment.yaml", "Deployment", image)
        pod = PodSpec(template, {"spec.nodeName": "node1"})
        pod.config_maps["ipmgr-webhook-config"] = manifest("base/configmap.yaml", "ConfigMap")["data"]
        secret = world.workdir / "tls"
        secret.mkdir()
        # What an operator runs once: `podman run -v ./tls:/tls IMAGE certs --out-dir /tls`.
        certs = {"name": "certs", "image": image, "args": ["certs", "--log-format", "text"],
                 "env": [{"name": "IPMGR_CERTS_OUT_DIR", "value": "/tls"}],
                 "securityContext": {"runAsUser": 0, "readOnlyRootFilesystem": True, "capabilities": {"drop": ["ALL"]}},
                 "volumeMounts": [{"name": "tls", "mountPath": "/tls"}]}
        result = world.launcher.run(certs, PodSpec({"volumes": [{"name": "tls", "hostPath": {"path": str(secret)}}]}),
                                    None, f"{world.workdir.name}-certs")
        if result.returncode != 0:
            raise RuntimeError(f"ipmgr-webhook certs failed: {result.stderr.strip()}")
        # A Secret volume: files 0644 (defaultMode), readable by the webhook's user.
        secret.chmod(0o755)
        for file in secret.iterdir():
            file.chmod(0o644)
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.container = world.launcher.start(
            container, pod, None, f"{world.workdir.name}-webhook", sources={"tls": str(secret)},
            extra_env={"IPMGR_LISTEN": f"127.0.0.1:{self.port}", "IPMGR_HELPER_IMAGE": helper_image,
                       "IPMGR_POD_CLIENT_IMAGE": pod_client_image,
                       "IPMGR_LOG": "warn"} | settings)
        self.context = ssl.create_default_context(cafile=str(secret / "ca.crt"))
        deadline = time.monotonic() + 30
        while True:
            try:
                if self.request("GET", "/readyz")[0] == 200:
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the webhook never became ready: {self.container.logs()[-2000:]}")
            time.sleep(0.05)

    def request(self, method: str, path: str, body: bytes = b"") -> tuple[int, bytes]:
        """One HTTPS request to 127.0.0.1, verifying the certificate as the API server would
        (the Service's DNS name, the generated CA)."""
        raw = socket.create_connection(("127.0.0.1", self.port), timeout=5)
        with self.context.wrap_socket(raw, server_hostname=SERVICE_NAME) as tls:
            request = (f"{method} {path} HTTP/1.1\r\nHost: {SERVICE_NAME}\r\nContent-Type: application/json\r\n"
                       f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode() + body
            tls.sendall(request)
            response = http.client.HTTPResponse(tls)
            response.begin()
            return response.status, response.read()

    def admit(self, pod: dict) -> tuple[dict, list]:
        """Sends `pod` as an admission.k8s.io/v1 AdmissionReview; returns the patched pod and
        the patch."""
        review = {
            "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
            "request": {
                "uid": f"demo-{time.monotonic_ns()}", "kind": {"group": "", "version": "v1", "kind": "Pod"},
                "resource": {"group": "", "version": "v1", "resource": "pods"},
                "namespace": pod["metadata"]["namespace"], "operation": "CREATE",
                "userInfo": {"username": "system:serviceaccount:kube-system:replicaset-controller"},
                "object": pod, "oldObject": None, "dryRun": False,
            },
        }
        status, body = self.request("POST", "/mutate", json.dumps(review).encode())
        answer = json.loads(body)["response"]
        if status != 200 or not answer["allowed"]:
            raise RuntimeError(f"webhook refused the pod: {body!r}")
        patch = json.loads(base64.b64decode(answer["patch"])) if "patch" in answer else []
        return jsonpatch.apply_patch(pod, patch), patch


def sample_pod(mode: str) -> dict:
    """The pod the sample Deployment's ReplicaSet would create."""
    deployment = yaml.safe_load((ROOT / f"manifests/samples/busybox-deployment-{mode}.yaml").read_text())
    template = deployment["spec"]["template"]
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": dict(template["metadata"], generateName=f"{deployment['metadata']['name']}-",
                             namespace=deployment["metadata"]["namespace"]),
            "spec": template["spec"]}


def injected(pod: dict) -> dict:
    """The helper container the webhook added."""
    spec = pod["spec"]
    return next(c for c in spec.get("initContainers", []) + spec["containers"] if c["name"] == "aws-ip-mgmt")


def eni_table(bed: Bed) -> list[str]:
    rows = [f"  {'node':<6} {'ENI':<5} {'id':<24} {'subnet':<9} addresses"]
    for node, details in bed.topology["nodes"].items():
        for eni in details["enis"]:
            rows.append(f"  {node:<6} {eni['name']:<5} {eni['id']:<24} {eni['subnet']:<9} "
                        + ", ".join(bed.addresses(eni["id"])))
    return rows


def check(condition: bool, what: str, out: Output) -> None:
    if not condition:
        raise AssertionError(what)
    out.ok(what)


def workspace_version() -> str:
    """The version scripts/images tags the images with."""
    return re.search(r'^version = "(.+)"', (ROOT / "Cargo.toml").read_text(), re.MULTILINE).group(1)


def launcher_for(images: bool | None, workdir: Path) -> tuple[Launcher, str]:
    """The images when `images` (or when they can run and `images` is None), else the
    binaries; with what was chosen and why."""
    tag = os.environ.get("IPMGR_IMAGE_TAG", workspace_version())
    why_not = unavailable([f"{IMAGES}/ipmgr-{name}:{tag}" for name in ("helper", "webhook", "pod")]) \
        if images is not False else None
    if images is not False and why_not is None:
        return Images(), f"the images {IMAGES}/ipmgr-{{helper,webhook,pod}}:{tag} under podman"
    if images:
        raise SystemExit(f"cannot run the images: {why_not}")
    binaries = {name: Path(os.environ.get(variable, ROOT / "target/debug" / name))
                for name, variable in (("ipmgr-webhook", "IPMGR_WEBHOOK_BIN"), ("ipmgr-helper", "IPMGR_HELPER_BIN"),
                                       ("ipmgr-pod", "IPMGR_POD_BIN"))}
    for binary in binaries.values():
        if not binary.exists():
            raise SystemExit(f"{binary} is missing: build it first (scripts/demo does)")
    reason = f" ({why_not})" if why_not else ""
    return Binaries(programs=binaries, workdir=workdir), f"the built binaries as root processes{reason}"


def pod_spec(admitted: dict, pod: Pod, dns: str | None, host_ip: str) -> PodSpec:
    """An admitted pod as scheduled on `pod.node` (whose address is `host_ip`), `dns` its
    DNS server."""
    return PodSpec(admitted["spec"], {"spec.nodeName": pod.node, "metadata.name": pod.name,
                                      "metadata.namespace": admitted["metadata"]["namespace"],
                                      "status.hostIP": host_ip}, dns=dns)


def confinement(started: Started, out: Output, check_results: bool, what: str) -> dict:
    """What a running container may do, from the host's view of its first process; with
    `check_results`, asserts the injected security context holds."""
    status = started.status()
    facts = {"uid": status["Uid"].split()[0], "capabilities": status["CapEff"], "no_new_privs": status["NoNewPrivs"],
             "seccomp": status["Seccomp"], "writable": started.writable_mounts(),
             "rss_kib": int(status["VmRSS"].split()[0])}
    out.line(f"  {what}: uid {facts['uid']}, CapEff {facts['capabilities']}, NoNewPrivs {facts['no_new_privs']}, "
             f"seccomp mode {facts['seccomp']}, writable: {', '.join(facts['writable']) or 'nothing'}, "
             f"RSS {facts['rss_kib'] / 1024:.1f} MiB")
    if check_results:
        check(facts["uid"] == "65532" and int(facts["capabilities"], 16) == 0, f"{what} runs as 65532 with no capability", out)
        check(facts["no_new_privs"] == "1" and facts["seccomp"] == "2", f"{what}: no-new-privileges, seccomp filter", out)
        check(set(facts["writable"]) <= {"/run/ipmgr-helper"},
              f"{what} can write only to its emptyDir ({facts['writable']})", out)
    return facts


def run(check_results: bool = False, quiet: bool = False, images: bool | None = None, backend: str = "agent") -> dict:
    """The whole demo; with `check_results`, every claim it prints is asserted too. `images`:
    run the containers from their images (True), the binaries (False), or the images when
    they are built and podman runs (None). `backend`: the webhook's helper backend, `agent`
    (the default: the node agents call EC2, pods hold no credentials and cannot reach
    instance metadata) or `direct` (each helper calls EC2 itself, pods reach metadata).
    Returns the measured figures."""
    out = Output(quiet)
    if os.geteuid() != 0:
        raise SystemExit("the demo creates network namespaces: run it as root (sudo scripts/demo)")
    if backend not in BACKENDS:
        raise SystemExit(f"unknown backend {backend!r}: {' or '.join(BACKENDS)}")
    agent_backend = backend == "agent"
    workdir = Path(tempfile.mkdtemp(prefix="ipmgr-demo-"))
    launcher, how = launcher_for(images, workdir)
    world = World(launcher, workdir=workdir)
    in_images = isinstance(launcher, Images)
    tag = os.environ.get("IPMGR_IMAGE_TAG", workspace_version())
    figures: dict = {"images": in_images, "backend": backend}
    try:
        out.step("The emulated cluster: EC2 (moto + our rules), IMDSv2 per node, an API server, "
                 "pods as network namespaces")
        bed = Bed("how-to")
        world.beds.append(bed)
        node1, node2 = bed.topology["nodes"]["node1"]["enis"], bed.topology["nodes"]["node2"]["enis"]
        eth1_node1, eth1_node2 = node1[1]["id"], node2[1]["id"]
        ipv6 = f"{bed.ipv6_prefix()}80"
        out.line(f"  testenv/topologies/how-to.json: node1 has {len(node1)} ENIs, node2 {len(node2)}; "
                 f"the API server at {bed.kube_endpoint}")
        if agent_backend:
            # As on a hardened EKS node (IMDSv2 hop limit 1): only the node itself is answered.
            bed.pods_reach_metadata(False)
            out.line("  instance metadata answers the nodes only, not their pods (as with hop limit 1 on EKS)")
        else:
            out.line("  instance metadata answers the pods too (hop limit 2, as the direct backend needs)")
        nodes = {name: bed.node(name) for name in bed.topology["nodes"]}
        # Every node runs some pod with a namespace of its own (the agent reads an empty view
        # as a wrong netns directory): here one without Multus networks on each.
        pod_names = {}  # by pod IP, for the metadata requests' sources
        for name in nodes:
            pod_names[bed.pod(name, f"web-{name}", []).pod_ip] = f"web-{name}"
        leaked = "10.0.1.90"
        bed.control("POST", "assign", {"eni": eth1_node1, "ipv4": [leaked]})
        out.line(f"  an ordinary pod on each node; {leaked} is on node1's eth1 and in no pod: "
                 "a pod force-deleted before the agents ran left it")
        out.line(f"  containers run as {how}")
        # From the images, pods reach EC2 by its real name through the VPC's resolver, as
        # the static binary in a scratch image must (no NSS modules there: glibc's built-in
        # dns); the binaries use the host's resolv.conf, so they get the address.
        dns = bed.topology["resolver"] if in_images else None
        by_name = {"AWS_ENDPOINT_URL_EC2": bed.topology["ec2_endpoint_by_name"]} if in_images else {}
        figures["ec2_endpoint"] = by_name.get("AWS_ENDPOINT_URL_EC2", bed.topology["ec2_endpoint"])
        out.line(f"  EC2 for the {'agents' if agent_backend else 'agents and the helpers'}: {figures['ec2_endpoint']}")

        out.step(f"The node agent's DaemonSet container (manifests/agent) on every node, grace {AGENT_GRACE_SECONDS} s")
        agent_container, agent_template = workload_pod("agent/daemonset.yaml", "DaemonSet",
                                                       f"{IMAGES}/ipmgr-helper:{tag}")
        pod_api_port = next(port["containerPort"] for port in agent_container["ports"] if port["name"] == "pod-api")
        agents = {}
        for name, node in nodes.items():
            # The node's namespace (hostNetwork), its netns directory mounted HostToContainer,
            # NODE_NAME from the downward API and the bed's kubeconfig for the pod watch.
            spec = PodSpec(agent_template, {"spec.nodeName": name}, dns=dns, kubeconfig=bed.kubeconfig)
            agents[name] = launcher.start(agent_container, spec, node, f"{bed.name}-agent-{name}",
                                          sources={"netns": node.netns_dir},
                                          extra_env=by_name | {"IPMGR_RELEASE_GRACE_SECONDS": str(AGENT_GRACE_SECONDS)})
        for name, node in nodes.items():
            try:
                seconds = readiness_probe(agent_container, node.netns, node.address, limit=30)
            except ContainerError as error:
                raise RuntimeError(f"the agent on {name} never became ready ({error}): {agents[name].logs()[-2000:]}") \
                    from None
            out.line(f"  {name}: NODE_NAME={name}, KUBECONFIG (the API server, for its pod watch), "
                     f"pod API on {node.address}:{pod_api_port}; /readyz 200 after {seconds:.1f} s")
        figures["leak_reclaimed"] = bed.wait_held(eth1_node1, leaked, held=False, limit=30)
        out.line(f"  {leaked} given back by node1's agent after {figures['leak_reclaimed']:.1f} s")
        if in_images:
            capabilities = {name: int(agent.status()["CapEff"], 16) for name, agent in agents.items()}
            out.line("  the agents' capabilities: "
                     + ", ".join(f"{name} {value:#x}" for name, value in capabilities.items())
                     + f" (CAP_SYS_ADMIN is {CAP_SYS_ADMIN:#x})")
            if check_results:
                check(set(capabilities.values()) == {CAP_SYS_ADMIN},
                      "the agents enter pod namespaces with CAP_SYS_ADMIN alone", out)

        out.step("The webhook Deployment's container (manifests/base), certificate from ipmgr-webhook certs")
        # The demo's webhook has no API server to read NetworkAttachmentDefinitions from (the
        # samples' networks name no resource): resource requests off.
        webhook_settings = {"IPMGR_NETWORK_RESOURCES": "false"}
        if not agent_backend:
            webhook_settings["IPMGR_HELPER_BACKEND"] = "direct"
        webhook = Webhook(world, f"{IMAGES}/ipmgr-webhook:{tag}", f"{IMAGES}/ipmgr-helper:{tag}",
                          f"{IMAGES}/ipmgr-pod:{tag}", webhook_settings)
        out.line(f"  https://127.0.0.1:{webhook.port} as {SERVICE_NAME}, ready; helper backend: {backend}")

        out.step("Admitting the sample busybox pods as the API server would")
        admitted = {}
        for mode in ("init", "sidecar", "native-sidecar"):
            sample = sample_pod(mode)
            if mode == "sidecar":
                # keepalived's VIP comes up after Multus recorded the pod's addresses: the
                # pods declare it, or their agent would refuse it (agent backend).
                sample["metadata"]["annotations"][FLOATING_IPS] = FLOATING_IP
            patched, patch = webhook.admit(sample)
            admitted[mode] = patched
            helper = injected(patched)
            where = "initContainers" if helper in patched["spec"].get("initContainers", []) else "containers"
            extra = ", restartPolicy Always + startupProbe" if helper.get("restartPolicy") == "Always" else ""
            out.line(f"  {mode:<15} {len(patch)} patch ops: {where} aws-ip-mgmt {' '.join(helper['args'])}{extra}")
        again, patch = webhook.admit(admitted["init"])
        out.line(f"  admitting the injected init-mode pod again: {len(patch)} patch ops")
        patch_env = {variable["name"]: variable for variable in injected(admitted["init"])["env"]}
        if agent_backend:
            host_ip = patch_env["HOST_IP"]["valueFrom"]["fieldRef"]["fieldPath"]
            out.line(f"  the helper asks its node's agent: HOST_IP from {host_ip}, "
                     f"IPMGR_AGENT_URL={patch_env['IPMGR_AGENT_URL']['value']}; nothing of AWS")
        else:
            out.line("  the helper calls EC2 itself, with the node role through instance metadata")

        def helper_place(pod: Pod) -> Pod:
            """Where a pod's helper runs. The bed gives every pod the AWS variables that lead
            to its stand-ins (its node's metadata, EC2) in place of AWS's real addresses: only
            the direct backend's helper calls them; with the agent backend it gets nothing
            but what the webhook's patch sets."""
            return pod if not agent_backend else replace(pod, env={})

        helper_extra = {} if agent_backend else by_name

        def scheduled(mode: str, node: str, name: str, interfaces: list[dict]) -> Pod:
            """The admitted pod of `mode` on `node`: its namespace, and its Pod object in the
            API server with the admitted pod's annotations (Multus adds its network-status)."""
            metadata = admitted[mode]["metadata"]
            scheduled_pod = bed.pod(node, name, interfaces, namespace=metadata["namespace"],
                                    annotations=metadata.get("annotations", {}))
            pod_names[scheduled_pod.pod_ip] = name
            return scheduled_pod

        def spec_of(mode: str, pod: Pod) -> PodSpec:
            return pod_spec(admitted[mode], pod, dns, nodes[pod.node].address)

        # 10.0.1.80 was left on node2's eth1 by a pod that ran there: the init pod's address
        # moves from it (AllowReassignment).
        bed.control("POST", "assign", {"eni": eth1_node2, "ipv4": ["10.0.1.80"]})
        out.step("ENIs before (node2's eth1 holds 10.0.1.80, left there by a pod that ran on node2)")
        for row in eni_table(bed):
            out.line(row)

        out.step("The init-mode pod: net1 (ipvlan on eth1 -> macvlan with eth1's MAC), 10.0.1.80 + " + ipv6)
        pod = scheduled("init", "node1", "busybox-init-1",
                        [{"name": "net1", "eni": "eth1", "addresses": ["10.0.1.80/24", f"{ipv6}/64"]}])
        container = injected(admitted["init"])
        # What each helper was given (the init container's) or holds (the running ones'),
        # for the credentials step.
        given = environment(container, spec_of("init", pod), helper_place(pod).env | helper_extra)
        helpers_env = {f"init container {pod.name} (as started)": given}
        bed.control("POST", "calls/reset")
        started = time.monotonic()
        result = launcher.run(container, spec_of("init", pod), helper_place(pod), f"{bed.name}-{pod.name}",
                              helper_extra)
        figures["init_seconds"] = time.monotonic() - started
        if result.returncode != 0:
            raise RuntimeError(f"the injected init container failed: {result.stderr.strip().splitlines()[-3:]}")
        calls = bed.control("GET", "calls")
        caller = "node1's agent" if agent_backend else "the helper"
        out.line(f"  init container exited 0 in {figures['init_seconds'] * 1000:.0f} ms; EC2 calls by {caller}: "
                 + ", ".join(f"{action} {count}" for action, count in sorted(calls.items())))

        out.step("ENIs after")
        for row in eni_table(bed):
            out.line(row)
        if check_results:
            check({"10.0.1.80", ipv6} <= set(bed.addresses(eth1_node1)),
                  "the init container the webhook's patch describes makes the pod's addresses routable", out)

        bed.control("POST", "calls/reset")
        result = launcher.run(container, spec_of("init", pod), helper_place(pod), f"{bed.name}-{pod.name}",
                              helper_extra)
        second_calls = bed.control("GET", "calls")
        mutating = sum(count for action, count in second_calls.items() if not action.startswith("Describe"))
        out.line(f"  restarted pod: init exited {result.returncode}, EC2 calls: {sum(second_calls.values())} "
                 f"({mutating} changing anything)")

        out.step(f"Sidecar mode: floating IP {FLOATING_IP} between pod A (node1) and pod B (node2)")
        if agent_backend:
            out.line(f"  Multus' network-status records the addresses net1 had when the pod started; the VIP comes "
                     f"later, so both pods declare it: {FLOATING_IPS}: {FLOATING_IP}")
            # A pod author cannot grant itself an address: a cluster admin grants the VIP to
            # the namespace, or both agents refuse it
            # (docs/security.md, "Granting a floating IP").
            namespace = admitted["sidecar"]["metadata"]["namespace"]
            bed.annotate_namespace(namespace, {FLOATING_IP_CIDRS: f"{FLOATING_IP}/32"})
            out.line(f"  the cluster admin grants it to namespace {namespace}: "
                     f"{FLOATING_IP_CIDRS}: {FLOATING_IP}/32")
        sidecar_container = injected(admitted["sidecar"])
        pod_a = scheduled("sidecar", "node1", "busybox-sidecar-a",
                          [{"name": "net1", "eni": "eth1", "addresses": ["10.0.1.81/24"]}])
        pod_b = scheduled("sidecar", "node2", "busybox-sidecar-b",
                          [{"name": "net1", "eni": "eth1", "addresses": ["10.0.1.82/24"]}])
        sidecars = {member.name: launcher.start(sidecar_container, spec_of("sidecar", member), helper_place(member),
                                                f"{bed.name}-{member.name}", extra_env=helper_extra)
                    for member in (pod_a, pod_b)}
        bed.wait_held(eth1_node1, "10.0.1.81", limit=15)
        bed.wait_held(eth1_node2, "10.0.1.82", limit=15)
        for member in (pod_a, pod_b):
            helpers_env[f"sidecar {member.name} (/proc/PID/environ)"] = sidecars[member.name].environ()
        timeline = []
        bed.add_address(pod_a, "net1", f"{FLOATING_IP}/24")
        timeline.append(("appears on A", bed.wait_held(eth1_node1, FLOATING_IP)))
        bed.remove_address(pod_a, "net1", f"{FLOATING_IP}/24")
        bed.add_address(pod_b, "net1", f"{FLOATING_IP}/24")
        timeline.append(("fails over to B", bed.wait_held(eth1_node2, FLOATING_IP)))
        bed.remove_address(pod_b, "net1", f"{FLOATING_IP}/24")
        bed.add_address(pod_a, "net1", f"{FLOATING_IP}/24")
        timeline.append(("fails back to A", bed.wait_held(eth1_node1, FLOATING_IP)))
        for event, seconds in timeline:
            out.line(f"  {event:<16} on its node's ENI after {seconds * 1000:5.0f} ms")
        figures["floating_ip"] = dict(timeline)
        if in_images:
            figures["sidecar"] = confinement(sidecars[pod_a.name], out, check_results, "sidecar A")
        grace = admitted["sidecar"]["spec"].get("terminationGracePeriodSeconds", 30)
        exit_code = sidecars[pod_b.name].stop(grace)
        held_after_exit = "10.0.1.82" in bed.addresses(eth1_node2)
        sigterm = figures["sigterm"] = {"exit_code": exit_code, "held_after_exit": held_after_exit}
        if agent_backend:
            out.line(f"  pod B deleted (terminating): its sidecar exited {exit_code} on SIGTERM and gave nothing back; "
                     "10.0.1.82 " + ("stays on node2's eth1 while the pod's namespace is there" if held_after_exit
                                     else "LEFT node2's eth1"))
            if check_results:
                check(exit_code == 0 and held_after_exit,
                      "the sidecar exits 0 on SIGTERM and its pod keeps its address while it terminates", out)
            bed.delete_pod(pod_b)
            released = sigterm["released_after_deletion"] = gone_within(bed, eth1_node2, ["10.0.1.82"])
            out.line("  its namespace gone, node2's agent " + (
                f"gave 10.0.1.82 back after {released:.1f} s (grace {AGENT_GRACE_SECONDS} s)" if released is not None
                else "DID NOT give 10.0.1.82 back"))
            if check_results:
                check(released is not None, "once the pod's namespace is gone, its node's agent gives the address back",
                      out)
        else:
            out.line(f"  pod B deleted (terminating): its sidecar exited {exit_code} on SIGTERM, 10.0.1.82 "
                     + ("still on node2's eth1" if held_after_exit else "released from node2's eth1"))
            if check_results:
                check(exit_code == 0 and not held_after_exit,
                      "the direct backend's sidecar exits 0 on SIGTERM and gives its pod's address back", out)
            bed.delete_pod(pod_b)

        out.step("Native-sidecar mode: the startup probe passes once the pod's address is routable")
        native = scheduled("native-sidecar", "node1", "busybox-native-1",
                           [{"name": "net1", "eni": "eth1", "addresses": ["10.0.1.83/24"]}])
        native_container = injected(admitted["native-sidecar"])
        native_sidecar = launcher.start(native_container, spec_of("native-sidecar", native), helper_place(native),
                                        f"{bed.name}-{native.name}", extra_env=helper_extra)
        figures["startup_probe_seconds"] = native_sidecar.startup_probe(native_container["startupProbe"])
        held = "10.0.1.83" in bed.addresses(eth1_node1)
        out.line(f"  `{' '.join(native_container['startupProbe']['exec']['command'])}` passed after "
                 f"{figures['startup_probe_seconds']:.1f} s; 10.0.1.83 {'is' if held else 'is not'} on eth1")
        if check_results:
            check(held, "the startup probe the webhook's patch describes passes only once the address is on the ENI", out)
        helpers_env[f"native sidecar {native.name} (/proc/PID/environ)"] = native_sidecar.environ()
        if in_images:
            figures["native_sidecar"] = confinement(native_sidecar, out, check_results, "native sidecar")

        credentials(bed, nodes, pod_names, helpers_env, agent_backend, figures, out, check_results)

        out.step(f"The node agents give back what pods left (grace {AGENT_GRACE_SECONDS} s), "
                 "never what live pods carry")
        bed.delete_pod(pod)
        out.line(f"  deleted the init-mode pod {pod.name} (10.0.1.80, {ipv6})")
        released = figures["deleted_released"] = gone_within(bed, eth1_node1, ["10.0.1.80", ipv6])
        out.line(f"  its addresses went back {released:.1f} s after the deletion" if released is not None
                 else "  its addresses DID NOT go back")
        live = {"10.0.1.81", "10.0.1.83", FLOATING_IP} <= set(bed.addresses(eth1_node1))
        out.line(f"  the running pods' addresses {'stay' if live else 'DID NOT stay'} on node1's eth1 "
                 f"(10.0.1.81, 10.0.1.83, {FLOATING_IP})")
        if check_results:
            check(released is not None and live,
                  "the agent gives back what a deleted pod left and keeps what running pods carry", out)
        out.step("Done; cleaning up")
        return figures
    finally:
        world.cleanup()


def gone_within(bed: Bed, eni_id: str, addresses: list[str], limit: float = 30) -> float | None:
    """Seconds until `eni_id` holds none of `addresses`, None if some stay for `limit` s."""
    started = time.monotonic()
    try:
        for address in addresses:
            bed.wait_held(eni_id, address, held=False, limit=max(0.0, limit - (time.monotonic() - started)))
    except AssertionError:
        return None
    return time.monotonic() - started


def aws_settings(variables: dict[str, str]) -> list[str]:
    """The variables of `variables` that would give a program AWS access or AWS settings:
    every AWS_* (region, endpoints, keys, IRSA's web identity, Pod Identity's credentials
    URI, the metadata endpoint) and the helper's EC2 and instance metadata settings."""
    return [name for name in variables if AWS_SETTING.match(name)]


def credentials(bed: Bed, nodes: dict, pod_names: dict[str, str], helpers_env: dict[str, dict[str, str]],
                agent_backend: bool, figures: dict, out: Output, check_results: bool) -> None:
    """What the pods' helpers hold (their environment) and who asked instance metadata
    (`pod_names`: the pods by IP)."""
    if agent_backend:
        out.step("No AWS credentials in the pods: the helpers' environment, and who asked instance metadata")
    else:
        out.step("The direct backend: each helper reaches AWS itself, credentials from instance metadata")
    found = {}
    for what, variables in helpers_env.items():
        found[what] = aws_settings(variables)
        out.line(f"  {what}: {' '.join(sorted(variables))}")
    figures["helper_env"] = {what: list(variables) for what, variables in helpers_env.items()}
    figures["helper_aws_settings"] = found
    settings = sorted({name for names in found.values() for name in names})
    out.line(f"  AWS settings among them (AWS_*, IPMGR_EC2_*, IPMGR_METADATA_*): {' '.join(settings) or 'none'}"
             + ("" if agent_backend else " (the bed's stand-ins for AWS's own addresses)"))
    by_address = {node.address: name for name, node in nodes.items()}
    if agent_backend:
        urls = sorted({variables["IPMGR_AGENT_URL"] for variables in helpers_env.values()})
        out.line("  their agent: " + ", ".join(
            f"{url} ({by_address.get(url.split('//')[1].rsplit(':', 1)[0], '?')}'s address)" for url in urls))
    by_source = bed.metadata_requests()
    from_nodes = {name: by_source.get(node.address, 0) for name, node in nodes.items()}
    from_pods = {pod_names.get(source, source): count
                 for source, count in by_source.items() if source not in by_address}
    figures["metadata_requests"] = {"nodes": from_nodes, "pods": sum(from_pods.values())}
    out.line("  instance metadata requests by source address (the bed counts them): "
             + ", ".join(f"{name} ({nodes[name].address}) {count}" for name, count in from_nodes.items())
             + f"; from pods {sum(from_pods.values())}"
             + (f" ({', '.join(f'{pod} {count}' for pod, count in sorted(from_pods.items()))})" if from_pods else ""))
    if not check_results:
        return
    if agent_backend:
        check(not any(found.values()),
              "no helper has an AWS_* variable or an IPMGR_EC2_*/IPMGR_METADATA_* setting", out)
        check(not from_pods and all(from_nodes.values()),
              "no pod asked instance metadata; the agents did, from their nodes' addresses", out)
    else:
        check(bool(from_pods), "the direct backend's helpers asked instance metadata from their pods", out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--images", action="store_true", help="run the containers from the images (podman)")
    source.add_argument("--binaries", action="store_true", help="run the built binaries as root processes")
    parser.add_argument("--backend", choices=BACKENDS, default="agent",
                        help="the webhook's helper backend (IPMGR_HELPER_BACKEND; default: agent)")
    parser.add_argument("--check", action="store_true", help="assert every claim the demo prints")
    arguments = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    images = True if arguments.images else False if arguments.binaries else None
    try:
        run(check_results=arguments.check, images=images, backend=arguments.backend)
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
