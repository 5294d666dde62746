"""When a test is skipped, and what its exit status means: the rules of the suite's own
``run_tests.sh`` (``scripts/runtime.bash``'s ``run``, ``scripts/arch-run.bash``'s
``run_test`` and ``scripts/vmm.bash``'s ``qemu_fixup_return_code``), so that the runner's
PASS/FAIL/SKIP are the suite's.
"""

import os
import re
import signal
import subprocess
from dataclasses import dataclass
from typing import Optional

from kvmpy.vmm.unit_tests.config import ConfigError

PASS, FAIL, SKIP = "PASS", "FAIL", "SKIP"
#: the file name the suite gives a VMM to learn whether it fails before loading the kernel
NO_FILE = "_NO_FILE_4Uhere_"
_LOAD_ERROR = re.compile(r"[Cc]ould not (load|open) kernel|error loading|failed to load")
TIMEOUT_STATUS, SKIP_STATUS = 124, 77
DEFAULT_TIMEOUT = "90s"


def _read_file(path):
    """A ``check`` path's content without its newline; None if it cannot be read."""
    try:
        with open(path) as f:
            return f.read().rstrip("\n")
    except OSError:
        return None


@dataclass
class Context:
    """What the rules look at besides the test: the architecture, the accelerator in use,
    the group asked for, whether nodefault tests run, and how to read a ``check`` path."""

    arch: str = "x86_64"
    accel: str = ""
    group: str = ""
    run_all: bool = False
    read_check: object = _read_file


@dataclass
class Result:
    """A test's verdict: status (PASS/FAIL/SKIP), the summary or reason shown in
    parentheses, and the exit status it came from (None if it did not run)."""

    name: str
    status: str
    detail: str = ""
    ret: Optional[int] = None
    seconds: float = 0.0

    def line(self):
        return f"{self.status} {self.name}" + (f" ({self.detail})" if self.detail else "")


def selected(test, only_tests, group):
    """``run_tests.sh TEST...`` and ``-g GROUP`` filters."""
    if only_tests and test.name not in only_tests:
        return False
    return not group or group in test.groups


def skip_reason(test, ctx):
    """Why the suite would not run ``test`` here, or None (runtime.bash's checks, in its
    order)."""
    if "pv-host" in test.groups:
        return "no gen-se-header available for pv-host test"
    if not ctx.group and "nodefault" in test.groups and not ctx.run_all:
        return "test marked as manual run only"
    if test.arch and test.arch != ctx.arch:
        return f"{test.arch} only"
    if test.accel and ctx.accel and not re.match(rf"^{re.escape(test.accel)}(,|$)", ctx.accel):
        return f"{test.accel} only, but ACCEL={ctx.accel}"
    if test.disabled_if and subprocess.run(["bash", "-c", test.disabled_if],
                                           capture_output=True).returncode == 0:
        return f"disabled because: {test.disabled_if}"
    for param in test.check.split():
        path, _, value = param.partition("=")
        if ctx.read_check(path) != value:
            return f"{path} not equal to {value}"
    if not os.path.isfile(test.kernel):
        return f"Test file '{test.kernel}' not found"
    return None


def premature_failure(log):
    """The reason to SKIP when the VMM, given :data:`NO_FILE` as its kernel, failed for
    anything but not finding it (qemu_parse_premature_failure), else None."""
    if any(NO_FILE in line and _LOAD_ERROR.search(line) for line in log.splitlines()):
        return None
    lines = log.rstrip("\n").splitlines()
    return lines[-1] if lines else ""


def fixup_status(ret, stderr):
    """qemu_fixup_return_code: QEMU's exit status to the suite's (0 success, 1 QEMU
    failed, 3 the test failed, 124 timeout, 128+n signal n)."""
    sig = re.search(r"terminating on signal (\d+)", stderr)
    if ret == 0:
        return 128 + int(sig.group(1)) if sig else 1
    if ret == 1:
        errors = [line for line in stderr.splitlines() if "warning" not in line.lower()]
        return 1 if stderr and errors else 0
    return ret


def summary(stdout):
    """The ``SUMMARY:`` line among the last five of the test's output, without its label
    (extract_summary)."""
    for line in stdout.splitlines()[-5:]:
        if line.startswith("SUMMARY: "):
            return line[len("SUMMARY: "):].rstrip("\r")
    return ""


def verdict(name, ret, stdout, timeout):
    """The Result of a test that ran: runtime.bash's reading of the fixed-up status."""
    text = summary(stdout)
    if ret == 0:
        return Result(name, PASS, text, ret)
    if ret == SKIP_STATUS:
        return Result(name, SKIP, text, ret)
    if ret == TIMEOUT_STATUS:
        return Result(name, FAIL, f"timeout; duration={timeout}", ret)
    if ret > 127:
        return Result(name, FAIL, f"terminated on {_signame(ret - 128)}", ret)
    return Result(name, FAIL, text, ret)


def failure_hint(stdout, stderr):
    """A line saying why a test that printed no SUMMARY failed (the suite shows nothing):
    the VMM's last error, else the test's last failed assertion or report, else ""."""
    errors = [line for line in stderr.splitlines()
              if line.strip() and "warning" not in line.lower()]
    if errors:
        return errors[-1].strip()
    failures = [line for line in stdout.splitlines()
                if re.search(r"FAIL|assert|[Ee]xception|error", line)]
    return failures[-1].strip() if failures else ""


def _signame(signum):
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"SIG{signum}"


def timeout_seconds(text):
    """timeout(1)'s DURATION: a number with an optional s, m, h or d suffix."""
    m = re.fullmatch(r"(\d+(?:\.\d+)?)([smhd]?)", text.strip())
    if not m:
        raise ConfigError(f"timeout {text!r}: expected a number with s, m, h or d")
    return float(m.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)]
