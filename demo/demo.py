#!/usr/bin/env python3
"""multus-ipmgr on one machine: the webhook admits a Multus pod, its injected helper makes
the pod's IPs routable on the emulated node's ENIs, and a floating IP moves between pods.

Needs root (network namespaces), the built `ipmgr-webhook` and `ipmgr-helper`, and the
Python packages of tests/requirements.txt (for the AWS stand-in). `scripts/demo` provides
all of that; `run(check=True)` is the end-to-end test (demo/test_demo.py).
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from testenv.client import Bed, Pod  # noqa: E402

SERVICE_NAME = "ipmgr-webhook.multus-ipmgr.svc"
FLOATING_IP = "10.0.1.100"
AGENT_GRACE_SECONDS = 2


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


def sh(*args: str) -> str:
    result = subprocess.run(args, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(args)}: {result.stderr.strip()}")
    return result.stdout


@dataclass
class World:
    """Everything the demo starts, so that it can all be cleaned up (the bed removes its own
    namespaces when it stops)."""

    processes: list[subprocess.Popen] = field(default_factory=list)
    beds: list[Bed] = field(default_factory=list)
    workdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="ipmgr-demo-")))

    def cleanup(self) -> None:
        # A second Ctrl-C must not leave namespaces behind.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        for process in reversed(self.processes):
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    process.kill()
        for bed in self.beds:
            bed.close()
        shutil.rmtree(self.workdir, ignore_errors=True)


class Webhook:
    """`ipmgr-webhook serve` on loopback with a certificate from its own `certs` command."""

    def __init__(self, world: World, binary: Path):
        certs = world.workdir / "tls"
        sh(str(binary), "certs", "--out-dir", str(certs), "--log-format", "text")
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.process = subprocess.Popen(
            [str(binary), "serve", "--listen", f"127.0.0.1:{self.port}", "--tls-cert", str(certs / "tls.crt"),
             "--tls-key", str(certs / "tls.key"), "--helper-image", "registry.example.com/ipmgr-helper:demo",
             "--log", "warn"], stdin=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        world.processes.append(self.process)
        self.context = ssl.create_default_context(cafile=str(certs / "ca.crt"))
        deadline = time.monotonic() + 10
        while True:
            try:
                if self.request("GET", "/readyz")[0] == 200:
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise
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
        return apply_patch(pod, patch), patch


def apply_patch(document: dict, patch: list) -> dict:
    """RFC 6902 `add` operations, the only kind the webhook sends."""
    document = json.loads(json.dumps(document))
    for operation in patch:
        if operation["op"] != "add":
            raise ValueError(f"unexpected patch operation {operation}")
        *parents, last = [part.replace("~1", "/").replace("~0", "~") for part in operation["path"].split("/")[1:]]
        target = document
        for part in parents:
            target = target[int(part)] if isinstance(target, list) else target[part]
        if isinstance(target, list):
            target.insert(len(target) if last == "-" else int(last), operation["value"])
        else:
            target[last] = operation["value"]
    return document


def sample_pod(mode: str) -> dict:
    """The pod the sample Deployment's ReplicaSet would create."""
    deployment = yaml.safe_load((ROOT / f"manifests/samples/busybox-deployment-{mode}.yaml").read_text())
    template = deployment["spec"]["template"]
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": dict(template["metadata"], generateName=f"{deployment['metadata']['name']}-",
                             namespace=deployment["metadata"]["namespace"]),
            "spec": template["spec"]}


def helper_command(container: dict, pod: Pod, helper: Path) -> list[str]:
    """The injected container's command, arguments and environment, as the kubelet would run
    them (downward API filled in), inside the pod with the bed's AWS endpoints."""
    fields = {"spec.nodeName": pod.node, "metadata.name": pod.name, "metadata.namespace": "multus"}
    environment = {}
    for variable in container.get("env", []):
        if "value" in variable:
            environment[variable["name"]] = variable["value"]
        else:
            environment[variable["name"]] = fields[variable["valueFrom"]["fieldRef"]["fieldPath"]]
    environment.pop("IPMGR_READY_FILE", None)  # the emptyDir is not there outside a cluster
    return pod.exec_argv([str(helper)] + container["command"][1:] + container["args"], environment)


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


def run(check_results: bool = False, quiet: bool = False) -> dict:
    """The whole demo; with `check_results`, every claim it prints is asserted too.
    Returns the measured figures."""
    out = Output(quiet)
    if os.geteuid() != 0:
        raise SystemExit("the demo creates network namespaces: run it as root (sudo scripts/demo)")
    webhook_binary = Path(os.environ.get("IPMGR_WEBHOOK_BIN", ROOT / "target/debug/ipmgr-webhook"))
    helper_binary = Path(os.environ.get("IPMGR_HELPER_BIN", ROOT / "target/debug/ipmgr-helper"))
    for binary in (webhook_binary, helper_binary):
        if not binary.exists():
            raise SystemExit(f"{binary} is missing: build it first (scripts/demo does)")
    world = World()
    figures: dict = {}
    try:
        out.step("The emulated cluster: EC2 (moto + our rules), IMDSv2 per node, pods as network namespaces")
        bed = Bed("how-to")
        world.beds.append(bed)
        node1, node2 = bed.topology["nodes"]["node1"]["enis"], bed.topology["nodes"]["node2"]["enis"]
        ipv6 = f"{bed.ipv6_prefix()}80"
        # node2 already holds one of the pod's addresses (a pod that ran there before).
        bed.control("POST", "assign", {"eni": node2[1]["id"], "ipv4": ["10.0.1.80"]})
        out.line(f"  testenv/topologies/how-to.json: node1 has {len(node1)} ENIs, node2 {len(node2)}; "
                 "node2 holds 10.0.1.80")

        out.step("ipmgr-webhook serve, with a certificate from ipmgr-webhook certs")
        webhook = Webhook(world, webhook_binary)
        out.line(f"  https://127.0.0.1:{webhook.port} as {SERVICE_NAME}, ready")

        out.step("Admitting the sample busybox pods as the API server would")
        admitted = {}
        for mode in ("init", "sidecar", "native-sidecar"):
            patched, patch = webhook.admit(sample_pod(mode))
            admitted[mode] = patched
            spec = patched["spec"]
            helper = next(c for c in spec.get("initContainers", []) + spec["containers"] if c["name"] == "aws-ip-mgmt")
            where = "initContainers[0]" if spec.get("initContainers", [{}])[0].get("name") == "aws-ip-mgmt" else "containers[-1]"
            extra = ", restartPolicy Always + startupProbe" if helper.get("restartPolicy") == "Always" else ""
            out.line(f"  {mode:<15} {len(patch)} patch ops: {where} aws-ip-mgmt {' '.join(helper['args'])}{extra}")
            if check_results:
                check(patched["metadata"]["annotations"]["multus-ipmgr.io/status"] == mode, f"{mode}: injected", out)
        again, patch = webhook.admit(admitted["init"])
        if check_results:
            check(patch == [], "admitting an injected pod again changes nothing", out)

        out.step("ENIs before")
        for row in eni_table(bed):
            out.line(row)

        out.step("Running the init-mode pod: net1 (ipvlan on eth1 -> macvlan with eth1's MAC), 10.0.1.80 + " + ipv6)
        pod = bed.pod("node1", "busybox-init-1", [{"name": "net1", "eni": "eth1", "addresses": ["10.0.1.80/24", f"{ipv6}/64"]}])
        container = admitted["init"]["spec"]["initContainers"][0]
        bed.control("POST", "calls/reset")
        started = time.monotonic()
        result = subprocess.run(helper_command(container, pod, helper_binary), capture_output=True, text=True)
        figures["init_seconds"] = time.monotonic() - started
        if result.returncode != 0:
            raise RuntimeError(f"the injected init container failed: {result.stderr.strip().splitlines()[-1:]}")
        calls = bed.control("GET", "calls")
        out.line(f"  init container exited 0 in {figures['init_seconds'] * 1000:.0f} ms; EC2 calls: "
                 + ", ".join(f"{action} {count}" for action, count in sorted(calls.items())))

        out.step("ENIs after")
        for row in eni_table(bed):
            out.line(row)
        if check_results:
            eth1, eth2 = node1[1]["id"], node1[2]["id"]
            check({"10.0.1.80", ipv6} <= set(bed.addresses(eth1)), "every address is on the ENI whose MAC net1 carries (eth1)", out)
            check("10.0.1.80" not in bed.addresses(eth2), "not on eth2, the other ENI of the same subnet", out)
            check("10.0.1.80" not in bed.addresses(node2[1]["id"]), "the address node2 held moved", out)

        bed.control("POST", "calls/reset")
        result = subprocess.run(helper_command(container, pod, helper_binary), capture_output=True, text=True)
        second_calls = bed.control("GET", "calls")
        out.line(f"  restarted pod: init exited {result.returncode}, EC2 calls: {sum(second_calls.values())}")
        if check_results:
            check(result.returncode == 0 and second_calls == {}, "a second run makes no EC2 call", out)

        out.step(f"Sidecar mode: floating IP {FLOATING_IP} between pod A (node1) and pod B (node2)")
        sidecar_container = admitted["sidecar"]["spec"]["containers"][-1]
        pod_a = bed.pod("node1", "busybox-sidecar-a", [{"name": "net1", "eni": "eth1", "addresses": ["10.0.1.81/24"]}])
        pod_b = bed.pod("node2", "busybox-sidecar-b", [{"name": "net1", "eni": "eth1", "addresses": ["10.0.1.82/24"]}])
        for member in (pod_a, pod_b):
            world.processes.append(subprocess.Popen(helper_command(sidecar_container, member, helper_binary),
                                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        eni_a, eni_b = node1[1]["id"], node2[1]["id"]
        bed.wait_held(eni_a, "10.0.1.81")
        bed.wait_held(eni_b, "10.0.1.82")
        timeline = []
        bed.add_address(pod_a, "net1", f"{FLOATING_IP}/24")
        timeline.append(("appears on A", bed.wait_held(eni_a, FLOATING_IP)))
        bed.remove_address(pod_a, "net1", f"{FLOATING_IP}/24")
        bed.add_address(pod_b, "net1", f"{FLOATING_IP}/24")
        timeline.append(("fails over to B", bed.wait_held(eni_b, FLOATING_IP)))
        bed.remove_address(pod_b, "net1", f"{FLOATING_IP}/24")
        bed.add_address(pod_a, "net1", f"{FLOATING_IP}/24")
        timeline.append(("fails back to A", bed.wait_held(eni_a, FLOATING_IP)))
        for event, seconds in timeline:
            out.line(f"  {event:<16} on its node's ENI after {seconds * 1000:5.0f} ms")
        figures["floating_ip"] = dict(timeline)
        if check_results:
            for event, seconds in timeline[1:]:
                check(seconds < 2.0, f"{event} in under 2 s ({seconds * 1000:.0f} ms)", out)

        out.step(f"The node agent on node1 (grace {AGENT_GRACE_SECONDS} s): addresses of pods that are gone go back")
        leaked = "10.0.1.90"
        bed.control("POST", "assign", {"eni": node1[1]["id"], "ipv4": [leaked]})
        out.line(f"  {leaked} is on eth1 and in no pod: a pod force-deleted before the agent ran left it")
        node = bed.node("node1")
        agent = subprocess.Popen(node.exec_argv([str(helper_binary), "agent", "--netns-dir", node.netns_dir,
                                                 "--release-grace-seconds", str(AGENT_GRACE_SECONDS),
                                                 "--metrics-listen", "127.0.0.1:9471"]),
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        world.processes.append(agent)
        figures["leak_reclaimed"] = bed.wait_held(node1[1]["id"], leaked, held=False, limit=15)
        out.line(f"  reclaimed after {figures['leak_reclaimed']:.1f} s")
        started = time.monotonic()
        bed.delete_pod(pod)
        out.line(f"  deleted the init-mode pod {pod.name} (10.0.1.80, {ipv6})")
        for address in ("10.0.1.80", ipv6):
            bed.wait_held(node1[1]["id"], address, held=False, limit=15)
        figures["deleted_released"] = time.monotonic() - started
        out.line(f"  its addresses went back {figures['deleted_released']:.1f} s after the deletion")
        if check_results:
            check(figures["deleted_released"] < AGENT_GRACE_SECONDS + 2,
                  f"released within the grace period + 2 s ({figures['deleted_released']:.1f} s)", out)
            live = set(bed.addresses(node1[1]["id"]))
            check({"10.0.1.81", FLOATING_IP} <= live, "the running pods' addresses stay", out)
        out.step("Done; cleaning up")
        return figures
    finally:
        world.cleanup()


def main() -> None:
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        run(check_results="--check" in sys.argv)
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
