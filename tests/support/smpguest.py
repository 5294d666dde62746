"""Several vCPUs of one VM, each run by its own thread calling KVM_RUN (as QEMU, kvmtool and
Firecracker run them), on either backend through kvmpy.api: the harness of
tests/kernel/test_smp_threads.py and of its stress child (``python -m tests.support.smp_stress``).

Every vCPU starts at ``guestvm.LOAD`` in real mode (CS base 0) with its index in ESI, as a VMM
starting the APs itself without an irqchip would set them up.
"""

import threading

from kvmpy.api import GuestMemory, VcpuExit
from tests.support.guestvm import LOAD

RAM = 1 << 20
FINAL = (VcpuExit.Hlt, VcpuExit.InternalError, VcpuExit.FailEntry, VcpuExit.Shutdown)


class SmpVm:
    """A VM with ``ncpu`` vCPUs over 1 MiB of RAM holding ``image`` at LOAD."""

    def __init__(self, kvm, image, ncpu, memory=()):
        self.mem = GuestMemory(RAM)
        self.vm = kvm.create_vm()
        self.vm.set_user_memory_region(0, 0, RAM, self.mem.host_addr)
        self.mem.write(LOAD, image)
        for addr, data in memory:
            self.mem.write(addr, data)
        cpuid = kvm.get_supported_cpuid()
        self.vcpus = [self.vm.create_vcpu(i) for i in range(ncpu)]
        for i, vcpu in enumerate(self.vcpus):
            vcpu.set_cpuid2(cpuid)
            sregs = vcpu.get_sregs()
            sregs.cs.base, sregs.cs.selector = 0, 0
            vcpu.set_sregs(sregs)
            regs = vcpu.get_regs()
            regs.rip, regs.rflags, regs.rsi = LOAD, 2, i
            vcpu.set_regs(regs)

    def word(self, addr):
        return int.from_bytes(self.mem.read(addr, 4), "little")

    def run_all(self, timeout=120, max_exits=100):
        """Run every vCPU on its own thread until it halts (or fails); the name of each
        vCPU's last exit and its final registers."""
        results = [None] * len(self.vcpus)

        def vcpu_thread(i):
            exits = []
            while len(exits) < max_exits:
                e = self.vcpus[i].run()
                exits.append(type(e).__name__)
                if isinstance(e, FINAL):
                    break
            results[i] = (exits[-1], self.vcpus[i].get_regs())

        threads = [threading.Thread(target=vcpu_thread, args=(i,)) for i in range(len(self.vcpus))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout)
        assert not any(t.is_alive() for t in threads), "a vCPU thread did not finish"
        return results

    def close(self):
        for vcpu in self.vcpus:
            vcpu.close()
        self.vm.close()
        self.mem.close()
