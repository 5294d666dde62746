"""``kvmpy unit-tests``: a kvm-unit-tests runner, proven on a fake build tree.

The tree is made here: an ``x86/unittests.cfg`` and tiny real-mode guests that report as
the suite's tests do (a ``SUMMARY:`` line on COM1, then their status to isa-debug-exit).
They run through a stand-in "QEMU" that is ``kvmpy run`` itself, minus the suite's
devices kvmpy's machine does not have yet, so PASS, FAIL, SKIP and timeouts come from real
guest runs; the rules that act before a run are checked on the kvmpy target too.
"""

import json
import os
import signal
import stat
import subprocess
import sys
import textwrap
import time

import pytest

from tests.support.cli import run_main as run

COM1 = [0xBA, 0xF8, 0x03]                    # mov dx, 0x3f8


def guest(text, status=None):
    """A flat guest that prints ``text`` on COM1 and writes ``status`` to port 0xf4 (or
    halts with interrupts off if None)."""
    code = list(COM1)
    for ch in text.encode():
        code += [0xB0, ch, 0xEE]             # mov al, ch; out dx, al
    if status is not None:
        code += [0xB0, status, 0xE6, 0xF4]   # mov al, status; out 0xf4, al
    return bytes(code + [0xFA, 0xF4])        # cli; hlt


GUESTS = {
    "pass.flat": guest("ok\nSUMMARY: 3 tests\n", 0),
    "fail.flat": guest("FAIL: thing\nSUMMARY: 3 tests, 1 unexpected failures\n", 1),
    "skip.flat": guest("SUMMARY: 1 tests, 1 skipped\n", 38),   # (38 << 1) | 1 == 77
    "halt.flat": guest("no status\n"),
    "hang.flat": bytes([0xEB, 0xFE]),        # jmp $
}

CONFIG = """
[passes]
file = pass.flat

[fails]
file = fail.flat
groups = bad

[skips]
file = skip.flat

[no_status]
file = halt.flat

[hangs]
file = hang.flat
timeout = 3

[i386_only]
file = pass.flat
arch = i386

[manual]
file = pass.flat
groups = bad nodefault

[kvm_only]
file = pass.flat
accel = kvm

[checked]
file = pass.flat
check = {checkfile}=Y

[missing]
file = missing.flat

[refused]
file = pass.flat
qemu_params = -cpu qemu64,vendor=GenuineIntel
"""

#: a "QEMU" for the runner's --qemu mode: kvmpy run, without the options naming what the
#: machine lacks (the suite's pc-testdev, pci-testdev and its environment as an initrd),
#: kvmpy's soft KVM standing in for TCG
FAKE_QEMU = """\
#!{python}
import os, sys
args = sys.argv[1:]
if args == ["-h"]:
    print("QEMU emulator version 7.2.0 (kvmpy stand-in)"); sys.exit(0)
if args == ["-device", "help"]:
    print('name "pc-testdev", bus ISA'); print('name "pci-testdev", bus PCI'); sys.exit(0)
out = []
while args:
    a = args.pop(0)
    if a == "-initrd" or (a == "-device" and args[0] in ("pc-testdev", "pci-testdev")):
        args.pop(0)
        continue
    out.append("accel=kvm" if a == "accel=tcg" else a)
os.execv(sys.executable, [sys.executable, "-m", "kvmpy.vmm.cli", "run"] + out)
"""


@pytest.fixture
def tree(tmp_path):
    """A kvm-unit-tests-like build tree: config.mak, x86/unittests.cfg, x86/*.flat."""
    x86 = tmp_path / "kut" / "x86"
    x86.mkdir(parents=True)
    (tmp_path / "kut" / "config.mak").write_text("ARCH=x86_64\n")
    checkfile = tmp_path / "param"
    checkfile.write_text("N\n")
    (x86 / "unittests.cfg").write_text(CONFIG.format(checkfile=checkfile))
    for name, code in GUESTS.items():
        (x86 / name).write_bytes(code)
    return tmp_path / "kut"


@pytest.fixture
def fake_qemu(tmp_path):
    path = tmp_path / "qemu-system-x86_64"
    path.write_text(FAKE_QEMU.format(python=sys.executable))
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return str(path)


def result_lines(out):
    """{test: its result line without the progress counter}."""
    lines = {}
    for line in out.splitlines():
        if line.startswith("["):
            verdict = line.split("] ", 1)[1]
            lines[verdict.split()[1]] = verdict
    return lines


def test_whole_tree_through_the_qemu_command_line(capsys, tree, fake_qemu, tmp_path):
    table = tmp_path / "results.json"
    status, out, _ = run(capsys, "unit-tests", str(tree), "--qemu", fake_qemu,
                         "--accel", "tcg", "-j", "2", "--table", str(table),
                         "--log-dir", str(tmp_path / "logs"))
    lines = result_lines(out)
    assert lines == {
        "passes": "PASS passes (3 tests)",
        "fails": "FAIL fails (3 tests, 1 unexpected failures)",
        "skips": "SKIP skips (1 tests, 1 skipped)",
        "no_status": "FAIL no_status",
        "hangs": "FAIL hangs (timeout; duration=3)",
        "i386_only": "SKIP i386_only (i386 only)",
        "manual": "SKIP manual (test marked as manual run only)",
        "kvm_only": "SKIP kvm_only (kvm only, but ACCEL=tcg)",
        "checked": f"SKIP checked ({tmp_path / 'param'} not equal to Y)",
        "missing": f"SKIP missing (Test file '{tree / 'x86' / 'missing.flat'}' not found)",
        "refused": "SKIP refused (kvmpy run: error: argument --cpu/-cpu: -cpu "
                   "qemu64,vendor=GenuineIntel: CPU property vendor=GenuineIntel is not "
                   "supported)",
    }
    assert status == 1                                     # a test failed
    assert out.startswith("running 11 tests of ")
    assert out.splitlines()[-1].startswith("SUMMARY: 1 pass, 3 fail, 7 skip of 11 (")
    assert "ok\nSUMMARY: 3 tests" in (tmp_path / "logs" / "passes.log").read_text()
    data = json.loads(table.read_text())
    column = data["columns"]["qemu-tcg"]
    assert column["results"]["hangs"] == ["FAIL", "timeout; duration=3"]
    assert column["about"]["target"] == "qemu (accel=tcg)"
    markdown = (tmp_path / "results.md").read_text()
    assert "| passes | PASS (3 tests) |" in markdown
    assert "| **total** | 1 pass, 3 fail, 7 skip of 11 |" in markdown


def test_selecting_tests_and_groups(capsys, tree, fake_qemu):
    status, out, err = run(capsys, "unit-tests", str(tree), "passes", "--qemu", fake_qemu,
                         "--accel", "tcg", "skips")
    assert (status, sorted(result_lines(out))) == (0, ["passes", "skips"]), err
    # -g runs the group's nodefault tests too, as run_tests.sh -g does
    status, out, _ = run(capsys, "unit-tests", str(tree), "-g", "bad", "--qemu", fake_qemu,
                         "--accel", "tcg")
    assert result_lines(out) == {"fails": "FAIL fails (3 tests, 1 unexpected failures)",
                                 "manual": "PASS manual (3 tests)"}


def test_kvmpy_target_applies_the_rules_before_running(capsys, tree):
    status, out, _ = run(capsys, "unit-tests", str(tree), "i386_only", "kvm_only", "checked")
    lines = result_lines(out)
    assert lines["i386_only"] == "SKIP i386_only (i386 only)"
    assert lines["checked"].startswith("SKIP checked (")
    # kvmpy is a KVM: accel = kvm tests are not skipped for the accelerator
    assert "kvm only" not in lines["kvm_only"]
    assert "on kvmpy (accel=kvm)" in out


def test_kvmpy_target_reads_kvmpy_module_parameters_for_check(capsys, tmp_path, tree):
    cfg = tree / "x86" / "unittests.cfg"
    cfg.write_text(textwrap.dedent("""\
        [needs_pmu]
        file = pass.flat
        check = /sys/module/kvm/parameters/enable_pmu=Y
        [needs_shadow]
        file = missing.flat
        check = /sys/module/kvm_intel/parameters/ept=N
        [needs_svm_shadow]
        file = missing.flat
        check = /sys/module/kvm_amd/parameters/npt=N
        """))
    _, out, _ = run(capsys, "unit-tests", str(tree), "--kvmpy-args", "--mmu=shadow")
    lines = result_lines(out)
    assert lines["needs_pmu"] == ("SKIP needs_pmu (/sys/module/kvm/parameters/enable_pmu "
                                  "not equal to Y)")
    # the check passed (kvmpy's ept is off with --mmu shadow): the next rule speaks
    assert lines["needs_shadow"].startswith("SKIP needs_shadow (Test file ")
    # kvm_amd is not loaded: the VMX module is
    assert lines["needs_svm_shadow"] == ("SKIP needs_svm_shadow (/sys/module/kvm_amd/"
                                         "parameters/npt not equal to N)")
    _, out, _ = run(capsys, "unit-tests", str(tree), "--kvmpy-args", "--vendor svm --mmu tdp")
    lines = result_lines(out)
    assert lines["needs_shadow"].startswith("SKIP needs_shadow (/sys/module/kvm_intel/")
    assert lines["needs_svm_shadow"].startswith("SKIP needs_svm_shadow (/sys/module/kvm_amd/")


@pytest.mark.parametrize("argv,message", [
    (["unit-tests", "/nonexistent"], "/nonexistent: no x86/unittests.cfg"),
    (["unit-tests", "{tree}", "nosuchtest"], "no such test in unittests.cfg: nosuchtest"),
    (["unit-tests", "{tree}", "--accel", "tcg"], "--accel: only with --qemu"),
    (["unit-tests", "{tree}", "--qemu", "/bin/true"], "--qemu /bin/true: not a QEMU binary"),
    (["unit-tests", "{tree}", "-j", "0"], "must be positive"),
])
def test_runner_errors(capsys, tree, argv, message):
    status, _, err = run(capsys, *[a.format(tree=tree) for a in argv])
    assert status == 2 and message in err and len(err.splitlines()) == 1


def test_a_vmm_killed_by_a_signal(capsys, tree, tmp_path):
    """The status of a VMM that a signal ended is the shell's 128 + n, as the suite sees
    it: SIGABRT is "QEMU Aborted" (a SKIP when it happens before the kernel loads)."""
    qemu = tmp_path / "qemu-aborts"
    qemu.write_text(FAKE_QEMU.format(python=sys.executable).replace(
        "out = []", "import signal; os.kill(os.getpid(), signal.SIGABRT)\nout = []"))
    qemu.chmod(0o755)
    _, out, _ = run(capsys, "unit-tests", str(tree), "passes", "--qemu", str(qemu))
    assert result_lines(out) == {"passes": "SKIP passes (QEMU Aborted)"}


def test_columns_and_the_readme_copy_of_the_table(capsys, tree, fake_qemu, tmp_path):
    table, readme = tmp_path / "t.json", tmp_path / "README.md"
    readme.write_text("intro\n<!-- kvm-unit-tests table: written by kvmpy unit-tests "
                      "--readme -->\nold\n<!-- end of kvm-unit-tests table -->\nrest\n")
    common = ["--table", str(table), "--readme", str(readme)]
    run(capsys, "unit-tests", str(tree), "passes", "--qemu", fake_qemu, "--accel", "tcg",
        "--record", "QEMU TCG", *common)
    run(capsys, "unit-tests", str(tree), "passes", "i386_only", *common)
    text = readme.read_text()
    assert text.startswith("intro\n") and text.endswith("<!-- end of kvm-unit-tests table -->"
                                                         "\nrest\n")
    assert "old" not in text
    assert "| test | QEMU TCG | kvmpy |" in text
    assert "| passes | PASS (3 tests) | " in text
    assert "| i386_only |  | SKIP (i386 only) |" in text                 # not run on TCG
    assert "command: `kvmpy unit-tests " in text
    status, _, err = run(capsys, "unit-tests", str(tree), "--readme", str(readme))
    assert status == 2 and "--readme: only with --table" in err


def _processes_naming(text):
    """PIDs of the processes whose command line mentions ``text``."""
    pids = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if text.encode() in f.read():
                    pids.append(int(pid))
        except OSError:
            pass
    return pids


def test_ctrl_c_stops_the_run_and_its_vmms(tree, fake_qemu):
    """The VMMs run in sessions of their own (the terminal's SIGINT does not reach them):
    an interrupted runner kills them, starts no more, and exits 130."""
    proc = subprocess.Popen([sys.executable, "-m", "kvmpy.vmm.cli", "unit-tests", str(tree),
                             "hangs", "passes", "--qemu", fake_qemu, "--timeout", "120"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    hang = str(tree / "x86" / "hang.flat")
    deadline = time.monotonic() + 60
    while not _processes_naming(hang) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _processes_naming(hang), "the hanging guest never started"
    time.sleep(1)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    assert (proc.returncode, err) == (130, "kvmpy: interrupted\n")
    assert "SUMMARY" not in out
    time.sleep(0.5)
    assert _processes_naming(hang) == []
