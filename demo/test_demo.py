"""End-to-end: the demo's whole flow with every claim asserted (run as root, after the
binaries are built; scripts/test does both)."""

import os

import pytest

from demo.demo import run


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root: pods are network namespaces")
def test_the_whole_system_on_one_machine():
    figures = run(check_results=True, quiet=True)
    assert figures["init_seconds"] < 10
    assert set(figures["floating_ip"]) == {"appears on A", "fails over to B", "fails back to A"}
    assert all(seconds < 2.0 for seconds in figures["floating_ip"].values())
    assert figures["deleted_released"] < 4.0
