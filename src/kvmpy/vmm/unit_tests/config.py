"""``unittests.cfg``: the suite's list of tests, read as ``scripts/common.bash`` reads it.

Each ``[name]`` section gives ``file`` (in the test directory), ``smp``, ``test_args``
(words for ``-append``), ``qemu_params`` or ``extra_params`` (more QEMU options, maybe
over several lines between triple quotes), ``groups``, ``arch``, ``machine``, ``check``,
``accel``, ``timeout`` and ``disabled_if``.  Values stay shell text: the suite ``eval``\\ s
the command line they make, and so does the runner.
"""

import os
import re
from dataclasses import dataclass, field

from kvmpy.vmm.unit_tests import RunnerError

#: the keys whose value is the test's extra QEMU options
PARAMS_KEYS = ("extra_params", "qemu_params")
SIMPLE_KEYS = ("file", "smp", "test_args", "groups", "arch", "machine", "check", "accel",
               "timeout", "disabled_if")


class ConfigError(RunnerError):
    """An unreadable unittests.cfg."""


@dataclass
class UnitTest:
    """One section of unittests.cfg (values as written; ``kernel`` has the test dir)."""

    name: str
    kernel: str = ""
    smp: str = "1"
    test_args: str = ""
    opts: str = ""
    groups: list = field(default_factory=list)
    arch: str = ""
    machine: str = ""
    check: str = ""
    accel: str = ""
    timeout: str = ""
    disabled_if: str = ""


_SECTION = re.compile(r"^\[(.*)\]$")
_KEY = re.compile(r"^(%s) *= *(.*)$" % "|".join(SIMPLE_KEYS + PARAMS_KEYS))


def parse(path, test_dir):
    """The tests of the unittests.cfg at ``path``, in order; ``file`` values are joined to
    ``test_dir`` (the build tree's ``x86``)."""
    try:
        with open(path) as f:
            lines = f.read().splitlines()
    except OSError as e:
        raise ConfigError(f"{path}: {e.strerror}") from None
    tests, test = [], None
    lines = iter(lines)
    for line in lines:
        line = line.strip()
        m = _SECTION.match(line)
        if m:
            test = UnitTest(m.group(1))
            tests.append(test)
            continue
        m = _KEY.match(line)
        if not m or test is None:
            continue
        key, value = m.groups()
        if key in PARAMS_KEYS:
            test.opts = _multiline(value, lines) if value.startswith('"""') else value
        elif key == "file":
            test.kernel = os.path.join(test_dir, value)
        elif key == "groups":
            test.groups = value.split()
        else:
            setattr(test, key, value)
    return tests


def _multiline(value, lines):
    """A ``\"\"\"...\"\"\"`` value: its lines joined by newlines (a backslash at the end
    of a line joins it to the next, as common.bash does)."""
    text = value[3:]
    while not text.rstrip().endswith('"""'):
        try:
            line = next(lines)
        except StopIteration:
            raise ConfigError('unterminated """ value') from None
        text = text[:-1] if _odd_backslashes(text) else text + "\n"
        text += line
    return text.rstrip()[:-3]


def _odd_backslashes(text):
    return (len(text) - len(text.rstrip("\\"))) % 2 == 1
