"""A minimal VMM written against raw KVM ioctls, for differential runs.

It takes its four "system calls" from the caller, so the same program drives the host's
/dev/kvm (``HOST``: os.open, fcntl.ioctl, mmap.mmap, os.close) and kvmpy's soft kernel
(the ``kvmpy.syscalls`` module), and the two runs can be compared field by field:

    syscalls.open(path) -> fd            syscalls.ioctl(fd, request, arg=0) -> int
    syscalls.mmap(fd, length) -> buffer  syscalls.close(fd)
    (mmap with fd -1 is anonymous memory; the buffer must support the buffer protocol)

``run_guest(image, syscalls)`` loads a flat image at guest-physical 0x7c00 into 2 MiB of RAM,
starts one vCPU in real mode at 0:0x7c00 and serves its exits until HLT, the debug-exit
port, an unexpected exit or ``max_exits``. The devices are those the guests in
``kvmpy/guests`` expect (see boot.inc): COM1 output at 0x3f8, fixed answers to IN, an MMIO
device at 0xd0000000 answering reads from a fixed byte pattern and recording writes, and
isa-debug-exit at 0xf4. The result is a JSON-ready dict: console text, the exit sequence,
the debug-exit value and the final REGS/SREGS.

Command line:  python tests/support/rawvmm.py [--soft] GUEST   (GUEST: a name like "longmode" or a path)
"""

import ctypes
import errno
import json
import mmap as _mmap
import os
import sys
import types

from kvmpy import compat
from kvmpy.uapi import kvm as uapi

GUEST_RAM_SIZE = 2 << 20
LOAD_ADDRESS = 0x7C00
COM1_THR = 0x3F8
DEBUG_EXIT_PORT = 0xF4
IN_ANSWERS = {0x3FD: 0x60, 0x510: 0xFEEDC0DE}   # port -> value (little-endian, size-truncated)
OPEN_BUS = 0xFF                                   # each byte of an IN from any other port
MMIO_BASE = 0xD0000000
MMIO_PATTERN = (0x9ABCDEF012345678).to_bytes(8, "little")  # read of byte i -> pattern[i % 8]
CPUID_MAX_ENTRIES = 256


def _host_mmap(fd, length):
    if fd == -1:
        return _mmap.mmap(-1, length, _mmap.MAP_PRIVATE | _mmap.MAP_ANONYMOUS)
    return _mmap.mmap(fd, length, _mmap.MAP_SHARED, _mmap.PROT_READ | _mmap.PROT_WRITE)


HOST = types.SimpleNamespace(
    open=lambda path: os.open(path, os.O_RDWR | os.O_CLOEXEC),
    ioctl=lambda fd, request, arg=0: compat.ioctl(fd, request, arg),
    mmap=_host_mmap,
    close=os.close,
)


class GuestError(Exception):
    """The run could not be set up (an ioctl failed before the guest started)."""


def host_kvm_module():
    """The vendor module behind the host's /dev/kvm ("kvm_pvm", "kvm_intel", "kvm_amd"), or
    None.  Where the host's answer is a module's quirk rather than KVM's design (kvm_pvm runs
    guests in KVM's emulator), a test expects the quirk only under that module."""
    for name in ("kvm_pvm", "kvm_intel", "kvm_amd"):       # kvm_pvm serves /dev/kvm when loaded
        if os.path.isdir("/sys/module/" + name):
            return name
    return None


def kvm_pvm_quirks(quirks):
    """``quirks`` ({name: why}) where the host's /dev/kvm is kvm_pvm's, else {}: the skips or
    expected failures that come from kvm_pvm running every guest instruction in KVM's
    emulator, which kvm_intel and kvm_amd do not."""
    return dict(quirks) if host_kvm_module() == "kvm_pvm" else {}


def _supported_cpuid_of(sc, kvm_fd):
    cpuid = uapi.with_entries(uapi.kvm_cpuid2, CPUID_MAX_ENTRIES)()
    cpuid.nent = CPUID_MAX_ENTRIES
    sc.ioctl(kvm_fd, uapi.KVM_GET_SUPPORTED_CPUID, cpuid)
    return cpuid


def supported_entry(sc, function, index=0):
    """Leaf function.index of ``sc``'s KVM_GET_SUPPORTED_CPUID (a kvm_cpuid_entry2), or None:
    what a host's answer depends on (its features, MAXPHYADDR) is read from the host, not
    assumed."""
    kvm_fd = sc.open("/dev/kvm")
    try:
        cpuid = _supported_cpuid_of(sc, kvm_fd)
    finally:
        sc.close(kvm_fd)
    return next((e for e in cpuid.entries[:cpuid.nent] if e.function == function and e.index == index), None)


def supported_feature(sc, function, index, register, bit):
    """Whether ``sc``'s KVM_GET_SUPPORTED_CPUID sets ``register``[bit] of leaf function.index."""
    entry = supported_entry(sc, function, index)
    return entry is not None and bool(getattr(entry, register) >> bit & 1)


def _address_of(buffer):
    return ctypes.addressof(ctypes.c_char.from_buffer(buffer))


def _struct_dict(obj):
    """A ctypes structure as nested dicts of hex strings (padding fields left out)."""
    out = {}
    for name, *_ in obj._fields_:
        if name.startswith("padding"):
            continue
        value = getattr(obj, name)
        if isinstance(value, ctypes.Structure):
            out[name] = _struct_dict(value)
        elif isinstance(value, ctypes.Array):
            out[name] = [hex(v) for v in value]
        else:
            out[name] = hex(value)
    return out


def in_answer(port, size):
    """The bytes an IN of ``size`` bytes from ``port`` reads."""
    if port in IN_ANSWERS:
        return IN_ANSWERS[port].to_bytes(4, "little")[:size]
    return bytes([OPEN_BUS]) * size


def mmio_answer(addr, length):
    """The bytes an MMIO read of ``length`` bytes at ``addr`` returns."""
    start = addr - MMIO_BASE
    return bytes(MMIO_PATTERN[(start + k) % 8] for k in range(length))


class _Vm:
    """File descriptors and mappings of one VM with one vCPU; closed in reverse order."""

    def __init__(self, sc):
        self.sc = sc
        self.fds = []
        self.maps = []

    def open(self, path):
        self.fds.append(self.sc.open(path))
        return self.fds[-1]

    def adopt(self, fd):
        self.fds.append(fd)
        return fd

    def map(self, fd, length):
        self.maps.append(self.sc.mmap(fd, length))
        return self.maps[-1]

    def close(self):
        for m in reversed(self.maps):
            m.close()
        for fd in reversed(self.fds):
            self.sc.close(fd)


def _setup(vm, image):
    """Create VM, memory, vCPU and initial state; return (vcpu_fd, run_buffer)."""
    sc = vm.sc
    kvm_fd = vm.open("/dev/kvm")
    version = sc.ioctl(kvm_fd, uapi.KVM_GET_API_VERSION)
    if version != uapi.KVM_API_VERSION:
        raise GuestError(f"KVM_GET_API_VERSION returned {version}")
    vm_fd = vm.adopt(sc.ioctl(kvm_fd, uapi.KVM_CREATE_VM, 0))

    ram = vm.map(-1, GUEST_RAM_SIZE)
    ram[LOAD_ADDRESS:LOAD_ADDRESS + len(image)] = image
    region = uapi.kvm_userspace_memory_region(
        slot=0, flags=0, guest_phys_addr=0, memory_size=GUEST_RAM_SIZE,
        userspace_addr=_address_of(ram))
    sc.ioctl(vm_fd, uapi.KVM_SET_USER_MEMORY_REGION, region)

    vcpu_fd = vm.adopt(sc.ioctl(vm_fd, uapi.KVM_CREATE_VCPU, 0))
    run_size = sc.ioctl(kvm_fd, uapi.KVM_GET_VCPU_MMAP_SIZE, 0)
    run_buf = vm.map(vcpu_fd, run_size)

    sc.ioctl(vcpu_fd, uapi.KVM_SET_CPUID2, _supported_cpuid_of(sc, kvm_fd))

    sregs = uapi.kvm_sregs()
    sc.ioctl(vcpu_fd, uapi.KVM_GET_SREGS, sregs)
    sregs.cs.base = 0
    sregs.cs.selector = 0
    sc.ioctl(vcpu_fd, uapi.KVM_SET_SREGS, sregs)
    regs = uapi.kvm_regs(rip=LOAD_ADDRESS, rflags=0x2)
    sc.ioctl(vcpu_fd, uapi.KVM_SET_REGS, regs)
    return vcpu_fd, run_buf


def _serve_io(run, run_buf, result):
    """Handle a KVM_EXIT_IO; return True when the guest asked to end the run."""
    io = run.io
    nbytes = io.size * io.count
    data_at = io.data_offset
    record = {"reason": "IO", "direction": "out" if io.direction == uapi.KVM_EXIT_IO_OUT else "in",
              "port": hex(io.port), "size": io.size, "count": io.count}
    if io.direction == uapi.KVM_EXIT_IO_OUT:
        data = bytes(run_buf[data_at:data_at + nbytes])
        record["data"] = data.hex()
        result["exits"].append(record)
        if io.port == COM1_THR:
            result["console"] += data.decode("latin-1")
        elif io.port == DEBUG_EXIT_PORT:
            result["exit_value"] = data[0]
            return True
        return False
    run_buf[data_at:data_at + nbytes] = in_answer(io.port, io.size) * io.count
    result["exits"].append(record)
    return False


def _serve_mmio(run, result):
    mmio = run.mmio
    record = {"reason": "MMIO", "phys_addr": hex(mmio.phys_addr), "len": mmio.len,
              "is_write": bool(mmio.is_write)}
    if mmio.is_write:
        record["data"] = bytes(mmio.data[:mmio.len]).hex()
    else:
        answer = mmio_answer(mmio.phys_addr, mmio.len)
        ctypes.memmove(mmio.data, answer, len(answer))
    result["exits"].append(record)


def _finish_pending(sc, vcpu_fd, run, result):
    """Complete the exit being served (e.g. the final OUT) with immediate_exit, as VMMs do."""
    run.immediate_exit = 1
    try:
        sc.ioctl(vcpu_fd, uapi.KVM_RUN, 0)
        result["completion"] = "returned 0"
    except OSError as exc:
        result["completion"] = errno.errorcode.get(exc.errno, str(exc.errno))
    run.immediate_exit = 0


def _other_exit(run):
    reason = run.exit_reason
    record = {"reason": uapi.EXIT_REASON_NAMES.get(reason, str(reason))}
    if reason == uapi.KVM_EXIT_INTERNAL_ERROR:
        record["suberror"] = run.internal.suberror
        record["data"] = [hex(run.internal.data[i]) for i in range(min(run.internal.ndata, 16))]
    elif reason == uapi.KVM_EXIT_FAIL_ENTRY:
        record["hardware_entry_failure_reason"] = hex(run.fail_entry.hardware_entry_failure_reason)
    return record


def run_guest(image, syscalls=HOST, max_exits=20000):
    """Run ``image`` (bytes) to its end on the backend given by ``syscalls``; see the module doc."""
    result = {"console": "", "exits": [], "exit_value": None, "completion": None,
              "regs": None, "sregs": None}
    vm = _Vm(syscalls)
    run = None
    try:
        vcpu_fd, run_buf = _setup(vm, image)
        run = uapi.kvm_run.from_buffer(run_buf)
        for _ in range(max_exits):
            syscalls.ioctl(vcpu_fd, uapi.KVM_RUN, 0)
            reason = run.exit_reason
            if reason == uapi.KVM_EXIT_IO:
                if _serve_io(run, run_buf, result):
                    _finish_pending(syscalls, vcpu_fd, run, result)
                    break
            elif reason == uapi.KVM_EXIT_MMIO:
                _serve_mmio(run, result)
            else:
                result["exits"].append(_other_exit(run))
                break
        else:
            result["exits"].append({"reason": "VMM_GAVE_UP", "max_exits": max_exits})
        regs, sregs = uapi.kvm_regs(), uapi.kvm_sregs()
        syscalls.ioctl(vcpu_fd, uapi.KVM_GET_REGS, regs)
        syscalls.ioctl(vcpu_fd, uapi.KVM_GET_SREGS, sregs)
        result["regs"] = _struct_dict(regs)
        result["sregs"] = _struct_dict(sregs)
    finally:
        del run                # drop the ctypes view so the mapping can be unmapped
        vm.close()
    return result


RUN_FIELDS = ("console", "exits", "exit_value", "completion", "regs", "sregs")


def assert_same_run(result, reference):
    """Two runs of a guest ended alike: console, exit sequence, final state (field by field,
    so a failure names what differs)."""
    for field in RUN_FIELDS:
        assert result[field] == reference[field], field


def to_json(result):
    """``result`` as JSON text with one exit per line, for reading and for diffs."""
    rest = json.dumps({k: v for k, v in result.items() if k != "exits"}, indent=1)
    exits = ",\n  ".join(json.dumps(e) for e in result["exits"])
    return rest[:-2] + ',\n "exits": [\n  ' + exits + "\n ]\n}\n"


def load_guest(name_or_path):
    """Image bytes of a guest: a kvmpy.guests name ("longmode") or a file path."""
    if os.path.sep in name_or_path or name_or_path.endswith(".bin"):
        with open(name_or_path, "rb") as f:
            return f.read()
    from kvmpy.guests import load_image
    return load_image(name_or_path)


def main(argv=None):
    import argparse
    parser = argparse.ArgumentParser(description="Run a flat guest image on raw KVM ioctls.")
    parser.add_argument("--soft", action="store_true", help="use kvmpy.syscalls, not /dev/kvm")
    parser.add_argument("guest", help="guest name (kvmpy.guests) or image path")
    args = parser.parse_args(argv)
    if args.soft:
        from kvmpy import syscalls
    else:
        syscalls = HOST
    sys.stdout.write(to_json(run_guest(load_guest(args.guest), syscalls)))


if __name__ == "__main__":
    main()
