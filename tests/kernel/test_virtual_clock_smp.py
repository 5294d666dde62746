"""The virtual clock with a vCPU that waits while another runs (kernel/hrtimer.py, x86/run.py).

Virtual time is the VM's retired instructions; only when *every* vCPU is idle may it jump to
the next timer deadline.  Found booting Linux with ``-smp 2``: the AP, waiting for INIT and
SIPI in kvm_vcpu_block, skipped the clock to each PIT deadline while the BSP ran, so the
BSP took a timer interrupt after every few instructions and never got past ACPI's start.

The BSP arms its LAPIC timer about two seconds ahead (masked), then counts a loop of a
million instructions between two RDTSCs while vCPU 1 sits in KVM_RUN waiting for INIT: the
TSC (1 GHz, one tick per instruction) must have moved on by about the loop, not by seconds.
"""

import errno
import threading

from kvmpy import syscalls
from kvmpy.uapi import kvm as uapi
from tests.support.apicguest import LAPIC_BASE, watchdog
from tests.support.guestvm import Machine, assemble, create_irqchip

REPORT = 0x520
LOOPS = 1_000_000

GUEST = assemble(f"""
.code32
 movl $0x10040, {LAPIC_BASE + 0x320:#x}     # LVT timer: one-shot, masked, vector 0x40
 movl $0xb, {LAPIC_BASE + 0x3e0:#x}         # divide by 1
 movl $0x7fffffff, {LAPIC_BASE + 0x380:#x}  # initial count: seconds ahead
 rdtsc
 mov %eax, %esi
 mov %edx, %edi
 mov ${LOOPS}, %ecx
1: loop 1b
 rdtsc
 sub %esi, %eax
 sbb %edi, %edx
 mov ${REPORT:#x}, %dx
 out %eax, %dx
2: jmp 2b
""")


def _ap_waits(m, fd, seen):
    try:
        m.sc.ioctl(fd, uapi.KVM_RUN, 0)
        seen.append("ran")
    except OSError as e:
        seen.append(errno.errorcode[e.errno])


def test_a_waiting_ap_does_not_skip_the_running_bsps_time():
    m = Machine(syscalls, GUEST, vm_setup=create_irqchip)
    try:
        fd = m.vm.adopt(m.sc.ioctl(m.vm_fd, uapi.KVM_CREATE_VCPU, 1))
        ap_run = uapi.kvm_run.from_buffer(m.vm.map(fd, m.sc.ioctl(m.kvm_fd, uapi.KVM_GET_VCPU_MMAP_SIZE, 0)))
        seen = []
        ap = threading.Thread(target=_ap_waits, args=(m, fd, seen), daemon=True)
        ap.start()
        with watchdog(120):
            rec = m.step()
        ap_run.immediate_exit = 1               # end the AP's wait: KVM_RUN returns EINTR
        ap.join(30)
        del ap_run
    finally:
        m.close()
    assert seen == ["EINTR"]
    assert (rec["reason"], rec["port"]) == ("IO", hex(REPORT))
    ticks = int.from_bytes(bytes.fromhex(rec["data"]), "little")
    assert LOOPS <= ticks < 3 * LOOPS
