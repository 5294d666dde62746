"""Several vCPUs of one VM, each run by its own thread calling KVM_RUN, as QEMU, kvmtool
and Firecracker run them; on the host's /dev/kvm (the oracle) and on kvmpy.

kvmpy executes guest code one vCPU at a time under the VM's run token
(kernel/run_token.py); these tests check what a guest sees of that: LOCK-prefixed
read-modify-writes of all vCPUs add up exactly, a vCPU spinning on a memory word that
another vCPU sets does not starve it, and code one vCPU writes is what another then runs.
"""

import threading

import pytest

from kvmpy.api import GuestMemory, Kvm, VcpuExit
from tests.support.guestvm import LOAD, assemble

RAM = 1 << 20
COUNTER = 0x9000        # the shared counter
FLAG = 0x9004           # set by vCPU 0 once it has rewritten PATCH
READY = 0x9008          # set by vCPU 1 once it has run PATCH's first version
PATCH = 0x9100          # code vCPU 1 runs before and after vCPU 0 rewrote it
N = 3000                # increments per vCPU


def guest(ncpu):
    """Each vCPU starts at LOAD in real mode with its index in ESI (the test sets it, as a
    VMM starting APs without an irqchip does), adds N to COUNTER with LOCK INC, then:
    vCPU 0 spins (PAUSE) until all ncpu*N increments are in and vCPU 1 set READY, rewrites PATCH's immediate from
    1 to 2 and sets FLAG; vCPU 1 calls PATCH (AL=1 -> BL), sets READY, spins on FLAG, calls it again
    (AL -> BH); all halt."""
    return assemble(f"""
.code16
 xor %ax, %ax
 mov %ax, %ds
 mov ${N}, %ecx
1: lock incl {COUNTER}
 dec %ecx
 jnz 1b
 cmp $0, %esi
 jne 3f
2: pause
 cmpl ${ncpu * N}, {COUNTER}
 jne 2b
 testl $1, {READY}
 jz 2b
 movb $2, {PATCH + 1}
 lock orl $1, {FLAG}
 hlt
3: cmp $1, %esi
 jne 5f
 call patch
 mov %al, %bl
 lock orl $1, {READY}
4: testl $1, {FLAG}
 jz 4b
 call patch
 mov %al, %bh
5: hlt
patch: jmp {PATCH}
""")


PATCH_V1 = bytes([0xB0, 0x01, 0xC3])         # mov $1, %al; ret


@pytest.fixture(params=[pytest.param("host", marks=pytest.mark.host), "soft"])
def kvm(request):
    with Kvm(request.param) as k:
        yield k


def _run_smp(kvm, ncpu):
    """Run guest(ncpu) on ncpu vCPU threads until each halts; the exits and final RBX of
    each vCPU, and the memory."""
    with GuestMemory(RAM) as mem:
        vm = kvm.create_vm()
        vm.set_user_memory_region(0, 0, RAM, mem.host_addr)
        mem.write(LOAD, guest(ncpu))
        mem.write(PATCH, PATCH_V1)
        vcpus = [vm.create_vcpu(i) for i in range(ncpu)]
        for i, vcpu in enumerate(vcpus):
            vcpu.set_cpuid2(kvm.get_supported_cpuid())
            sregs = vcpu.get_sregs()
            sregs.cs.base, sregs.cs.selector = 0, 0
            vcpu.set_sregs(sregs)
            regs = vcpu.get_regs()
            regs.rip, regs.rflags, regs.rsi = LOAD, 2, i
            vcpu.set_regs(regs)
        results = [None] * ncpu

        def vcpu_thread(i):
            exits = []
            while len(exits) < 100:
                e = vcpus[i].run()
                exits.append(type(e).__name__)
                if isinstance(e, (VcpuExit.Hlt, VcpuExit.InternalError, VcpuExit.FailEntry,
                                  VcpuExit.Shutdown)):
                    break
            results[i] = (exits[-1], vcpus[i].get_regs().rbx & 0xFFFF)

        threads = [threading.Thread(target=vcpu_thread, args=(i,)) for i in range(ncpu)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert not any(t.is_alive() for t in threads)
        counter = int.from_bytes(mem.read(COUNTER, 4), "little")
        for vcpu in vcpus:
            vcpu.close()
        vm.close()
        return results, counter


@pytest.mark.parametrize("ncpu", [2, 4])
def test_lock_inc_spin_and_cross_vcpu_code(kvm, ncpu):
    results, counter = _run_smp(kvm, ncpu)
    assert counter == ncpu * N                  # no LOCK INC lost between vCPUs
    assert [r[0] for r in results] == ["Hlt"] * ncpu    # vCPU 0's spin ended: it was not starved
    assert results[1][1] == 0x0201              # vCPU 1 ran PATCH's old bytes, then the new ones
