"""End-to-end: the demo's whole flow, asserting what only it shows (run as root, after the
binaries and images are built; scripts/test does both): the containers the webhook's patch
describes (init, sidecar, native sidecar with its startup probe) and the agent's DaemonSet run
as the kubelet would run them and do their work, and, from the images, under their security
context. How the helper and the agent decide, and how fast, is the Rust tests' and the
benchmarks' (BENCHMARKS.md): nothing here is timed.

The images test runs the containers from the images of scripts/images under podman with
their security context; it skips, saying why, when podman or the images are missing,
except under IPMGR_REQUIRE_TOOLS=1 (scripts/test), where that is a failure."""

import os

import pytest

from demo.containers import unavailable
from demo.demo import IMAGES, run, workspace_version

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root: pods are network namespaces")


def images_missing() -> str | None:
    tag = os.environ.get("IPMGR_IMAGE_TAG", workspace_version())
    return unavailable([f"{IMAGES}/ipmgr-helper:{tag}", f"{IMAGES}/ipmgr-webhook:{tag}"])


@needs_root
def test_the_whole_system_from_the_binaries():
    figures = run(check_results=True, quiet=True, images=False)
    assert not figures["images"]


@needs_root
def test_the_whole_system_from_the_images_under_the_injected_security_context():
    why = images_missing()
    if why and os.environ.get("IPMGR_REQUIRE_TOOLS") == "1":
        pytest.fail(f"IPMGR_REQUIRE_TOOLS=1 but {why}")
    if why:
        pytest.skip(why)
    figures = run(check_results=True, quiet=True, images=True)
    assert figures["images"]
    # EC2 by its real name: the static binary resolves it in scratch (glibc's built-in dns).
    assert ".amazonaws.com:" in figures["ec2_endpoint"]
    for mode in ("sidecar", "native_sidecar"):
        assert figures[mode]["uid"] == "65532"
        assert int(figures[mode]["capabilities"], 16) == 0
    assert figures["sidecar"]["writable"] == []
    assert "/run/ipmgr-helper" in figures["native_sidecar"]["writable"]
