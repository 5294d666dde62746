"""``kvmpy`` on the command line: option errors, image errors, and real runs on the host."""

import subprocess
import sys
import time

import pytest

from tests.support.cli import run_main
from tests.support.elfgen import make_elf
from kvmpy.api import Vcpu, VcpuExit


@pytest.fixture
def image(tmp_path):
    """Write a flat image (real mode at 0x7c00) and return its path."""
    def write(code, name="guest.bin"):
        path = tmp_path / name
        path.write_bytes(bytes(code))
        return str(path)
    return write


# -- option and file errors (no VM needed) -----------------------------------------


@pytest.mark.parametrize("argv,message", [
    (["run", "--accel", "qemu"], "invalid choice"),
    (["run", "--mmu", "nested"], "invalid choice"),
    (["run", "-m", "lots"], "invalid int value"),
    (["run", "-m", "0"], "at least 1 MiB"),
    (["run", "-m", "100000"], "at most 3328 MiB"),
    (["run", "--timeout", "-1"], "must be positive"),
    (["run", "--accel", "host", "--mmu", "shadow"], "--mmu: only for --accel soft"),
    (["run", "--accel", "host", "--vendor", "svm", "--trace"],
     "--vendor, --trace: only for --accel soft"),
    (["run", "--accel", "host", "--max-insns", "10"], "--max-insns: only for --accel soft"),
    (["run", "--clock", "sundial"], "invalid choice"),
    (["run", "--accel", "host", "--clock", "host"], "--clock: only for --accel soft"),
    (["frobnicate"], "invalid choice"),
])
def test_bad_options_exit_2(capsys, argv, message):
    status, out, err = run_main(capsys, *argv)
    assert status == 2
    assert message in err


def test_no_command_prints_usage(capsys):
    status, out, err = run_main(capsys)
    assert status == 2 and "usage: kvmpy" in err


def test_missing_image(capsys, tmp_path):
    status, _, err = run_main(capsys, "run", str(tmp_path / "none.bin"), "--accel", "host")
    assert status == 2
    assert err.strip().endswith("none.bin: no such file")
    assert len(err.strip().splitlines()) == 1


def test_empty_image(capsys, image):
    status, _, err = run_main(capsys, "run", image(b""), "--accel", "host")
    assert (status, err.count("\n")) == (2, 1) and "file is empty" in err


def test_flat_image_forced_to_elf(capsys, image):
    status, _, err = run_main(capsys, "run", image(b"\xf4"), "--format", "elf")
    assert status == 2 and "not an ELF file" in err


def test_version(capsys):
    status, out, _ = run_main(capsys, "version")
    assert status == 0 and out.startswith("kvmpy ")


def test_help():
    result = subprocess.run([sys.executable, "-m", "kvmpy.vmm.cli", "run", "--help"],
                            capture_output=True, text=True, timeout=20)
    assert result.returncode == 0
    for option in ("--accel", "--mmu", "--vendor", "--format", "--trace", "--max-insns",
                   "--timeout", "--stats", "-rtc"):
        assert option in result.stdout


# -- runs on the host's /dev/kvm --------------------------------------------------

OUT_COM1 = [0xBA, 0xF8, 0x03, 0xB0, ord("!"), 0xEE]  # mov dx,0x3f8; mov al,'!'; out dx,al
#: guests that never end: one that never leaves the guest, one that exits at every iteration
LOOPS = {"jmp-self": [0xEB, 0xFE],                   # jmp $
         "out-loop": [0xE6, 0x80, 0xEB, 0xFC]}       # 1: out 0x80,al; jmp 1b
#: 1000 iterations of an OUT (2003 instructions), then isa-debug-exit with value 5
COUNTED = [0xB9, 0xE8, 0x03,                         # mov cx,1000
           0xE6, 0x80, 0xE2, 0xFC,                   # 1: out 0x80,al; loop 1b
           0xB0, 0x05, 0xE6, 0xF4]                   # mov al,5; out 0xf4,al
INSN_LIMIT_STATUS, TIMEOUT_STATUS = 4, 124
BOUND_SLACK = 20     # seconds: a bounded run's whole process, on a loaded CI machine


@pytest.mark.host
def test_demo_on_host_prints_and_exits_0():
    from kvmpy.guests import image_path
    try:
        image_path("demo")
    except FileNotFoundError:
        pytest.skip("demo.bin not built")
    result = subprocess.run([sys.executable, "-m", "kvmpy.vmm.cli", "run", "--accel", "host"],
                            capture_output=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert b"mmio read 0xd0000000 = 0x12345678" in result.stdout
    assert b"demo ok" in result.stdout
    assert result.stderr == b""


@pytest.mark.host
def test_hlt_with_interrupts_off_exits_0(capsys, image):
    status, out, err = run_main(capsys, "run", image(OUT_COM1 + [0xFA, 0xF4]), "--accel", "host")
    assert (status, out, err) == (0, "!", "")


@pytest.mark.host
def test_debug_exit_status(capsys, image):
    code = [0xB0, 0x21, 0xE6, 0xF4, 0xF4]  # mov al,0x21; out 0xf4,al; hlt
    status, _, _ = run_main(capsys, "run", image(code), "--accel", "host")
    assert status == (0x21 << 1) | 1


@pytest.mark.host
def test_hlt_with_interrupts_on_stops_and_says_so(capsys, image):
    status, _, err = run_main(capsys, "run", image([0xFB, 0xF4]), "--accel", "host")
    assert status == 1 and "interrupts enabled" in err


@pytest.mark.host
@pytest.mark.parametrize("exit_,message", [
    (VcpuExit.Shutdown(), "shutdown: guest shut down (triple fault)"),
    (VcpuExit.InternalError(1, (0x1, 0xDA0F)),
     "internal error: suberror 1 (emulation failure), data [0x1 0xda0f]"),
    (VcpuExit.FailEntry(0x7, 0), "VM entry failed: hardware reason 0x7 on cpu 0"),
])
def test_fatal_exits_are_reported(capsys, image, monkeypatch, exit_, message):
    # The host's emulator cannot always produce these on demand: inject them at the API.
    monkeypatch.setattr(Vcpu, "run", lambda self: exit_)
    status, _, err = run_main(capsys, "run", image([0xF4]), "--accel", "host")
    assert status == 1
    assert message in err and len(err.splitlines()) == 1


@pytest.mark.host
def test_i8042_reset_ends_the_run(capsys, image):
    code = [0xB0, 0xFE, 0xE6, 0x64, 0xEB, 0xFE]  # mov al,0xfe; out 0x64,al; jmp $
    status, _, err = run_main(capsys, "run", image(code), "--accel", "host")
    assert status == 0 and "reset" in err


@pytest.mark.host
@pytest.mark.parametrize("loop", LOOPS)
def test_timeout_stops_a_looping_guest_on_host(capsys, image, loop):
    start = time.monotonic()
    status, _, err = run_main(capsys, "run", image(LOOPS[loop]), "--accel", "host",
                              "--timeout", "0.3")
    assert (status, err) == (TIMEOUT_STATUS, "kvmpy: timed out after 0.3 s\n")
    assert time.monotonic() - start < BOUND_SLACK


@pytest.mark.host
def test_elf_guest_starts_in_protected_mode(capsys, tmp_path):
    code = bytes([
        0x0F, 0x20, 0xC0,        # mov eax, cr0
        0xA8, 0x01,              # test al, 1   (PE must be set)
        0x74, 0x0B,              # jz fail
        0x66, 0xBA, 0xF8, 0x03,  # mov dx, 0x3f8
        0xB0, ord("P"), 0xEE,    # mov al,'P'; out dx,al
        0xB0, 0x05, 0xE6, 0xF4,  # mov al,5; out 0xf4,al
        0xB0, 0x07, 0xE6, 0xF4,  # fail: mov al,7; out 0xf4,al
    ])
    path = tmp_path / "k.elf"
    path.write_bytes(make_elf(code, 0x100000))
    status, out, _ = run_main(capsys, "run", str(path), "--accel", "host")
    assert (status, out) == ((5 << 1) | 1, "P")


# -- runs on kvmpy's soft KVM -------------------------------------------------------


def run_cli(*argv):
    """(exit status, stderr) of ``kvmpy argv`` in a process of its own (the soft kernel's
    module parameters stay set for the process), and the seconds it took."""
    start = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "kvmpy.vmm.cli", *argv],
                            capture_output=True, text=True, timeout=120)
    assert "Traceback" not in result.stderr
    return result.returncode, result.stderr, time.monotonic() - start


@pytest.mark.parametrize("mmu", ["tdp", "shadow"])
@pytest.mark.parametrize("loop", LOOPS)
def test_max_insns_stops_a_looping_guest(image, loop, mmu):
    status, err, _ = run_cli("run", image(LOOPS[loop]), "--mmu", mmu, "--max-insns", "5000")
    assert (status, err) == (INSN_LIMIT_STATUS, "kvmpy: stopped after 5000 instructions\n")


@pytest.mark.parametrize("limit,status", [(2500, (5 << 1) | 1), (1500, INSN_LIMIT_STATUS)])
def test_max_insns_counts_the_whole_run(image, limit, status):
    """The guest needs 2003 instructions, over 1001 exits: enough budget lets it finish."""
    assert run_cli("run", image(COUNTED), "--max-insns", str(limit))[0] == status


@pytest.mark.parametrize("loop", LOOPS)
def test_timeout_stops_a_looping_guest(image, loop):
    status, err, took = run_cli("run", image(LOOPS[loop]), "--vendor", "svm", "--timeout", "0.5")
    assert (status, err) == (TIMEOUT_STATUS, "kvmpy: timed out after 0.5 s\n")
    assert took < BOUND_SLACK


def test_bound_statuses_are_in_the_help():
    result = subprocess.run([sys.executable, "-m", "kvmpy.vmm.cli", "run", "--help"],
                            capture_output=True, text=True, timeout=20)
    assert "%d             --max-insns ended the run" % INSN_LIMIT_STATUS in result.stdout
    assert "%d           --timeout ended the run" % TIMEOUT_STATUS in result.stdout


def test_demo_on_soft_kvm_exits_0():
    result = subprocess.run([sys.executable, "-m", "kvmpy.vmm.cli", "run", "--timeout", "60"],
                            capture_output=True, timeout=90)
    assert result.returncode == 0, result.stderr
    assert b"demo ok" in result.stdout


@pytest.mark.parametrize("clock", ["virtual", "host"])
def test_demo_runs_on_either_clock(clock):
    result = subprocess.run([sys.executable, "-m", "kvmpy.vmm.cli", "run", "--clock", clock, "--timeout", "60"],
                            capture_output=True, timeout=90)
    assert result.returncode == 0, result.stderr
    assert b"demo ok" in result.stdout


def test_trace_prints_the_kernel_call_chain(capsys, image):
    status, out, err = run_main(capsys, "run", image(OUT_COM1 + [0xFA, 0xF4]), "--trace")
    assert (status, out) == (0, "!")
    assert "kvm_create_vm()" in err


# -- QEMU's command line --------------------------------------------------------------

#: x86/run's options for every kvm-unit-test, less the devices kvmpy's machine may lack
SUITE_OPTIONS = ["--no-reboot", "-nodefaults", "-global", "kvm-pit.lost_tick_policy=discard",
                 "-device", "isa-debug-exit,iobase=0xf4,iosize=0x4", "-display", "none",
                 "-serial", "stdio", "-machine", "accel=kvm:tcg", "-machine", "pit=off",
                 "-enable-kvm", "-m", "64M", "-smp", "1,sockets=1"]
#: prints '!' on COM1, then reports through isa-debug-exit whether CPUID.1:ECX shows
#: SSE4.1 (bit 19): value 1 if it does, 2 if not
SSE41_PROBE = OUT_COM1 + [
    0x66, 0xB8, 0x01, 0x00, 0x00, 0x00,          # mov eax, 1
    0x0F, 0xA2,                                  # cpuid
    0x66, 0xF7, 0xC1, 0x00, 0x00, 0x08, 0x00,    # test ecx, 1 << 19
    0x74, 0x04,                                  # jz absent
    0xB0, 0x01, 0xE6, 0xF4,                      # mov al, 1; out 0xf4, al
    0xB0, 0x02, 0xE6, 0xF4]                      # absent: mov al, 2; out 0xf4, al
SSE41_SHOWN, SSE41_HIDDEN = (1 << 1) | 1, (2 << 1) | 1


@pytest.mark.parametrize("argv,message", [
    (["-cpu", "qemu64,vendor=GenuineIntel"], "CPU property vendor=GenuineIntel is not supported"),
    (["-cpu", "max,+frobnicate"], "'frobnicate' is not a CPU feature or property kvmpy supports"),
    (["-cpu", "Opteron_G1"], "unknown CPU model 'Opteron_G1'"),
    (["-smp", "2,cores=2"], "only one core of one thread per socket is supported"),
    (["-smp", "1,cores=2"], "sockets (1) * dies (1) * cores (2) * threads (1) != cpus (1)"),
    (["-smp", "2,maxcpus=4"], "maxcpus other than cpus (CPU hotplug) is not supported"),
    (["-m", "4g"], "4096: at most 3328 MiB"),
    (["-m", "1536K"], "1536K: not a whole number of MiB"),
    (["-machine", "accel=tcg"], "-machine accel=tcg: kvmpy is a KVM; it has no tcg"),
    (["-machine", "accel=tcg:kvm"], "-machine accel=tcg:kvm: kvmpy is a KVM; it has no tcg"),
    (["-M", "q35,kernel-irqchip=split"], "-machine q35: kvmpy has one machine type"),
    (["-machine", "kernel-irqchip=split"], "-machine kernel-irqchip=split: not supported"),
    (["-machine", "pit=maybe"], "-machine pit=maybe: expected on or off"),
    (["-global", "kvm-pit.frequency=2"], "-global kvm-pit.frequency=2: not supported"),
    (["-device", "hyperv-testdev"], "-device hyperv-testdev: not a device this machine has"),
    (["-device", "isa-debug-exit,iobase=0xf4,iosize=3"], "iosize must be 1, 2 or 4"),
    (["-device", "isa-debug-exit,irq=5"], "property 'irq' is not supported"),
    (["-display", "gtk"], "invalid choice: 'gtk'"),
    (["-serial", "pty"], "invalid choice: 'pty'"),
    (["-overcommit", "cpu-pm=on"], "unrecognized arguments: -overcommit"),
    # a value is the next word, even one starting with a dash (-append -pause_filter_test)
    (["-append", "-pause_filter_test", "-machine", "accel=hvf"], "it has no hvf"),
])
def test_unsupported_qemu_options_are_refused_by_name(capsys, image, argv, message):
    status, out, err = run_main(capsys, "run", "-kernel", image([0xF4]), *argv)
    assert status == 2 and out == ""
    assert message in err and len(err.splitlines()) == 1


def test_missing_kernel_is_reported_as_qemu_does(capsys, tmp_path):
    missing = str(tmp_path / "_NO_FILE_4Uhere_")
    status, _, err = run_main(capsys, "run", *SUITE_OPTIONS, "-kernel", missing)
    assert (status, err) == (2, f"kvmpy: error: could not load kernel '{missing}': "
                                f"no such file\n")


def test_image_and_kernel_together_are_refused(capsys, image):
    path = image([0xF4])
    status, _, err = run_main(capsys, "run", path, "-kernel", path)
    assert status == 2 and "both IMAGE" in err


def test_kvm_cannot_give_a_feature_it_lacks(capsys, image):
    """+feat needs KVM_GET_SUPPORTED_CPUID to have it (kvmpy's processor has no AVX)."""
    status, _, err = run_main(capsys, "run", "-kernel", image([0xF4]), "-cpu", "max,+avx")
    assert (status, err) == (2, "kvmpy: error: -cpu max,+avx: CPU feature avx: not supported "
                                "by this KVM (KVM_GET_SUPPORTED_CPUID)\n")


@pytest.mark.parametrize("cpu,expected", [
    ("max", SSE41_SHOWN), ("qemu64,+sse4.1", SSE41_SHOWN), ("max,-sse4.1", SSE41_HIDDEN),
    ("EPYC,sse4_1=off", SSE41_HIDDEN)])
def test_cpu_feature_edits_reach_the_guest(image, cpu, expected):
    status, err, _ = run_cli("run", *SUITE_OPTIONS, "-kernel", image(SSE41_PROBE), "-cpu", cpu)
    assert (status, err) == (expected, "")


def test_serial_follows_nodefaults_and_serial(image):
    code = image(OUT_COM1 + [0xB0, 0x00, 0xE6, 0xF4])
    for argv, out in ((["-nodefaults", "-serial", "stdio"], "!"), (["-nodefaults"], ""),
                      (["-serial", "none"], ""), ([], "!")):
        result = subprocess.run([sys.executable, "-m", "kvmpy.vmm.cli", "run", "-kernel", code,
                                 *argv], capture_output=True, text=True, timeout=120)
        assert (result.returncode, result.stdout, result.stderr) == (1, out, ""), argv


def test_debug_exit_where_the_device_option_puts_it(image):
    code = [0xBA, 0x01, 0x05,                    # mov dx, 0x501
            0xB0, 0x07, 0xEE]                    # mov al, 7; out dx, al
    argv = ["run", "-kernel", image(code + [0xFA, 0xF4])]
    assert run_cli(*argv, "-device", "isa-debug-exit,iobase=0x501,iosize=2")[0] == (7 << 1) | 1
    assert run_cli(*argv)[0] == 0                # 0x501 is nobody's: the guest halts


def test_device_help_lists_the_machine_s_devices(capsys):
    status, out, _ = run_main(capsys, "run", "-device", "help")
    assert status == 0 and 'name "isa-debug-exit"' in out.splitlines()
