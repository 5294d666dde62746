"""``kvmpy``'s main() called in the test process, as a user's command line would be, or
``kvmpy run`` in a process of its own (a process loads one vendor module)."""

import subprocess
import sys

import pytest

from kvmpy.vmm.cli import main

#: ``kvmpy run`` options for kvmpy under each vendor module and MMU mode (a process loads
#: one vendor: each run is a process of its own), and for the host's /dev/kvm
RUN_BACKENDS = [pytest.param(("--vendor", vendor, "--mmu", mmu), id=f"{vendor}-{mmu}")
                for vendor in ("vmx", "svm") for mmu in ("tdp", "shadow")]
RUN_BACKENDS.append(pytest.param(("--accel", "host"), id="host", marks=pytest.mark.host))


def run_main(capsys, *argv):
    """(exit status, stdout, stderr) of ``kvmpy argv``, whether main returns or exits;
    never a traceback."""
    try:
        status = main(list(argv))
    except SystemExit as e:
        status = e.code
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return status, out, err


def kvmpy_run(*argv, timeout=120):
    """(exit status, stdout, stderr) of ``kvmpy run argv`` in a new process."""
    proc = subprocess.run([sys.executable, "-m", "kvmpy.vmm.cli", "run", *argv],
                          capture_output=True, text=True, timeout=timeout)
    return proc.returncode, proc.stdout, proc.stderr
