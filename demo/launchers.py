"""How the demo starts the project's containers: as their images under podman, the way a
cluster runs them (`Images`), or as the built binaries in the same network namespaces
(`Binaries`: no podman needed, no security context either). Both start a container from
its Kubernetes spec: the webhook's Deployment, the agent's DaemonSet, the helper the
webhook injects."""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from demo.containers import (KUBECONFIG_PATH, ContainerError, PodSpec, Running, Started, environment, run_argv,
                             start)
from testenv.client import Place


@dataclass
class Process(Started):
    """A container's program started as a host process."""

    name: str
    process: subprocess.Popen
    probe_argv: Callable[[list[str]], list[str]]
    stderr: Path

    def pid(self) -> int:
        return self.process.pid

    def exec(self, command: list[str]) -> int:
        return subprocess.run(self.probe_argv(command), capture_output=True).returncode

    def stop(self, grace_seconds: int) -> int:
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=grace_seconds)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        code = self.process.returncode
        return 128 - code if code < 0 else code

    def logs(self) -> str:
        return self.stderr.read_text()

    def remove(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


@dataclass
class Launcher:
    """Starts containers; remembers them so that `remove_all` leaves nothing behind."""

    started: list[Started] = field(default_factory=list)

    def run(self, container: dict, pod: PodSpec, place: Place | None, name: str,
            extra_env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        """Runs a container to its end (an init container)."""
        raise NotImplementedError

    def start(self, container: dict, pod: PodSpec, place: Place | None, name: str, *,
              extra_env: dict[str, str] | None = None, sources: dict[str, str] | None = None) -> Started:
        """Starts a long-running container. `place` is the pod's network namespace (None:
        the host's, loopback only); `sources` the host directories of its secret and
        hostPath volumes."""
        raise NotImplementedError

    def remove_all(self) -> None:
        for started in reversed(self.started):
            started.remove()


@dataclass
class Images(Launcher):
    """podman with the images of scripts/images, under each container's security context."""

    def run(self, container, pod, place, name, extra_env=None):
        argv = run_argv(container, pod, name=name, network=self._network(place),
                        extra_env=self._env(place, extra_env))
        return subprocess.run(argv, capture_output=True, text=True)

    def start(self, container, pod, place, name, *, extra_env=None, sources=None):
        argv = run_argv(container, pod, name=name, network=self._network(place),
                        extra_env=self._env(place, extra_env), sources=sources, detach=True)
        running = Running(name)
        self.started.append(running)
        start(argv, name)
        return running

    @staticmethod
    def _network(place: Place | None) -> str:
        return f"ns:/run/netns/{place.netns}" if place else "host"

    @staticmethod
    def _env(place: Place | None, extra_env: dict[str, str] | None) -> dict[str, str]:
        return (place.env if place else {}) | (extra_env or {})


@dataclass
class Binaries(Launcher):
    """The built binaries as root processes. A path under one of the container's volume
    mounts, in its environment, becomes the host directory standing in for that volume (a
    fresh one under `workdir` for an emptyDir), and KUBECONFIG the bed's kubeconfig."""

    programs: dict[str, Path] = field(default_factory=dict)
    workdir: Path = Path("/tmp")

    def run(self, container, pod, place, name, extra_env=None):
        variables = self._environment(container, pod, place, name, extra_env, {})
        argv = self._program_argv(self._argv(container), place, variables)
        return subprocess.run(argv, capture_output=True, text=True, env=None if place else variables)

    def start(self, container, pod, place, name, *, extra_env=None, sources=None):
        variables = self._environment(container, pod, place, name, extra_env, sources or {})
        argv = self._program_argv(self._argv(container), place, variables)
        stderr = self.workdir / f"{name}.stderr"
        with stderr.open("w") as log:
            process = subprocess.Popen(argv, env=None if place else variables, stdin=subprocess.DEVNULL,
                                       stdout=subprocess.DEVNULL, stderr=log)

        def probe_argv(command: list[str]) -> list[str]:
            return self._program_argv(command, place, variables)

        started = Process(name, process, probe_argv, stderr)
        self.started.append(started)
        return started

    @staticmethod
    def _argv(container: dict) -> list[str]:
        """command + args; without a command, the image's entrypoint: our images' entrypoint
        is the program the image is named after."""
        command = container.get("command") or [container["image"].rsplit("/", 1)[-1].split(":")[0]]
        return command + container.get("args", [])

    def _environment(self, container: dict, pod: PodSpec, place: Place | None, name: str,
                     extra_env: dict[str, str] | None, sources: dict[str, str]) -> dict[str, str]:
        """The container's environment, paths under its volume mounts moved to the host."""
        variables = environment(container, pod, (place.env if place else {}) | (extra_env or {}))
        directories = self._volume_directories(container, pod, name, sources)
        for key, value in variables.items():
            for mount_path, directory in directories.items():
                if value == mount_path or value.startswith(mount_path.rstrip("/") + "/"):
                    variables[key] = directory + value[len(mount_path):]
        return variables

    def _program_argv(self, argv: list[str], place: Place | None, variables: dict[str, str]) -> list[str]:
        """`argv` with its program replaced by the built binary, in `place` when given (on
        the host the caller passes `variables` as the environment)."""
        program = self.programs.get(os.path.basename(argv[0]))
        if program is None:
            raise ContainerError(f"{argv[0]}: not one of the demo's programs ({', '.join(self.programs)})")
        argv = [str(program)] + argv[1:]
        return place.exec_argv(argv, variables) if place else argv

    def _volume_directories(self, container: dict, pod: PodSpec, name: str, sources: dict[str, str]) -> dict[str, str]:
        volumes = {volume["name"]: volume for volume in pod.spec.get("volumes", [])}
        directories = {}
        for mount in container.get("volumeMounts", []):
            volume = volumes.get(mount["name"], {})
            if mount["name"] in sources:
                directories[mount["mountPath"]] = sources[mount["name"]]
            elif "emptyDir" in volume:
                directory = self.workdir / name / mount["name"]
                directory.mkdir(parents=True, exist_ok=True)
                directories[mount["mountPath"]] = str(directory)
            elif "hostPath" in volume:
                directories[mount["mountPath"]] = volume["hostPath"]["path"]
            else:
                raise ContainerError(f"volume {mount['name']}: give the host directory that stands in for it")
        if pod.mounts_api_access():
            # The file podman would mount there (containers.py: automountServiceAccountToken).
            directories[KUBECONFIG_PATH] = pod.kubeconfig
        return directories

