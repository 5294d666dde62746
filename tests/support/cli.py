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


def kvmpy_argv(*argv):
    """The command line of ``kvmpy run argv`` in a new process of this interpreter."""
    return [sys.executable, "-m", "kvmpy.vmm.cli", "run", *argv]


def kvmpy_run(*argv, timeout=120, input=None, env=None):
    """(exit status, stdout, stderr) of ``kvmpy run argv`` in a new process, ``input`` (str)
    on its stdin (the guest's COM1 input), else none (/dev/null: never the terminal the
    tests run from); ``env`` replaces the environment."""
    proc = subprocess.run(kvmpy_argv(*argv), capture_output=True, text=True, timeout=timeout,
                          input=input, stdin=None if input is not None else subprocess.DEVNULL,
                          env=env)
    return proc.returncode, proc.stdout, proc.stderr


def kvmpy_interact(*argv, wait_for, send, timeout=120):
    """(exit status, stdout, stderr) of ``kvmpy run argv`` given ``send`` (bytes) on stdin
    once its stdout has shown ``wait_for`` (bytes): the guest is ready for input.  Stdin
    then reaches EOF."""
    proc = subprocess.Popen(kvmpy_argv(*argv), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    try:
        out = b""
        while wait_for not in out:
            byte = proc.stdout.read(1)
            if not byte:
                break
            out += byte
        if wait_for in out:
            proc.stdin.write(send)
        rest, err = proc.communicate(timeout=timeout)     # closes stdin: EOF
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return proc.returncode, (out + rest).decode(), err.decode()
