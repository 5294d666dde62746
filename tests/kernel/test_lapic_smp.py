"""Several vCPUs started the way firmware starts them, on the host's /dev/kvm and on kvmpy
(both vendor modules, both MMU modes), one thread per vCPU calling KVM_RUN.

The boot processor (32-bit protected mode) broadcasts INIT and a start-up IPI to all but
itself; each application processor was created waiting (KVM_MP_STATE_UNINITIALIZED: its
KVM_RUN blocks, then answers EAGAIN once INIT arrives) and starts in real mode at the SIPI
vector's page.  Each AP adds to a shared counter with LOCK INC, switches its LAPIC to x2APIC
mode and sends the BSP a fixed IPI through the ICR MSR, each AP its own vector (one IRR bit
per vector: the same vector twice before the BSP takes it would be one interrupt); the BSP
counts the IPIs in its handlers and reports once every AP has called: the total is exact."""

import errno
import shutil
import threading

import pytest

from kvmpy.uapi import kvm as uapi
from tests.support.apicguest import COUNT, DONE, LAPIC_BASE, guest, handler, port_exit, watchdog
from tests.support.guestvm import assemble, create_irqchip, machine
from tests.support.vendors import scenario_tests

pytestmark = pytest.mark.skipif(shutil.which("as") is None or shutil.which("ld") is None,
                                reason="needs GNU as and ld")

AP_START = 0xA000               # SIPI vector 0xa (the BSP's code is at 0x7c00)
COUNTER = 0x9200
ADDS = 500                      # LOCK INCs per AP
IPI_VEC = 0x48                  # + the AP's x2APIC ID - 1
AP_DONE = 0x530

AP_CODE = f"""
.code16
 mov ${ADDS}, %cx
1: lock incl {COUNTER:#x}
 loop 1b
 mov $0x1b, %ecx
 rdmsr
 or $0xc00, %eax
 wrmsr
 mov $0x802, %ecx
 rdmsr
 lea {IPI_VEC - 1:#x}(%eax), %eax
 mov $0x830, %ecx
 xor %edx, %edx
 wrmsr
 mov ${AP_DONE:#x}, %dx
 out %al, %dx
2: hlt
 jmp 2b
"""


def _bsp_setup():
    return (f" movl $0, {COUNTER:#x}\n"
            f" movl $0xc4500, {LAPIC_BASE + 0x300:#x}\n"                    # INIT, all but self
            f" movl $0xc46{AP_START >> 12:02x}, {LAPIC_BASE + 0x300:#x}\n")  # SIPI, all but self


def _ap_thread(sc, fd, buf, results, i):
    """KVM_RUN until the AP reports AP_DONE: EAGAIN (INIT taken) runs again."""
    run = uapi.kvm_run.from_buffer(buf)
    seen = []
    for _ in range(1000):
        try:
            sc.ioctl(fd, uapi.KVM_RUN, 0)
        except OSError as exc:
            seen.append(errno.errorcode[exc.errno])
            if exc.errno in (errno.EAGAIN, errno.EINTR):
                continue
            break
        if run.exit_reason == uapi.KVM_EXIT_IO and run.io.port == AP_DONE:
            seen.append("done")
            break
        seen.append(uapi.EXIT_REASON_NAMES.get(run.exit_reason, run.exit_reason))
    del run                         # the view, before the machine unmaps the page
    results[i] = seen


def startup(aps):
    @machine
    def scenario(make):
        handlers = {IPI_VEC + i: handler("I") for i in range(aps)}
        m = make(assemble(guest(_bsp_setup(), handlers, aps)), vm_setup=create_irqchip)
        sc = m.sc
        m.ram[AP_START:AP_START + 0x100] = assemble(AP_CODE)[:0x100].ljust(0x100, b"\x90")
        mmap_size = sc.ioctl(m.kvm_fd, uapi.KVM_GET_VCPU_MMAP_SIZE, 0)
        cpuid = uapi.with_entries(uapi.kvm_cpuid2, 256)()
        cpuid.nent = 256
        sc.ioctl(m.kvm_fd, uapi.KVM_GET_SUPPORTED_CPUID, cpuid)
        threads, results, states = [], {}, []
        for i in range(1, aps + 1):
            fd = m.vm.adopt(sc.ioctl(m.vm_fd, uapi.KVM_CREATE_VCPU, i))
            buf = m.vm.map(fd, mmap_size)
            sc.ioctl(fd, uapi.KVM_SET_CPUID2, cpuid)       # x2APIC, for the ICR MSR
            mp = uapi.kvm_mp_state()
            sc.ioctl(fd, uapi.KVM_GET_MP_STATE, mp)
            states.append(mp.mp_state)
            threads.append(threading.Thread(target=_ap_thread, args=(sc, fd, buf, results, i), daemon=True))
        for t in threads:
            t.start()
        reports = []
        with watchdog(60):
            for _ in range(200):
                r = port_exit(m)
                reports.append(r if isinstance(r, tuple) else r.get("reason"))
                if not isinstance(r, tuple) or r[0] == DONE:
                    break
        for t in threads:
            t.join(30)
        counter = int.from_bytes(m.ram[COUNTER:COUNTER + 4], "little")
        hung = sum(t.is_alive() for t in threads)
        firsts = sorted({tuple(v[:1]) for v in results.values()})
        return dict(console=m.console, last=reports[-1], ipis=int.from_bytes(m.ram[COUNT:COUNT + 4], "little"),
                    counter=counter, ap_states=states, ap_ends=sorted(v[-1] for v in results.values()),
                    ap_first=[list(f) for f in firsts], hung=hung)
    return scenario


SCENARIOS = {"two": startup(1), "four": startup(3)}


def _expected(aps):
    # each AP's first KVM_RUN waited for INIT and answered EAGAIN (or, when INIT came first,
    # returned at once with EAGAIN as well)
    return dict(console="I" * aps, last=[DONE, aps], ipis=aps, counter=ADDS * aps,
                ap_states=[uapi.KVM_MP_STATE_UNINITIALIZED] * aps, ap_ends=["done"] * aps, ap_first=[["EAGAIN"]], hung=0)


EXPECTED = {"two": _expected(1), "four": _expected(3)}


test_startup_on_the_host, test_startup_on_kvmpy = scenario_tests("tests.kernel.test_lapic_smp", SCENARIOS, EXPECTED)
