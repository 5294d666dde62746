"""kvmpy benchmarks: guest MIPS, exit round-trip, boot time, memory.

    python bench/run.py            # all figures
    python bench/run.py --quick    # smaller workloads

MIPS workloads run on the processor alone (``kvmpy.hw.snippet``, 64-bit flat code
at fixed addresses): an integer/branch loop, a byte sieve over 64 KiB, and a
memcpy-heavy loop (REP MOVSB plus a byte-copy loop); the sieve also runs as
32-bit protected-mode code.  Exit round-trip and boot
time go through the whole stack (``kvmpy.api`` / ``kvmpy.vmm``), on kvmpy's
kernel and, where /dev/kvm works, on the host's KVM for comparison.
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import tempfile
import time

from kvmpy.hw.snippet import DATA_ADDR, run_snippet

INT_LOOP = """
    mov ecx, {n}
1:  add eax, ecx
    xor edx, eax
    lea rbx, [rbx + rax*2]
    dec ecx
    jnz 1b
"""

# Sieve of Eratosthenes over a 64 KiB byte array, then a pass counting the primes,
# repeated {n} times.  The counting loop branches around its increment, so it is
# three blocks per iteration rather than one self-loop: the block-to-block path counts.
SIEVE = """
    mov r9d, {n}
1:  mov edi, {data}
    mov ecx, 65536
    mov al, 1
    rep stosb
    mov ebx, 2
2:  mov eax, ebx
    imul eax, ebx
    cmp eax, 65536
    jae 5f
    cmp byte ptr [{data} + ebx], 0
    je 4f
3:  mov byte ptr [{data} + eax], 0
    add eax, ebx
    cmp eax, 65536
    jb 3b
4:  inc ebx
    jmp 2b
5:  xor edx, edx
    mov ebx, 2
6:  cmp byte ptr [{data} + ebx], 0
    je 7f
    inc edx
7:  inc ebx
    cmp ebx, 65536
    jb 6b
    dec r9d
    jnz 1b
"""
MEMCPY = """
    mov r8d, {n}
6:  mov rsi, {data}
    mov rdi, {data} + 32768
    mov ecx, 16384
    rep movsb
    mov rsi, {data}
    xor ecx, ecx
7:  mov al, [rsi + rcx]
    mov [rsi + rcx + 49152], al
    inc ecx
    cmp ecx, 256
    jb 7b
    dec r8d
    jnz 6b
"""


def assemble(src: str, bits: int = 64) -> bytes:
    with tempfile.TemporaryDirectory() as d:
        s, o, b = (os.path.join(d, n) for n in ("a.s", "a.o", "a.bin"))
        with open(s, "w") as f:
            f.write(".intel_syntax noprefix\n.code%d\n" % bits + src + "\n")
        subprocess.run(["as", "--64", "-o", o, s], check=True)
        subprocess.run(["objcopy", "-O", "binary", "-j", ".text", o, b], check=True)
        with open(b, "rb") as f:
            return f.read()


def mips(name, src, bits=64, check=None, **kw):
    code = assemble(src.format(data=DATA_ADDR, **kw), bits)
    t = time.perf_counter()
    r = run_snippet(code, {}, 2, bytes(65536), budget=10 ** 9, bits=bits)
    dt = time.perf_counter() - t
    if check is not None:
        reg, want = check
        assert r.regs[reg] == want, "%s: %s = %d, expected %d" % (name, reg, r.regs[reg], want)
    print("%-34s %10d insns %7.2f s %7.2f MIPS" % (name, r.icount, dt, r.icount / dt / 1e6))
    return r.icount / dt


def exit_roundtrip(backend, n):
    """KVM_RUN round-trips per second for a guest doing OUT in a loop (real mode)."""
    from kvmpy.api import GuestMemory, Kvm
    from kvmpy.api.exits import Io
    code = bytes([0xE6, 0x80, 0xEB, 0xFC])          # out 0x80, al; jmp $-2
    with Kvm(backend) as kvm, GuestMemory(0x10000) as mem:
        mem.write(0x1000, code)
        vm = kvm.create_vm()
        vm.set_user_memory_region(0, 0, mem.size, mem.host_addr)
        vcpu = vm.create_vcpu(0)
        sregs = vcpu.get_sregs()
        sregs.cs.base, sregs.cs.selector = 0, 0
        vcpu.set_sregs(sregs)
        regs = vcpu.get_regs()
        regs.rip, regs.rflags = 0x1000, 2
        vcpu.set_regs(regs)
        t = time.perf_counter()
        for _ in range(n):
            x = vcpu.run()
            assert isinstance(x, Io), x
        dt = time.perf_counter() - t
    print("%-34s %10d exits %7.2f s %7.1f us/exit" % ("exit round-trip (%s)" % backend, n, dt, dt / n * 1e6))


def boot(backend):
    from kvmpy.guests import image_path
    from kvmpy.vmm.machine import Machine
    out = []
    t = time.perf_counter()
    with Machine(image_path("demo"), accel=backend, serial_sink=out.append) as m:
        res = m.run(timeout=300)
    dt = time.perf_counter() - t
    print("%-34s %10s %7.2f s" % ("demo boot to exit (%s)" % backend, res.reason, dt))


def host_ok():
    try:
        os.close(os.open("/dev/kvm", os.O_RDWR))
        return True
    except OSError:
        return False


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    a = ap.parse_args()
    scale = 1 if a.quick else 5
    print("kvmpy benchmarks (CPython %s)" % ".".join(map(str, __import__("sys").version_info[:3])))
    mips("integer/branch loop (64-bit)", INT_LOOP, n=200_000 * scale)
    primes = ("rdx", 6542)                          # primes below 65536
    mips("sieve over 64 KiB (64-bit)", SIEVE, check=primes, n=scale)
    mips("sieve over 64 KiB (32-bit)", SIEVE.replace("r9d", "esi"), bits=32, check=primes, n=scale)
    mips("memcpy: rep movsb + byte loop", MEMCPY, n=20 * scale)
    exit_roundtrip("soft", 2000 * scale)
    if host_ok():
        exit_roundtrip("host", 2000 * scale)
    boot("soft")
    if host_ok():
        boot("host")
    print("%-34s %10.1f MiB" % ("peak RSS", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024))


if __name__ == "__main__":
    main()
