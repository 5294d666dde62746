"""What several vCPU threads cost on kvmpy: guest instructions per second of 1, 2 and 4 vCPU
threads that all spin, and how often the run token changes hands.

    python bench/smp.py                 # best of 3 runs of 2 s per figure
    python bench/smp.py --seconds 5 --repeats 5

Each vCPU of one VM runs ``1: inc %eax; jmp 1b`` in real mode on its own thread calling
KVM_RUN, as a VMM runs them, for the given wall-clock time; then the main thread sets every
vCPU's ``immediate_exit`` and signals its thread.  A vCPU's instructions are twice its EAX.
kvmpy executes guest code one vCPU at a time (kernel/run_token.py), so the total can at best
stay that of one vCPU.  Rates per wall-clock second depend on how much CPU the machine's
other load leaves the process, so the figure that shows the token's cost is the rate per
second of the process's CPU time; the last column is its share of one vCPU's rate without
the token (its acquisition replaced by one that always succeeds, which only a single vCPU
may do).
"""

from __future__ import annotations

import argparse
import signal
import threading
import time

from kvmpy.api import GuestMemory, Kvm
from kvmpy.kernel import fs
from kvmpy.kernel.x86 import run as x86_run

LOAD = 0x7C00
SPIN = bytes([0x66, 0x40, 0xEB, 0xFC])      # inc %eax; jmp -4 (real mode, 32-bit EAX)


def measure(ncpu: int, seconds: float) -> tuple[float, float, float]:
    """(guest instructions per second of all vCPUs together, per second of the process's CPU
    time, token hand-offs per second)."""
    signal.signal(signal.SIGUSR1, lambda *a: None)
    with Kvm("soft") as kvm, GuestMemory(1 << 20) as mem:
        vm = kvm.create_vm()
        vm.set_user_memory_region(0, 0, mem.size, mem.host_addr)
        mem.write(LOAD, SPIN)
        vcpus = [vm.create_vcpu(i) for i in range(ncpu)]
        for vcpu in vcpus:
            sregs = vcpu.get_sregs()
            sregs.cs.base, sregs.cs.selector = 0, 0
            vcpu.set_sregs(sregs)
            regs = vcpu.get_regs()
            regs.rip, regs.rflags, regs.rax = LOAD, 2, 0
            vcpu.set_regs(regs)

        def loop(vcpu):
            while not vcpu.immediate_exit:
                try:
                    vcpu.run()
                except InterruptedError:
                    pass

        threads = [threading.Thread(target=loop, args=(v,)) for v in vcpus]
        token = fs.lookup_file(vm.fd).private_data.run_token
        start_handoffs = token.handoffs
        t0, c0 = time.perf_counter(), time.process_time()
        for t in threads:
            t.start()
        time.sleep(seconds)
        for v, t in zip(vcpus, threads):
            v.immediate_exit = True
            signal.pthread_kill(t.ident, signal.SIGUSR1)
        for t in threads:
            t.join()
        elapsed, cpu = time.perf_counter() - t0, time.process_time() - c0
        insns = sum(2 * (v.get_regs().rax & 0xFFFFFFFF) for v in vcpus)
        handoffs = token.handoffs - start_handoffs
        for v in vcpus:
            v.close()
        vm.close()
    return insns / elapsed, insns / cpu, handoffs / elapsed


def best(ncpu, seconds, repeats):
    """The best of ``repeats`` measurements by instructions per CPU second (the machine's
    other load only slows one)."""
    return max((measure(ncpu, seconds) for _ in range(repeats)), key=lambda r: r[1])


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seconds", type=float, default=2.0)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args(argv)
    acquire = x86_run.kvm_run_token_acquire
    x86_run.kvm_run_token_acquire = lambda vcpu, interrupted: True
    try:
        _, untokened, _ = best(1, args.seconds, args.repeats)
    finally:
        x86_run.kvm_run_token_acquire = acquire
    print(f"1 vCPU without the token: {untokened / 1e6:.2f} M guest insns per CPU second")
    print(f"{'vCPU threads':>12} {'M insns/s':>10} {'per CPU s':>10} {'hand-offs/s':>12} {'of 1 vCPU':>10}")
    for ncpu in (1, 2, 4):
        rate, per_cpu, handoffs = best(ncpu, args.seconds, args.repeats)
        print(f"{ncpu:>12} {rate / 1e6:>10.2f} {per_cpu / 1e6:>10.2f} {handoffs:>12.0f} {per_cpu / untokened:>10.0%}")


if __name__ == "__main__":
    main()
