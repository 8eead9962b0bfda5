#!/usr/bin/env python3
"""multus-ipmgr on one machine: the webhook admits Multus pods, the helper it injects makes
the pods' IPs routable on the emulated node's ENIs in each mode, a floating IP moves between
pods, and the node agent returns the addresses of pods that are gone.

The containers run from the images of scripts/images under podman, with the security
context from the manifests and the webhook's patch, when those images are built (or
`--images`); otherwise (or `--binaries`) the built binaries run as root processes in the
same network namespaces. Needs root (network namespaces) and the Python packages of
tests/requirements.txt (for the AWS stand-in). `scripts/demo` provides all of that;
`run(check_results=True)` is the end-to-end test (demo/test_demo.py).
"""

from __future__ import annotations

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
from dataclasses import dataclass, field
from pathlib import Path

import jsonpatch
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from demo.containers import PodSpec, Started, unavailable  # noqa: E402
from demo.launchers import Binaries, Images, Launcher  # noqa: E402
from testenv.client import Bed, Pod  # noqa: E402

SERVICE_NAME = "ipmgr-webhook.multus-ipmgr.svc"
FLOATING_IP = "10.0.1.100"
AGENT_GRACE_SECONDS = 2
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


def workload_pod(path: str, kind: str, image: str) -> tuple[dict, PodSpec]:
    """The container and pod of a Deployment or DaemonSet in manifests/, with our image (as a
    kustomize `images:` entry would set it)."""
    template = manifest(path, kind)["spec"]["template"]
    container = dict(template["spec"]["containers"][0], image=image)
    return container, PodSpec(template["spec"], {"spec.nodeName": "node1"})


class Webhook:
    """The webhook Deployment's container on loopback (the Service), with a certificate from
    `ipmgr-webhook certs` in the directory that stands in for its Secret."""

    def __init__(self, world: World, image: str, helper_image: str):
        container, pod = workload_pod("base/deployment.yaml", "Deployment", image)
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
            extra_env={"IPMGR_LISTEN": f"127.0.0.1:{self.port}", "IPMGR_HELPER_IMAGE": helper_image, "IPMGR_LOG": "warn"})
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
    why_not = unavailable([f"{IMAGES}/ipmgr-helper:{tag}", f"{IMAGES}/ipmgr-webhook:{tag}"]) if images is not False else None
    if images is not False and why_not is None:
        return Images(), f"the images {IMAGES}/ipmgr-{{helper,webhook}}:{tag} under podman"
    if images:
        raise SystemExit(f"cannot run the images: {why_not}")
    binaries = {name: Path(os.environ.get(variable, ROOT / "target/debug" / name))
                for name, variable in (("ipmgr-webhook", "IPMGR_WEBHOOK_BIN"), ("ipmgr-helper", "IPMGR_HELPER_BIN"))}
    for binary in binaries.values():
        if not binary.exists():
            raise SystemExit(f"{binary} is missing: build it first (scripts/demo does)")
    reason = f" ({why_not})" if why_not else ""
    return Binaries(programs=binaries, workdir=workdir), f"the built binaries as root processes{reason}"


def pod_spec(admitted: dict, pod: Pod, dns: str | None) -> PodSpec:
    """An admitted pod as scheduled on `pod.node`, `dns` its DNS server."""
    return PodSpec(admitted["spec"], {"spec.nodeName": pod.node, "metadata.name": pod.name,
                                      "metadata.namespace": admitted["metadata"]["namespace"]}, dns=dns)


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


def run(check_results: bool = False, quiet: bool = False, images: bool | None = None) -> dict:
    """The whole demo; with `check_results`, every claim it prints is asserted too. `images`:
    run the containers from their images (True), the binaries (False), or the images when
    they are built and podman runs (None). Returns the measured figures."""
    out = Output(quiet)
    if os.geteuid() != 0:
        raise SystemExit("the demo creates network namespaces: run it as root (sudo scripts/demo)")
    workdir = Path(tempfile.mkdtemp(prefix="ipmgr-demo-"))
    launcher, how = launcher_for(images, workdir)
    world = World(launcher, workdir=workdir)
    in_images = isinstance(launcher, Images)
    tag = os.environ.get("IPMGR_IMAGE_TAG", workspace_version())
    figures: dict = {"images": in_images}
    try:
        out.step("The emulated cluster: EC2 (moto + our rules), IMDSv2 per node, pods as network namespaces")
        bed = Bed("how-to")
        world.beds.append(bed)
        node1, node2 = bed.topology["nodes"]["node1"]["enis"], bed.topology["nodes"]["node2"]["enis"]
        eth1_node1, eth1_node2 = node1[1]["id"], node2[1]["id"]
        ipv6 = f"{bed.ipv6_prefix()}80"
        # node2 already holds one of the pod's addresses (a pod that ran there before).
        bed.control("POST", "assign", {"eni": eth1_node2, "ipv4": ["10.0.1.80"]})
        out.line(f"  testenv/topologies/how-to.json: node1 has {len(node1)} ENIs, node2 {len(node2)}; "
                 "node2 holds 10.0.1.80")
        out.line(f"  containers run as {how}")
        # From the images, pods reach EC2 by its real name through the VPC's resolver, as
        # the static binary in a scratch image must (no NSS modules there: glibc's built-in
        # dns); the binaries use the host's resolv.conf, so they get the address.
        dns = bed.topology["resolver"] if in_images else None
        by_name = {"AWS_ENDPOINT_URL_EC2": bed.topology["ec2_endpoint_by_name"]} if in_images else {}
        figures["ec2_endpoint"] = by_name.get("AWS_ENDPOINT_URL_EC2", bed.topology["ec2_endpoint"])
        out.line(f"  EC2 for the helpers: {figures['ec2_endpoint']}")

        out.step("The webhook Deployment's container (manifests/base), certificate from ipmgr-webhook certs")
        webhook = Webhook(world, f"{IMAGES}/ipmgr-webhook:{tag}", f"{IMAGES}/ipmgr-helper:{tag}")
        out.line(f"  https://127.0.0.1:{webhook.port} as {SERVICE_NAME}, ready")

        out.step("Admitting the sample busybox pods as the API server would")
        admitted = {}
        for mode in ("init", "sidecar", "native-sidecar"):
            patched, patch = webhook.admit(sample_pod(mode))
            admitted[mode] = patched
            helper = injected(patched)
            where = "initContainers" if helper in patched["spec"].get("initContainers", []) else "containers"
            extra = ", restartPolicy Always + startupProbe" if helper.get("restartPolicy") == "Always" else ""
            out.line(f"  {mode:<15} {len(patch)} patch ops: {where} aws-ip-mgmt {' '.join(helper['args'])}{extra}")
        again, patch = webhook.admit(admitted["init"])
        out.line(f"  admitting the injected init-mode pod again: {len(patch)} patch ops")

        out.step("ENIs before")
        for row in eni_table(bed):
            out.line(row)

        out.step("The init-mode pod: net1 (ipvlan on eth1 -> macvlan with eth1's MAC), 10.0.1.80 + " + ipv6)
        pod = bed.pod("node1", "busybox-init-1", [{"name": "net1", "eni": "eth1", "addresses": ["10.0.1.80/24", f"{ipv6}/64"]}])
        container = injected(admitted["init"])
        bed.control("POST", "calls/reset")
        started = time.monotonic()
        result = launcher.run(container, pod_spec(admitted["init"], pod, dns), pod, f"{bed.name}-{pod.name}", by_name)
        figures["init_seconds"] = time.monotonic() - started
        if result.returncode != 0:
            raise RuntimeError(f"the injected init container failed: {result.stderr.strip().splitlines()[-3:]}")
        calls = bed.control("GET", "calls")
        out.line(f"  init container exited 0 in {figures['init_seconds'] * 1000:.0f} ms; EC2 calls: "
                 + ", ".join(f"{action} {count}" for action, count in sorted(calls.items())))

        out.step("ENIs after")
        for row in eni_table(bed):
            out.line(row)
        if check_results:
            check({"10.0.1.80", ipv6} <= set(bed.addresses(eth1_node1)),
                  "the init container the webhook's patch describes makes the pod's addresses routable", out)

        bed.control("POST", "calls/reset")
        result = launcher.run(container, pod_spec(admitted["init"], pod, dns), pod, f"{bed.name}-{pod.name}", by_name)
        second_calls = bed.control("GET", "calls")
        out.line(f"  restarted pod: init exited {result.returncode}, EC2 calls: {sum(second_calls.values())}")

        out.step(f"Sidecar mode: floating IP {FLOATING_IP} between pod A (node1) and pod B (node2)")
        sidecar_container = injected(admitted["sidecar"])
        pod_a = bed.pod("node1", "busybox-sidecar-a", [{"name": "net1", "eni": "eth1", "addresses": ["10.0.1.81/24"]}])
        pod_b = bed.pod("node2", "busybox-sidecar-b", [{"name": "net1", "eni": "eth1", "addresses": ["10.0.1.82/24"]}])
        sidecars = {member.name: launcher.start(sidecar_container, pod_spec(admitted["sidecar"], member, dns), member,
                                                f"{bed.name}-{member.name}", extra_env=by_name)
                    for member in (pod_a, pod_b)}
        bed.wait_held(eth1_node1, "10.0.1.81", limit=15)
        bed.wait_held(eth1_node2, "10.0.1.82", limit=15)
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
        still_held = "10.0.1.82" in bed.addresses(eth1_node2)
        out.line(f"  pod B deleted: its sidecar exited {exit_code} on SIGTERM, 10.0.1.82 "
                 + ("still on node2's eth1" if still_held else "released from node2's eth1"))

        out.step("Native-sidecar mode: the startup probe passes once the pod's address is routable")
        native = bed.pod("node1", "busybox-native-1", [{"name": "net1", "eni": "eth1", "addresses": ["10.0.1.83/24"]}])
        native_container = injected(admitted["native-sidecar"])
        native_sidecar = launcher.start(native_container, pod_spec(admitted["native-sidecar"], native, dns), native,
                                        f"{bed.name}-{native.name}", extra_env=by_name)
        figures["startup_probe_seconds"] = native_sidecar.startup_probe(native_container["startupProbe"])
        held = "10.0.1.83" in bed.addresses(eth1_node1)
        out.line(f"  `{' '.join(native_container['startupProbe']['exec']['command'])}` passed after "
                 f"{figures['startup_probe_seconds']:.1f} s; 10.0.1.83 {'is' if held else 'is not'} on eth1")
        if check_results:
            check(held, "the startup probe the webhook's patch describes passes only once the address is on the ENI", out)
        if in_images:
            figures["native_sidecar"] = confinement(native_sidecar, out, check_results, "native sidecar")

        out.step(f"The node agent's DaemonSet container on node1 (grace {AGENT_GRACE_SECONDS} s): "
                 "addresses of pods that are gone go back")
        leaked = "10.0.1.90"
        bed.control("POST", "assign", {"eni": eth1_node1, "ipv4": [leaked]})
        out.line(f"  {leaked} is on eth1 and in no pod: a pod force-deleted before the agent ran left it")
        node = bed.node("node1")
        agent_container, agent_pod = workload_pod("agent/daemonset.yaml", "DaemonSet", f"{IMAGES}/ipmgr-helper:{tag}")
        agent_pod.dns = dns
        agent = launcher.start(agent_container, agent_pod, node, f"{bed.name}-agent", sources={"netns": node.netns_dir},
                               extra_env=by_name | {"IPMGR_RELEASE_GRACE_SECONDS": str(AGENT_GRACE_SECONDS)})
        figures["leak_reclaimed"] = bed.wait_held(eth1_node1, leaked, held=False, limit=30)
        out.line(f"  reclaimed after {figures['leak_reclaimed']:.1f} s")
        if in_images:
            capabilities = int(agent.status()["CapEff"], 16)
            out.line(f"  the agent's capabilities: {capabilities:#x} (CAP_SYS_ADMIN is {CAP_SYS_ADMIN:#x})")
            if check_results:
                check(capabilities == CAP_SYS_ADMIN, "the agent enters pod namespaces with CAP_SYS_ADMIN alone", out)
        started = time.monotonic()
        bed.delete_pod(pod)
        out.line(f"  deleted the init-mode pod {pod.name} (10.0.1.80, {ipv6})")
        for address in ("10.0.1.80", ipv6):
            bed.wait_held(eth1_node1, address, held=False, limit=15)
        figures["deleted_released"] = time.monotonic() - started
        out.line(f"  its addresses went back {figures['deleted_released']:.1f} s after the deletion")
        live = {"10.0.1.81", "10.0.1.83", FLOATING_IP} <= set(bed.addresses(eth1_node1))
        out.line(f"  the running pods' addresses {'stay' if live else 'DID NOT stay'} on eth1")
        out.step("Done; cleaning up")
        return figures
    finally:
        world.cleanup()


def main() -> None:
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    images = True if "--images" in sys.argv else False if "--binaries" in sys.argv else None
    try:
        run(check_results="--check" in sys.argv, images=images)
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
