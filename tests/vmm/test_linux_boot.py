"""Linux boots to busybox's shell: the committed kernel and initramfs (kvmpy/guests/linux)
through ``kvmpy run -kernel -initrd -append``.

/init mounts /proc, /sys and /dev, prints its marker, and runs the command the kernel
command line gives it (``kvmpy_cmd=``, passed in init's environment) in busybox's shell,
then powers the machine off (ACPI S5: status 0).  The command is ``echo kvmpy-$((6*7))``:
``kvmpy-42`` on the console is the shell's own arithmetic, written to the console through
the tty layer and the 8250's interrupts.  The initramfs is made from the host's static
busybox for the test (kvmpy/guests/linux/initramfs.py).

QEMU TCG boots the same images in about 2 s, the reference for what the console shows.
On kvmpy's soft processor a boot is minutes of wall time (slow tests).
"""

import os
import re
import select
import shutil
import subprocess
import sys
import time

import pytest

from kvmpy.guests.linux import BZIMAGE, INIT_MARKER
from kvmpy.guests.linux.initramfs import build_initramfs, busybox_missing
from tests.support.cli import kvmpy_run

pytestmark = pytest.mark.skipif(busybox_missing(), reason="no static busybox (busybox-static)")

QEMU = "qemu-system-x86_64"
COMMAND = 'kvmpy_cmd="echo kvmpy-$((6*7))"'
ANSWER = "\nkvmpy-42\n"          # on a line of its own (line ends without CRs)
POWER_OFF = "reboot: Power down"


@pytest.fixture(scope="module")
def initramfs(tmp_path_factory):
    path = tmp_path_factory.mktemp("linux") / "initramfs.cpio.gz"
    path.write_bytes(build_initramfs())
    return str(path)


def _check_boot(out):
    assert INIT_MARKER in out, out[-3000:]
    # the console's CR LF, or the LF a text-mode pipe makes of it
    assert ANSWER in out.replace("\r", ""), out[-3000:]
    assert out.index(INIT_MARKER) < out.index("kvmpy-42") < out.index(POWER_OFF)


def _boot(initramfs, command, *options):
    """The console of a kvmpy boot whose /init ran ``command`` (``kvmpy_cmd=``, then
    ``echo kvmpy-42``) and powered off with status 0."""
    status, out, err = kvmpy_run(*options, "-kernel", str(BZIMAGE), "-initrd", initramfs,
                                 "-append", f'console=ttyS0 kvmpy_cmd="{command}"',
                                 timeout=2400)
    _check_boot(out)
    assert status == 0, err
    return out


@pytest.mark.skipif(shutil.which(QEMU) is None, reason="QEMU is not installed")
def test_qemu_boots_the_images_to_the_shell(initramfs):
    proc = subprocess.run([QEMU, "-accel", "tcg", "-m", "128", "-kernel", str(BZIMAGE),
                           "-initrd", initramfs, "-append", f"console=ttyS0 {COMMAND}",
                           "-nographic", "-no-reboot"], capture_output=True, timeout=600)
    _check_boot(proc.stdout.decode("latin-1"))


@pytest.mark.slow
@pytest.mark.parametrize("vendor", ["vmx", "svm"])
@pytest.mark.parametrize("mmu", ["tdp", "shadow"])
def test_linux_boots_to_the_shell_on_kvmpy(initramfs, vendor, mmu):
    status, out, err = kvmpy_run("--vendor", vendor, "--mmu", mmu, "-kernel", str(BZIMAGE),
                                 "-initrd", initramfs, "-append", f"console=ttyS0 {COMMAND}",
                                 timeout=2400)
    _check_boot(out)
    assert status == 0, err


@pytest.mark.slow
def test_linux_sees_two_cpus_on_kvmpy(initramfs):
    """-smp 2: the AP is started by INIT/SIPI and /proc/cpuinfo lists both processors."""
    command = 'kvmpy_cmd="echo cpus=$(grep -c ^processor /proc/cpuinfo); echo kvmpy-$((6*7))"'
    status, out, err = kvmpy_run("-smp", "2", "-kernel", str(BZIMAGE), "-initrd", initramfs,
                                 "-append", f"console=ttyS0 {command}", timeout=2400)
    _check_boot(out)
    assert "smp: Brought up 1 node, 2 CPUs" in out
    assert "\ncpus=2\n" in out.replace("\r", "")
    assert status == 0, err


@pytest.mark.slow
@pytest.mark.host
def test_linux_boots_to_the_shell_on_the_host(initramfs):
    status, out, err = kvmpy_run("--accel", "host", "-kernel", str(BZIMAGE), "-initrd", initramfs,
                                 "-append", f"console=ttyS0 {COMMAND}", timeout=2400)
    _check_boot(out)
    assert status == 0, err


def _read_until(proc, out, marker, deadline):
    """Read the guest's console from ``proc`` into ``out`` until ``marker`` is in it."""
    while marker not in out[0]:
        if time.monotonic() > deadline or proc.poll() is not None:
            raise AssertionError(f"no {marker!r} on the console:\n{out[0][-3000:]}")
        ready, _, _ = select.select([proc.stdout], [], [], 1.0)
        if ready:
            out[0] += os.read(proc.stdout.fileno(), 4096).decode("latin-1")


@pytest.mark.slow
@pytest.mark.parametrize("console,device", [("ttyS0", ()), ("hvc0", ("-device", "virtio-console-device"))])
def test_a_command_typed_into_the_shell_on_kvmpy(initramfs, console, device):
    """No kvmpy_cmd: /init starts an interactive shell on the console; a command typed on
    kvmpy run's standard input reaches it -- on ttyS0 through the 8250's receive interrupt,
    on hvc0 through the virtio-console's receive queue -- and its answer comes back;
    ``poweroff -f`` typed next ends the run."""
    proc = subprocess.Popen([sys.executable, "-m", "kvmpy.vmm.cli", "run", "-kernel", str(BZIMAGE),
                             "-initrd", initramfs, *device, "-append", f"console={console}"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out = [""]
    try:
        deadline = time.monotonic() + 1200
        _read_until(proc, out, INIT_MARKER, deadline)
        _read_until(proc, out, "# ", deadline)                  # the shell's prompt
        proc.stdin.write(b"echo kvmpy-$((6*7))\n")
        proc.stdin.flush()
        _read_until(proc, out, ANSWER, deadline)
        proc.stdin.write(b"poweroff -f\n")
        proc.stdin.flush()
        _read_until(proc, out, POWER_OFF, deadline)
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdin.close()
        proc.stdout.close()
        proc.stderr.close()


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("mkfs.ext2") is None or shutil.which("debugfs") is None,
                    reason="needs e2fsprogs (mkfs.ext2, debugfs)")
def test_a_file_written_on_a_virtio_disk_is_on_the_image(initramfs, tmp_path):
    """--disk: Linux finds the virtio-mmio block device the VMM announces on the command
    line, mounts its ext2 file system, writes a file and unmounts it; the file is then in
    the image, as e2fsprogs' debugfs reads it on the host, and the next boot reads it back."""
    disk = tmp_path / "disk.img"
    with open(disk, "wb") as f:
        f.truncate(8 << 20)
    subprocess.run(["mkfs.ext2", "-q", "-F", str(disk)], check=True)
    mount = "mkdir /mnt && mount -t ext2 /dev/vda /mnt"
    _boot(initramfs, f"{mount} && echo kvmpy-disk-$((6*7)) > /mnt/f && umount /mnt && echo kvmpy-42",
          "--disk", str(disk))
    got = subprocess.run(["debugfs", "-R", "cat /f", str(disk)], capture_output=True, text=True)
    assert got.stdout == "kvmpy-disk-42\n"
    out = _boot(initramfs, f"{mount} && echo read $(cat /mnt/f) && umount /mnt && echo kvmpy-42",
                "--disk", str(disk))
    assert "\nread kvmpy-disk-42\n" in out.replace("\r", "")


@pytest.mark.slow
def test_linux_finds_the_dsdt_legacy_devices(initramfs):
    """Linux's PnP layer reads the DSDT's devices (PNPACPI) with their resources, and the
    8250's PnP driver takes COM1 from it: its line names the PnP device ("00:0N: ttyS0"),
    not the legacy platform port list ("serial8250: ttyS0")."""
    out = _boot(initramfs, "for d in /sys/bus/pnp/devices/*; do "
                           "echo pnp $(cat $d/id) $(cat $d/resources); done; echo kvmpy-$((6*7))")
    assert "pnp: PnP ACPI: found 3 devices" in out
    assert re.search(r"\n00:0\d: ttyS0 at I/O 0x3f8 \(irq = 4,", out), out[-3000:]
    lines = set(out.replace("\r", "").splitlines())
    assert {"pnp PNP0501 state = active io 0x3f8-0x3ff irq 4",
            "pnp PNP0b00 state = active io 0x70-0x71 irq 8",
            "pnp PNP0303 state = active io 0x60-0x60 io 0x64-0x64 irq 1"} <= lines, out[-3000:]
