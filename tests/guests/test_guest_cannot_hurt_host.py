"""Whatever bytes a guest executes end as guest exceptions or VM exits, never a traceback."""

import random

import pytest

from kvmpy.api import GuestMemory, Kvm
from kvmpy.api.exits import Io, Mmio


@pytest.mark.parametrize("seed", range(12))
def test_random_bytes_never_escape_kvm_run(seed):
    rng = random.Random(seed)
    with Kvm("soft") as kvm, GuestMemory(0x20000) as mem:
        mem.write(0, bytes(rng.randrange(256) for _ in range(0x20000)))
        vm = kvm.create_vm()
        vm.set_user_memory_region(0, 0, mem.size, mem.host_addr)
        vcpu = vm.create_vcpu(0)
        sregs = vcpu.get_sregs()
        sregs.cs.base, sregs.cs.selector = 0, 0
        if seed % 2:                      # half the runs start in 32-bit protected mode
            sregs.cr0 |= 1
            sregs.cs.db, sregs.cs.type, sregs.cs.limit, sregs.cs.g = 1, 0xB, 0xFFFFFFFF, 1
        vcpu.set_sregs(sregs)
        regs = vcpu.get_regs()
        regs.rip, regs.rflags, regs.rsp = 0x7C00, 2, 0x8000
        vcpu.set_regs(regs)
        for _ in range(200):
            x = vcpu.run()                # must return an exit, whatever the bytes do
            if isinstance(x, (Io, Mmio)):
                continue
            assert x.name in ("HLT", "SHUTDOWN", "INTERNAL_ERROR"), x
            break
