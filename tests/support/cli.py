"""``kvmpy``'s main() called in the test process, as a user's command line would be, or
``kvmpy run`` in a process of its own (a process loads one vendor module)."""

import subprocess
import sys

from kvmpy.vmm.cli import main


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
