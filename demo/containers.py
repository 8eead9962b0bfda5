"""Kubernetes containers as real containers: podman runs a container spec (the helper the
webhook injects, the webhook's Deployment, the agent's DaemonSet) the way the kubelet would,
with its image, command, arguments, environment and security context, inside a network
namespace of the emulated cluster.

What is mapped, and how (the kubelet's and CRI's meaning on the left):
  securityContext (pod level, then container level)
    runAsUser / runAsGroup          --user UID:GID
    runAsNonRoot                    refused here when the user is 0, as the kubelet does
    readOnlyRootFilesystem          --read-only --read-only-tmpfs=false (podman would
                                    otherwise mount writable /tmp, /var/tmp and /run)
    capabilities.drop / add         --cap-drop / --cap-add
    allowPrivilegeEscalation false  --security-opt no-new-privileges
    seccompProfile RuntimeDefault   podman's default profile (the runtime's default)
  resources.limits memory / cpu     --memory / --cpus (cgroup limits)
  volumes: emptyDir                 a tmpfs of sizeLimit, mode 1777 (emptyDir is 0777)
           secret, hostPath         a bind mount of a directory the caller names
           mountPropagation         HostToContainer -> rslave
  command / args                    --entrypoint / arguments (no command: the image's entrypoint)
  env: value, fieldRef              the value; fieldRef from the `fields` given (the downward
                                    API: spec.nodeName, metadata.name, metadata.namespace,
                                    status.hostIP, the node's address, where its agent listens)
       $(VAR) in a value            expanded as the kubelet does, from the variables before
                                    it (`$$` escapes a `$`; an unknown name stays as written)
  envFrom: configMapRef             the ConfigMap's data, from the `config_maps` given
  automountServiceAccountToken      (only for a pod given a `kubeconfig`: the agent's
                                    DaemonSet, whose pod watch needs the API server) the
                                    kubelet mounts the service account's token, CA and
                                    namespace at SERVICE_ACCOUNT_DIR and sets
                                    KUBERNETES_SERVICE_HOST/PORT, which kube's in-cluster
                                    config reads. The emulated cluster's API server has no
                                    Service and checks no token, so the bed's kubeconfig
                                    stands in for that volume: the file mounted read-only at
                                    SERVICE_ACCOUNT_DIR/kubeconfig and KUBECONFIG naming it
                                    (kube's Config::infer() reads KUBECONFIG before the
                                    in-cluster config); the binaries get the host's path.
                                    Other pods' tokens are not emulated (nothing else in
                                    them calls the API server)
  the pod's DNS server              --dns (resolv.conf, as the kubelet writes it)
  startupProbe exec                 `podman exec` every periodSeconds, failureThreshold times
  readinessProbe httpGet            GET http://POD_IP:PORT/PATH from the node's network
                                    namespace, where the kubelet runs (for a hostNetwork pod
                                    POD_IP is the node's address); polled until it passes

`$PODMAN` is the command with this machine's global flags (scripts/podman.sh sets it).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from kubernetes.utils.quantity import parse_quantity

# The kernel's interfaces every container has, mounted (and masked) by the runtime.
KERNEL_TREES = ("/dev", "/proc", "/sys")
# Where the kubelet mounts a pod's service account token, and where the bed's kubeconfig
# goes in its place.
SERVICE_ACCOUNT_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"
KUBECONFIG_PATH = f"{SERVICE_ACCOUNT_DIR}/kubeconfig"
# `$$` or `$(NAME)` in an env value (Kubernetes' expansion syntax).
REFERENCE = re.compile(r"\$(\$|\(([^)]*)\))")


class ContainerError(RuntimeError):
    """A container spec this runner cannot run, or a podman command that failed."""


def quantity(value: str) -> float:
    """A Kubernetes resource quantity (`64Mi`, `200m`, `1`) as a number (bytes, cores), read
    by the Kubernetes Python client's parser."""
    try:
        return float(parse_quantity(value))
    except ValueError as error:
        raise ContainerError(f"resource quantity {value!r} is not a Kubernetes quantity: {error}") from None


def podman_command() -> list[str]:
    """`$PODMAN` split into words, or plain `podman`."""
    return shlex.split(os.environ.get("PODMAN", "podman"))


def unavailable(images: list[str]) -> str | None:
    """Why podman cannot run `images` here (to skip with), or None when it can."""
    podman = podman_command()
    try:
        subprocess.run(podman + ["version"], capture_output=True, check=True, timeout=30)
    except (OSError, subprocess.CalledProcessError, subprocess.TimeoutExpired) as error:
        return f"podman does not run here ({error}); scripts/podman.sh installs it as root"
    for image in images:
        if subprocess.run(podman + ["image", "exists", image], capture_output=True).returncode != 0:
            return f"image {image} is not built: run scripts/images"
    return None


def security_options(pod_context: dict, container_context: dict) -> list[str]:
    """The podman flags for a pod's and a container's securityContext (the container's
    fields win, as in Kubernetes)."""
    context = {**pod_context, **container_context}
    options: list[str] = []
    user = context.get("runAsUser")
    if context.get("runAsNonRoot") and user in (None, 0):
        raise ContainerError("runAsNonRoot is set but runAsUser is 0 or unset: the kubelet refuses "
                             "to start it (set runAsUser to a non-zero UID)")
    if user is not None:
        options += ["--user", f"{user}:{context.get('runAsGroup', user)}"]
    if context.get("readOnlyRootFilesystem"):
        options += ["--read-only", "--read-only-tmpfs=false"]
    capabilities = context.get("capabilities", {})
    for capability in capabilities.get("drop", []):
        options += ["--cap-drop", capability]
    for capability in capabilities.get("add", []):
        options += ["--cap-add", capability]
    if context.get("allowPrivilegeEscalation") is False:
        options += ["--security-opt", "no-new-privileges"]
    if context.get("privileged"):
        options += ["--privileged"]
    seccomp = context.get("seccompProfile", {}).get("type", "RuntimeDefault")
    if seccomp == "Unconfined":
        options += ["--security-opt", "seccomp=unconfined"]
    elif seccomp != "RuntimeDefault":
        raise ContainerError(f"seccompProfile {seccomp} is not one this runner maps (RuntimeDefault, Unconfined)")
    return options


def volume_options(container: dict, volumes: list[dict], sources: dict[str, str]) -> list[str]:
    """Mounts for the container's volumeMounts; `sources` names the host directory of each
    secret or hostPath volume (hostPath defaults to its own path)."""
    by_name = {volume["name"]: volume for volume in volumes}
    options: list[str] = []
    for mount in container.get("volumeMounts", []):
        volume = by_name.get(mount["name"])
        if volume is None:
            raise ContainerError(f"volumeMount {mount['name']} names no volume of the pod")
        target = mount["mountPath"]
        if "emptyDir" in volume:
            size = volume["emptyDir"].get("sizeLimit")
            spec = f"type=tmpfs,destination={target},tmpfs-mode=1777"
            options += ["--mount", spec + (f",tmpfs-size={int(quantity(size))}" if size else "")]
            continue
        if "hostPath" in volume:
            source = sources.get(mount["name"], volume["hostPath"]["path"])
        elif mount["name"] in sources:
            source = sources[mount["name"]]
        else:
            raise ContainerError(f"volume {mount['name']}: give the host directory that stands in for it")
        spec = f"type=bind,source={source},destination={target}"
        if mount.get("readOnly"):
            spec += ",ro=true"
        if mount.get("mountPropagation") == "HostToContainer":
            spec += ",bind-propagation=rslave"
        options += ["--mount", spec]
    return options


@dataclass
class PodSpec:
    """What the runner needs of a pod: its spec (volumes, pod securityContext), the downward
    API values, the ConfigMaps its containers load and its DNS server."""

    spec: dict
    fields: dict[str, str] = field(default_factory=dict)
    config_maps: dict[str, dict[str, str]] = field(default_factory=dict)
    # The nameserver the kubelet writes into the pod's resolv.conf (CoreDNS for ClusterFirst).
    dns: str | None = None
    # The kubeconfig of the API server, standing in for the service account token (see the
    # module's mappings): for the pods that need the API server.
    kubeconfig: str | None = None

    def mounts_api_access(self) -> bool:
        """Whether its containers get the kubeconfig in place of the service account token."""
        return self.kubeconfig is not None and self.spec.get("automountServiceAccountToken", True)


def expand(value: str, defined: dict[str, str]) -> str:
    """`$(NAME)` references in an env value, expanded as the kubelet does
    (k8s.io/kubernetes third_party/forked/golang/expansion): from the variables defined
    before it, `$$` for a literal `$`, an unknown name left as written."""
    def replace(match: re.Match) -> str:
        if match.group(1) == "$":
            return "$"
        return defined.get(match.group(2), match.group(0))
    return REFERENCE.sub(replace, value)


def environment(container: dict, pod: PodSpec, extra: dict[str, str]) -> dict[str, str]:
    """The container's envFrom ConfigMaps, then its env with the downward API fields filled
    in and `$(NAME)` expanded, then KUBECONFIG when the pod gets the API server's kubeconfig,
    then `extra`."""
    values: dict[str, str] = {}
    for source in container.get("envFrom", []):
        name = source.get("configMapRef", {}).get("name")
        if name not in pod.config_maps:
            raise ContainerError(f"envFrom {source}: give the data of ConfigMap {name}")
        values |= pod.config_maps[name]
    for variable in container.get("env", []):
        if "value" in variable:
            values[variable["name"]] = expand(variable["value"], values)
        else:
            path = variable["valueFrom"]["fieldRef"]["fieldPath"]
            if path not in pod.fields:
                raise ContainerError(f"env {variable['name']}: no value for the field {path}")
            values[variable["name"]] = pod.fields[path]
    if pod.mounts_api_access():
        values["KUBECONFIG"] = KUBECONFIG_PATH
    return values | extra


def run_argv(container: dict, pod: PodSpec, *, name: str, network: str, extra_env: dict[str, str] | None = None,
             sources: dict[str, str] | None = None, detach: bool = False) -> list[str]:
    """`podman run` for one container of `pod`, in `network` (`ns:/run/netns/NAME`, `host`)."""
    if "image" not in container:
        raise ContainerError(f"container {container.get('name')}: needs an image")
    resources = container.get("resources", {}).get("limits", {})
    argv = podman_command() + ["run", "--name", name, "--network", network, "--pull", "never"]
    argv += ["--detach"] if detach else ["--rm"]
    argv += security_options(pod.spec.get("securityContext", {}), container.get("securityContext", {}))
    if "memory" in resources:
        argv += ["--memory", str(int(quantity(resources["memory"])))]
    if "cpu" in resources:
        argv += ["--cpus", str(quantity(resources["cpu"]))]
    if pod.dns:
        argv += ["--dns", pod.dns]
    argv += volume_options(container, pod.spec.get("volumes", []), sources or {})
    if pod.mounts_api_access():
        argv += ["--mount", f"type=bind,source={pod.kubeconfig},destination={KUBECONFIG_PATH},ro=true"]
    for key, value in environment(container, pod, extra_env or {}).items():
        argv += ["--env", f"{key}={value}"]
    command = container.get("command", [])
    if command:
        argv += ["--entrypoint", json.dumps(command[:1])]
    return argv + [container["image"]] + command[1:] + container.get("args", [])


class Started:
    """A started container or process: what the demo asks of both."""

    name: str

    def pid(self) -> int:
        """The first process, as the host sees it."""
        raise NotImplementedError

    def exec(self, command: list[str]) -> int:
        """`command` beside it (an exec probe), its exit status."""
        raise NotImplementedError

    def stop(self, grace_seconds: int) -> int:
        """SIGTERM, then SIGKILL after `grace_seconds` (terminationGracePeriodSeconds); the
        exit status."""
        raise NotImplementedError

    def logs(self) -> str:
        """What it wrote to stderr."""
        raise NotImplementedError

    def remove(self) -> None:
        """Gone, whatever its state."""
        raise NotImplementedError

    def status(self) -> dict[str, str]:
        """/proc/PID/status of the first process (Uid, CapEff, NoNewPrivs, Seccomp, VmHWM,
        VmRSS ...), read from the host."""
        lines = Path(f"/proc/{self.pid()}/status").read_text().splitlines()
        return dict(line.split(":\t", 1) for line in lines if ":\t" in line)

    def environ(self) -> dict[str, str]:
        """The environment of the first process (/proc/PID/environ), read from the host."""
        raw = Path(f"/proc/{self.pid()}/environ").read_bytes().decode(errors="replace")
        return dict(entry.split("=", 1) for entry in raw.split("\0") if "=" in entry)

    def writable_mounts(self) -> list[str]:
        """Mount points the first process sees read-write, from /proc/PID/mountinfo, leaving
        out the kernel's interfaces (/dev, /proc, /sys and below)."""
        writable = []
        for line in Path(f"/proc/{self.pid()}/mountinfo").read_text().splitlines():
            mount_point, options = line.split()[4:6]
            kernel = any(mount_point == tree or mount_point.startswith(tree + "/") for tree in KERNEL_TREES)
            if "rw" in options.split(",") and not kernel:
                writable.append(mount_point)
        return writable

    def startup_probe(self, probe: dict) -> float:
        """Runs an exec startupProbe as the kubelet does; the seconds until it passed."""
        started = time.monotonic()
        for _ in range(probe.get("failureThreshold", 3)):
            if self.exec(probe["exec"]["command"]) == 0:
                return time.monotonic() - started
            time.sleep(probe.get("periodSeconds", 10))
        raise ContainerError(f"{self.name}: the startup probe {probe['exec']['command']} never passed")


@dataclass
class Running(Started):
    """A detached container."""

    name: str

    def pid(self) -> int:
        return int(podman("inspect", "--format", "{{.State.Pid}}", self.name).strip())

    def exec(self, command: list[str]) -> int:
        return subprocess.run(podman_command() + ["exec", self.name] + command, capture_output=True).returncode

    def stop(self, grace_seconds: int) -> int:
        podman("stop", "--time", str(grace_seconds), self.name)
        return int(podman("inspect", "--format", "{{.State.ExitCode}}", self.name).strip())

    def logs(self) -> str:
        return subprocess.run(podman_command() + ["logs", self.name], capture_output=True, text=True).stderr

    def remove(self) -> None:
        subprocess.run(podman_command() + ["rm", "--force", "--time", "0", self.name], capture_output=True)


def http_get(netns: str, url: str, timeout: float = 2.0) -> int | None:
    """The status of GET `url` from network namespace `netns`, None when nothing answers."""
    script = ("import sys, urllib.request, urllib.error\n"
              "try:\n    print(urllib.request.urlopen(sys.argv[1], timeout=float(sys.argv[2])).status)\n"
              "except urllib.error.HTTPError as error:\n    print(error.code)\n"
              "except Exception:\n    print(0)\n")
    result = subprocess.run(["ip", "netns", "exec", netns, sys.executable, "-c", script, url, str(timeout)],
                            capture_output=True, text=True)
    code = int(result.stdout.strip() or 0)
    return code or None


def readiness_probe(container: dict, netns: str, pod_ip: str, limit: float, every: float = 0.1) -> float:
    """Polls the container's httpGet readinessProbe as the kubelet sends it (to the pod's IP,
    from the node's network namespace `netns`) until it answers 200-399; the seconds it
    took. Every `every` s rather than every periodSeconds, not to wait out a period."""
    probe = container["readinessProbe"]["httpGet"]
    port = probe["port"]
    if isinstance(port, str):
        port = next(entry["containerPort"] for entry in container.get("ports", []) if entry.get("name") == port)
    url = f"http://{pod_ip}:{port}{probe.get('path', '/')}"
    started = time.monotonic()
    while True:
        status = http_get(netns, url)
        if status is not None and 200 <= status < 400:
            return time.monotonic() - started
        if time.monotonic() - started > limit:
            raise ContainerError(f"{url} answered {status or 'nothing'} for {limit} s")
        time.sleep(every)


def start(argv: list[str], name: str) -> Running:
    """Runs a `run_argv(..., detach=True)` command."""
    result = subprocess.run(argv, capture_output=True, text=True)
    if result.returncode != 0:
        raise ContainerError(f"podman run {name}: {result.stderr.strip()}")
    return Running(name)


def podman(*args: str) -> str:
    result = subprocess.run(podman_command() + list(args), capture_output=True, text=True)
    if result.returncode != 0:
        raise ContainerError(f"podman {' '.join(args)}: {result.stderr.strip()}")
    return result.stdout
