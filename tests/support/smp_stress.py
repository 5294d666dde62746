"""Atomic read-modify-writes of several vCPU threads, with the interpreter switching threads as
often as it can: ``python -m tests.support.smp_stress BACKEND NCPU N [--without-token]`` prints
the guest's three counters as JSON (one line).

Each vCPU counts to N three ways (``guest``): with LOCK XADD, by XCHG, and with a LOCK
CMPXCHG loop.  On an x86 processor every total is exactly NCPU * N.  ``sys.setswitchinterval(1e-6)`` asks
CPython to switch threads every microsecond, so without kvmpy's run token
(kernel/run_token.py: one vCPU executes guest code at a time) the Python threads split
instructions and updates are lost; ``--without-token`` replaces the token's acquisition with
one that always succeeds, to show that the test detects it.  It runs in a child process
because the switch interval is the whole interpreter's.
"""

import json
import sys

from kvmpy.api import Kvm
from tests.support.guestvm import assemble
from tests.support.smpguest import SmpVm

XADD, SWAP, CAS = 0x9000, 0x9004, 0x9008


def guest(n):
    """N times (ECX = N..1): LOCK XADD 1 to XADD; XCHG a value unique to the vCPU and the
    iteration (ECX + vCPU index << 20) into SWAP, adding what comes out to EBP; a LOCK
    CMPXCHG loop adding 1 to CAS.  Each value put into SWAP comes out exactly once (into some
    vCPU's EBP, or stays there), so SWAP + the EBPs is the sum of the values put in."""
    return assemble(f"""
.code16
 xor %ax, %ax
 mov %ax, %ds
 xor %ebp, %ebp
 mov ${n}, %ecx
1: mov $1, %eax
 lock xaddl %eax, {XADD}
 mov %esi, %eax
 shl $20, %eax
 add %ecx, %eax
 xchgl %eax, {SWAP}
 add %eax, %ebp
2: movl {CAS}, %eax
 mov %eax, %edx
 inc %edx
 lock cmpxchgl %edx, {CAS}
 jnz 2b
 dec %ecx
 jnz 1b
 hlt
""")


def main(argv):
    backend, ncpu, n = argv[0], int(argv[1]), int(argv[2])
    if "--without-token" in argv:
        from kvmpy.kernel.x86 import run
        run.kvm_run_token_acquire = lambda vcpu, interrupted: True
    sys.setswitchinterval(1e-6)
    with Kvm(backend) as kvm:
        vm = SmpVm(kvm, guest(n), ncpu)
        try:
            results = vm.run_all(timeout=600, max_exits=1_000_000)
            counts = {"exits": [r[0] for r in results], "xadd": vm.word(XADD),
                      "xchg": (vm.word(SWAP) + sum(r[1].rbp for r in results)) & 0xFFFFFFFF,
                      "xchg_in": sum((c + (i << 20)) for i in range(ncpu) for c in range(1, n + 1)) & 0xFFFFFFFF,
                      "cmpxchg": vm.word(CAS)}
        finally:
            vm.close()
    print(json.dumps(counts))


if __name__ == "__main__":
    main(sys.argv[1:])
