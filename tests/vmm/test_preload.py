"""Unmodified C programs on kvmpy: ``kvmpy exec`` and its LD_PRELOAD library.

The C client tests/support/rawkvm.c (raw ioctls: memslot, vCPU, a real-mode guest doing PIO
and MMIO, a signal kick from another thread, dup, unknown ioctls) runs under ``kvmpy exec``
and, where the host has /dev/kvm, on the host: the outputs must be the same, apart from the
binary statistics, whose descriptors are kvmpy's own (the proof that kvmpy answered).  QEMU
(Debian's qemu-system-x86_64) boots the demo guest under ``kvmpy exec`` with its irqchip in
user space, in KVM, or split, and prints what it prints under QEMU's TCG.  The tests skip without gcc, without a
library build (no CPython to embed) or without QEMU.
"""

import os
import pathlib
import shutil
import subprocess
import sys

import pytest

from kvmpy import guests
from kvmpy.kernel import stats
from kvmpy.preload import build

RAWKVM_SOURCE = pathlib.Path(__file__).resolve().parents[1] / "support" / "rawkvm.c"
QEMU = "qemu-system-x86_64"
RESET_JUMP = bytes([0xEA, 0x00, 0x7C, 0x00, 0x00])      # jmp far 0000:7c00 at F000:FFF0

# What the guest and the API make rawkvm print, on any KVM (measured on the host's)
RAWKVM_OUTPUT = """\
api 12
immediate_exit cap 1
mmap of the VM: ENODEV
io out port=0x3f8 size=1 count=1 data=0x4b
mmio write addr=0x10010 len=1 data=0x5a
mmio read addr=0x10020 len=1 data=0x33
io out port=0x3f8 size=1 count=1 data=0x33
io in port=0x3f8 size=1 count=1 data=0x7e
hlt
regs rip=0x1016 al=0x7e
dup2: ok
F_DUPFD_CLOEXEC: ok cloexec=1
after close: EBADF
forked child: vCPU ioctl EIO, close ok
parent after the fork: ok
unknown ioctl: /dev/kvm EINVAL, VM ENOTTY, vCPU EINVAL
vm ioctl while the vCPU runs: 1
kicked: EINTR immediate_exit=1 kicks=1
immediate_exit set: EINTR
"""


@pytest.fixture(scope="module")
def library():
    try:
        return build.ensure_built()
    except build.BuildError as e:
        pytest.skip(str(e))


@pytest.fixture(scope="module")
def rawkvm(tmp_path_factory):
    gcc = shutil.which("gcc")
    if gcc is None:
        pytest.skip("needs gcc")
    program = tmp_path_factory.mktemp("rawkvm") / "rawkvm"
    subprocess.run([gcc, "-O2", "-Wall", "-o", str(program), str(RAWKVM_SOURCE), "-lpthread"],
                   check=True)
    return str(program)


def kvmpy_exec(argv, env=None, timeout=120):
    return subprocess.run([sys.executable, "-m", "kvmpy.vmm.cli", "exec", "--"] + argv,
                          capture_output=True, text=True, timeout=timeout,
                          env=dict(os.environ, **(env or {})))


def split_stats(output):
    """(the lines every KVM prints alike, {stat name: value} with "descriptors")."""
    common, counters = [], {}
    for line in output.splitlines(keepends=True):
        if line.startswith("stats "):
            name, value = line.split()[1].split("=")
            counters[name] = int(value)
        else:
            common.append(line)
    return "".join(common), counters


def test_rawkvm_on_kvmpy(library, rawkvm):
    proc = kvmpy_exec([rawkvm])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    common, counters = split_stats(proc.stdout)
    assert common == RAWKVM_OUTPUT
    # kvmpy's statistics: its own list of counters, counting the exits the client saw
    assert counters == {"descriptors": len(stats.VCPU_STATS), "io_exits": 3, "mmio_exits": 2,
                        "halt_exits": 1}


@pytest.mark.host
def test_rawkvm_on_host_is_the_same(library, rawkvm):
    host = subprocess.run([rawkvm], capture_output=True, text=True, timeout=60)
    soft = kvmpy_exec([rawkvm])
    assert host.returncode == soft.returncode == 0, host.stdout + soft.stdout + soft.stderr
    host_common, host_counters = split_stats(host.stdout)
    soft_common, soft_counters = split_stats(soft.stdout)
    assert soft_common == host_common
    assert soft_counters["descriptors"] != host_counters["descriptors"]   # it was kvmpy
    for name in ("mmio_exits", "halt_exits"):
        assert soft_counters[name] == host_counters[name]


def test_without_kvm_the_program_is_untouched(library):
    """A program that never opens /dev/kvm runs as without the library (no interpreter)."""
    proc = kvmpy_exec(["sh", "-c", "echo $LD_PRELOAD; exec 3</dev/null; cat <&3; echo $?"])
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, "%s\n0\n" % library, "")


def test_without_kvmpy_in_the_interpreter_open_fails_clearly(library, rawkvm, tmp_path):
    """KVMPY_PYTHON names the interpreter the library starts: one that cannot import kvmpy
    makes the open of /dev/kvm fail with ENODEV, and the library says why."""
    proc = kvmpy_exec([rawkvm], env={"KVMPY_PYTHON": str(tmp_path / "bin" / "python"), "PYTHONPATH": ""})
    assert proc.returncode == 1
    assert proc.stdout == "error: open /dev/kvm: No such device\n"
    assert "kvmpy: cannot import kvmpy.preload.shim" in proc.stderr
    assert "No module named 'kvmpy'" in proc.stderr


def test_exec_of_a_missing_program(library):
    proc = kvmpy_exec(["/nonexistent/program"])
    assert proc.returncode == 127
    assert "kvmpy exec: /nonexistent/program: No such file or directory" in proc.stderr


def qemu_argv(accel, *machine, irqchip="off"):
    """QEMU with its interrupt controllers in user space (``irqchip`` off), in KVM (on), or
    the LAPIC in KVM and the rest in QEMU (split); kvmpy keeps no vapic page for QEMU's TPR
    patching (kvm-apic.vapic)."""
    return [QEMU, "-machine", "pc,kernel-irqchip=" + irqchip, "-accel", accel,
            "-global", "kvm-apic.vapic=off", "-m", "16",
            "-display", "none", "-nographic", "-serial", "stdio", "-monitor", "none", "-net", "none",
            "-device", "isa-debug-exit,iobase=0xf4,iosize=0x04"] + list(machine)


def demo_argv(tmp_path, accel, irqchip="off"):
    """The demo loaded at 0x7c00 and entered there by a one-instruction BIOS."""
    bios, image = tmp_path / "bios.bin", tmp_path / "demo.bin"
    bios.write_bytes(bytes(0xFFF0) + RESET_JUMP + bytes(11))
    image.write_bytes(guests.load_image("demo"))
    return qemu_argv(accel, "-bios", str(bios), "-device", f"loader,file={image},addr=0x7c00,force-raw=on",
                     irqchip=irqchip)


@pytest.mark.parametrize("irqchip", ["off", "on", "split"])
@pytest.mark.skipif(shutil.which(QEMU) is None, reason="needs " + QEMU)
def test_qemu_boots_the_demo_on_kvmpy(library, tmp_path, irqchip):
    """QEMU with -accel kvm on kvmpy prints what QEMU's TCG prints.  The demo's own verdict
    is FAILED on both (exit value 1, QEMU status 3): QEMU has no device at the MMIO address
    the demo reads.  KVMPY_TRACE logs the failing ioctls, among them the E2BIG answers of
    QEMU's probing for the sizes of the MSR index list and the CPUID table."""
    tcg = subprocess.run(demo_argv(tmp_path, "tcg"), capture_output=True, text=True, timeout=120)
    soft = kvmpy_exec(demo_argv(tmp_path, "kvm", irqchip), env={"KVMPY_TRACE": "1"}, timeout=300)
    assert "sum = 639" in tcg.stdout
    assert (soft.returncode, soft.stdout) == (tcg.returncode, tcg.stdout), soft.stderr
    assert "KVM_GET_SUPPORTED_CPUID" in soft.stderr and "-E2BIG" in soft.stderr


@pytest.mark.slow
@pytest.mark.parametrize("irqchip", ["off", "on", "split"])
@pytest.mark.skipif(shutil.which(QEMU) is None, reason="needs " + QEMU)
def test_qemu_seabios_boots_the_demo_from_disk_on_kvmpy(library, tmp_path, irqchip):
    """QEMU's own BIOS (SeaBIOS) on kvmpy: it starts, finds the IDE disk and boots it (the
    bootsect guest reads the demo with int 0x13 and runs it); the demo prints what it prints
    under TCG.  About 35 s on kvmpy in each irqchip mode (6 s on this machine's host KVM,
    itself emulated)."""
    disk = tmp_path / "disk.img"
    disk.write_bytes((guests.load_image("bootsect") + guests.load_image("demo")).ljust(64 << 10, b"\0"))
    argv = ["-drive", f"file={disk},format=raw,if=ide", "-boot", "c"]
    tcg = subprocess.run(qemu_argv("tcg", *argv), capture_output=True, text=True, timeout=120)
    soft = kvmpy_exec(qemu_argv("kvm", *argv, irqchip=irqchip), timeout=600)
    assert "SeaBIOS" in soft.stdout and "Booting from Hard Disk..." in soft.stdout, soft.stderr
    # after the BIOS's banner (whose serial console flushes on timer ticks), the demo's lines
    demo = tcg.stdout[tcg.stdout.index("kvmpy demo:"):]
    assert "sum = 639" in demo
    assert soft.returncode == tcg.returncode
    assert soft.stdout[soft.stdout.index("kvmpy demo:"):] == demo
