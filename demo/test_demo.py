"""End-to-end: the demo's whole flow, asserting what only it shows (run as root, after the
binaries and images are built; scripts/test does both): the node agents' DaemonSet and the
containers the webhook's patch describes (init, sidecar, native sidecar with its startup
probe) run as the kubelet would run them and do their work, with the agent backend (the
default) without AWS credentials or instance metadata in the pods, and, from the images,
under their security context. How the helper and the agent decide, and how fast, is the
Rust tests' and the benchmarks' (BENCHMARKS.md): nothing here is timed.

The images test runs the containers from the images of scripts/images under podman with
their security context; it skips, saying why, when podman or the images are missing,
except under IPMGR_REQUIRE_TOOLS=1 (scripts/test), where that is a failure. The direct
backend runs once, from the binaries."""

import os

import pytest

from demo.containers import unavailable
from demo.demo import IMAGES, run, workspace_version

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root: pods are network namespaces")


def images_missing() -> str | None:
    tag = os.environ.get("IPMGR_IMAGE_TAG", workspace_version())
    return unavailable([f"{IMAGES}/ipmgr-{name}:{tag}" for name in ("helper", "webhook", "pod")])


def assert_agent_backend(figures: dict) -> None:
    """The agent backend's promises, as the run recorded them."""
    assert figures["backend"] == "agent"
    # Every helper (init, both sidecars, the native sidecar) without AWS settings of any kind.
    assert len(figures["helper_env"]) == 4
    for helper, variables in figures["helper_env"].items():
        assert "IPMGR_AGENT_URL" in variables and "HOST_IP" in variables, helper
    assert figures["helper_aws_settings"] == {helper: [] for helper in figures["helper_env"]}
    # Instance metadata: never from a pod's address, only from the nodes' (the agents).
    assert figures["metadata_requests"]["pods"] == 0
    assert all(count > 0 for count in figures["metadata_requests"]["nodes"].values())
    # SIGTERM: the sidecar exits 0 and gives nothing back; the agent does, once the pod is gone.
    assert figures["sigterm"]["exit_code"] == 0
    assert figures["sigterm"]["held_after_exit"]
    assert figures["sigterm"]["released_after_deletion"] is not None
    assert figures["deleted_released"] is not None


@needs_root
def test_the_whole_system_from_the_binaries():
    figures = run(check_results=True, quiet=True, images=False)
    assert not figures["images"]
    assert_agent_backend(figures)


@needs_root
def test_the_direct_backend_from_the_binaries():
    figures = run(check_results=True, quiet=True, images=False, backend="direct")
    assert figures["backend"] == "direct"
    # The helper calls EC2 and instance metadata itself, and gives back on SIGTERM.
    assert all(settings for settings in figures["helper_aws_settings"].values())
    assert figures["metadata_requests"]["pods"] > 0
    assert figures["sigterm"] == {"exit_code": 0, "held_after_exit": False}


@needs_root
def test_the_whole_system_from_the_images_under_the_injected_security_context():
    why = images_missing()
    if why and os.environ.get("IPMGR_REQUIRE_TOOLS") == "1":
        pytest.fail(f"IPMGR_REQUIRE_TOOLS=1 but {why}")
    if why:
        pytest.skip(why)
    figures = run(check_results=True, quiet=True, images=True)
    assert figures["images"]
    assert_agent_backend(figures)
    # EC2 by its real name: the static binary resolves it in scratch (glibc's built-in dns).
    assert ".amazonaws.com:" in figures["ec2_endpoint"]
    for mode in ("sidecar", "native_sidecar"):
        assert figures[mode]["uid"] == "65532"
        assert int(figures[mode]["capabilities"], 16) == 0
    assert figures["sidecar"]["writable"] == []
    assert "/run/ipmgr-helper" in figures["native_sidecar"]["writable"]
