"""Scenarios run on kvmpy under each vendor module and MMU mode.

A process loads one vendor module (as the kernel does), so kvmpy's runs under vmx and svm
are each a child process's: ``soft_results(module, vendor, mmu)`` imports ``module`` in a
child with KVMPY_VENDOR and the MMU mode set, runs every function of its ``SCENARIOS`` dict
on ``kvmpy.syscalls`` and returns their JSON results (cached per module, vendor and mode).
"""

import json
import os
import pathlib
import subprocess
import sys

REPO = pathlib.Path(__file__).resolve().parents[2]
VENDORS_MMUS = [(v, m) for v in ("vmx", "svm") for m in ("tdp", "shadow")]

_CHILD = """
import importlib, json, sys
sys.path.insert(0, sys.argv[1])
from kvmpy import syscalls
from kvmpy.kernel.x86 import params
params.set(ept=sys.argv[3] == "tdp")
scenarios = importlib.import_module(sys.argv[2]).SCENARIOS
print(json.dumps({name: run(syscalls) for name, run in scenarios.items()}))
"""
_cache: dict = {}


def soft_results(module: str, vendor: str, mmu: str, timeout: int = 600) -> dict:
    key = (module, vendor, mmu)
    if key not in _cache:
        proc = subprocess.run([sys.executable, "-c", _CHILD, str(REPO), module, mmu], capture_output=True,
                              text=True, env=dict(os.environ, KVMPY_VENDOR=vendor), timeout=timeout)
        assert proc.returncode == 0, proc.stderr[-3000:]
        _cache[key] = json.loads(proc.stdout)
    return _cache[key]


def jsonable(result):
    """A result as it comes back from a child (tuples become lists)."""
    return json.loads(json.dumps(result))


def scenario_tests(module: str, scenarios: dict, expected: dict, host_skip=None, host_expected=None):
    """The two tests of a scenario module: each scenario on the host's /dev/kvm and on kvmpy
    under every vendor module and MMU mode, against ``expected`` (the host's answers).  The
    module binds them to its own ``test_*`` names for pytest to collect.  ``host_skip`` names
    the scenarios the host cannot run ({name: why}), which are skipped there;
    ``host_expected`` ({name: function of no arguments}) derives the host's answer where it
    depends on the host's CPU or kernel (what its KVM_GET_SUPPORTED_CPUID reports, uname)."""
    import pytest

    from tests.support import rawvmm

    host_skip, host_expected = host_skip or {}, host_expected or {}
    host_params = [pytest.param(n, marks=[pytest.mark.skip(reason=host_skip[n])] if n in host_skip else [])
                   for n in sorted(scenarios)]

    @pytest.mark.host
    @pytest.mark.parametrize("name", host_params)
    def on_the_host(name):
        want = host_expected[name]() if name in host_expected else expected[name]
        got, want = jsonable(scenarios[name](rawvmm.HOST)), jsonable(want)
        assert got == want, (got, want)

    @pytest.mark.parametrize("name", sorted(scenarios))
    @pytest.mark.parametrize("vendor,mmu", VENDORS_MMUS)
    def on_kvmpy(name, vendor, mmu):
        got, want = soft_results(module, vendor, mmu)[name], jsonable(expected[name])
        assert got == want, (got, want)

    return on_the_host, on_kvmpy
