"""kvm-ioctls-style objects: ``Kvm`` (the /dev/kvm fd), ``Vm`` and ``Vcpu``.

Each object owns one file descriptor of the chosen backend and turns the ioctls on it into
methods that take and return the uapi ctypes structures (or plain ints where the ioctl
does). Failures are the backend's ``OSError`` with the kernel's errno, unchanged, so a VMM
sees exactly what the kernel said.
"""

import ctypes
import errno

from kvmpy.api.backend import get_backend
from kvmpy.api.exits import decode_exit
from kvmpy.uapi import kvm as uapi

#: first guess at the number of CPUID entries; doubled while the kernel says E2BIG
CPUID_ENTRIES_GUESS = 80
CPUID_ENTRIES_MAX = 4096


class _Fd:
    """One open kvm file: closes once, works as a context manager."""

    def __init__(self, backend, fd):
        self.backend = backend
        self.fd = fd

    def _ioctl(self, request, arg=0):
        return self.backend.ioctl(self.fd, request, arg)

    def close(self):
        if self.fd is not None:
            fd, self.fd = self.fd, None
            self.backend.close(fd)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class Kvm(_Fd):
    """The KVM subsystem: ``Kvm("host")`` or ``Kvm("soft", params={"ept": False})``."""

    def __init__(self, backend="soft", params=None):
        b = get_backend(backend, params)
        super().__init__(b, b.open_device())

    def api_version(self):
        return self._ioctl(uapi.KVM_GET_API_VERSION)

    def check_extension(self, cap):
        return self._ioctl(uapi.KVM_CHECK_EXTENSION, cap)

    def vcpu_mmap_size(self):
        return self._ioctl(uapi.KVM_GET_VCPU_MMAP_SIZE)

    def create_vm(self, vm_type=0):
        return Vm(self, self._ioctl(uapi.KVM_CREATE_VM, vm_type))

    def get_supported_cpuid(self):
        """The CPUID the kernel can give a guest, as a ``kvm_cpuid2`` with its entries."""
        n = CPUID_ENTRIES_GUESS
        while True:
            cpuid = uapi.with_entries(uapi.kvm_cpuid2, n)()
            cpuid.nent = n
            try:
                self._ioctl(uapi.KVM_GET_SUPPORTED_CPUID, cpuid)
            except OSError as e:
                if e.errno == errno.E2BIG and n < CPUID_ENTRIES_MAX:
                    n *= 2
                    continue
                raise
            return _trim_entries(uapi.kvm_cpuid2, cpuid, cpuid.nent)

    def get_msr_index_list(self):
        """The MSR indices KVM saves and restores, as a list of ints."""
        probe = uapi.kvm_msr_list(nmsrs=0)
        try:
            self._ioctl(uapi.KVM_GET_MSR_INDEX_LIST, probe)
        except OSError as e:
            if e.errno != errno.E2BIG:
                raise
        lst = uapi.with_entries(uapi.kvm_msr_list, probe.nmsrs)()
        lst.nmsrs = probe.nmsrs
        self._ioctl(uapi.KVM_GET_MSR_INDEX_LIST, lst)
        return list(lst.indices[:lst.nmsrs])


def _trim_entries(header_type, value, n):
    """A copy of a variable-length structure holding only its first ``n`` entries."""
    out = uapi.with_entries(header_type, n)()
    ctypes.memmove(ctypes.addressof(out), ctypes.addressof(value), ctypes.sizeof(out))
    return out


class Vm(_Fd):
    """A virtual machine (the fd ``KVM_CREATE_VM`` returned)."""

    def __init__(self, kvm, fd):
        super().__init__(kvm.backend, fd)
        self.kvm = kvm

    def check_extension(self, cap):
        return self._ioctl(uapi.KVM_CHECK_EXTENSION, cap)

    def set_user_memory_region(self, slot, guest_phys_addr, memory_size, userspace_addr,
                               flags=0):
        region = uapi.kvm_userspace_memory_region(
            slot=slot, flags=flags, guest_phys_addr=guest_phys_addr,
            memory_size=memory_size, userspace_addr=userspace_addr)
        self._ioctl(uapi.KVM_SET_USER_MEMORY_REGION, region)

    def set_tss_address(self, addr):
        self._ioctl(uapi.KVM_SET_TSS_ADDR, addr)

    def set_identity_map_address(self, addr):
        self._ioctl(uapi.KVM_SET_IDENTITY_MAP_ADDR, ctypes.c_uint64(addr))

    def create_irqchip(self):
        self._ioctl(uapi.KVM_CREATE_IRQCHIP)

    def create_pit2(self, flags=0):
        self._ioctl(uapi.KVM_CREATE_PIT2, uapi.kvm_pit_config(flags=flags))

    def get_irqchip(self, chip_id):
        """KVM_GET_IRQCHIP: the state of chip ``chip_id`` (KVM_IRQCHIP_PIC_MASTER...)."""
        chip = uapi.kvm_irqchip(chip_id=chip_id)
        self._ioctl(uapi.KVM_GET_IRQCHIP, chip)
        return chip

    def set_irqchip(self, chip):
        self._ioctl(uapi.KVM_SET_IRQCHIP, chip)

    def get_pit2(self):
        state = uapi.kvm_pit_state2()
        self._ioctl(uapi.KVM_GET_PIT2, state)
        return state

    def set_pit2(self, state):
        self._ioctl(uapi.KVM_SET_PIT2, state)

    def set_irq_line(self, irq, level):
        self._ioctl(uapi.KVM_IRQ_LINE, uapi.kvm_irq_level(irq=irq, level=int(level)))

    def ioeventfd(self, addr, length, fd, datamatch=None, pio=False, deassign=False):
        """KVM_IOEVENTFD: a guest write of ``length`` bytes (0: any) at ``addr`` (a port
        if ``pio``), of ``datamatch``'s value unless None, signals eventfd ``fd`` inside
        KVM_RUN; ``deassign`` removes the same binding."""
        flags = ((uapi.KVM_IOEVENTFD_FLAG_DATAMATCH if datamatch is not None else 0)
                 | (uapi.KVM_IOEVENTFD_FLAG_PIO if pio else 0)
                 | (uapi.KVM_IOEVENTFD_FLAG_DEASSIGN if deassign else 0))
        self._ioctl(uapi.KVM_IOEVENTFD, uapi.kvm_ioeventfd(
            datamatch=datamatch or 0, addr=addr, len=length, fd=fd, flags=flags))

    def get_clock(self):
        """KVM_GET_CLOCK: the VM's clock (kvmclock's time base) in nanoseconds."""
        data = uapi.kvm_clock_data()
        self._ioctl(uapi.KVM_GET_CLOCK, data)
        return data.clock

    def set_clock(self, ns):
        """KVM_SET_CLOCK: the VM's clock reads ``ns`` now."""
        self._ioctl(uapi.KVM_SET_CLOCK, uapi.kvm_clock_data(clock=ns))

    def create_vcpu(self, vcpu_id):
        fd = self._ioctl(uapi.KVM_CREATE_VCPU, vcpu_id)
        try:
            return Vcpu(self, fd, vcpu_id)
        except BaseException:
            self.backend.close(fd)
            raise


class Vcpu(_Fd):
    """A virtual CPU; its ``kvm_run`` page is mapped for the life of the object."""

    def __init__(self, vm, fd, vcpu_id):
        super().__init__(vm.backend, fd)
        self.vm = vm
        self.id = vcpu_id
        self._map = self.backend.mmap(fd, vm.kvm.vcpu_mmap_size())
        self.run_struct = uapi.kvm_run.from_buffer(self._map)
        self._run_address = ctypes.addressof(self.run_struct)

    def close(self):
        if self.fd is not None:
            self.run_struct = None  # release the buffer export before unmapping
            self._map.close()
        super().close()

    # -- state ---------------------------------------------------------------

    def _get(self, request, struct_type):
        value = struct_type()
        self._ioctl(request, value)
        return value

    def get_tsc_khz(self):
        """KVM_GET_TSC_KHZ: the guest's TSC frequency."""
        return self._ioctl(uapi.KVM_GET_TSC_KHZ)

    def get_regs(self):
        return self._get(uapi.KVM_GET_REGS, uapi.kvm_regs)

    def get_mp_state(self):
        """KVM_GET_MP_STATE: KVM_MP_STATE_RUNNABLE, _HALTED, _UNINITIALIZED (an AP before
        INIT and SIPI)..."""
        return self._get(uapi.KVM_GET_MP_STATE, uapi.kvm_mp_state).mp_state

    def set_mp_state(self, state):
        self._ioctl(uapi.KVM_SET_MP_STATE, uapi.kvm_mp_state(mp_state=state))

    def set_regs(self, regs):
        self._ioctl(uapi.KVM_SET_REGS, regs)

    def get_sregs(self):
        return self._get(uapi.KVM_GET_SREGS, uapi.kvm_sregs)

    def set_sregs(self, sregs):
        self._ioctl(uapi.KVM_SET_SREGS, sregs)

    def get_fpu(self):
        return self._get(uapi.KVM_GET_FPU, uapi.kvm_fpu)

    def guest_instructions(self):
        """Instructions retired in guest mode so far, or None where the backend cannot count
        them (the host's KVM)."""
        return self.backend.guest_instructions(self.fd)

    def set_fpu(self, fpu):
        self._ioctl(uapi.KVM_SET_FPU, fpu)

    def get_vcpu_events(self):
        return self._get(uapi.KVM_GET_VCPU_EVENTS, uapi.kvm_vcpu_events)

    def set_cpuid2(self, cpuid):
        """Set the guest's CPUID from a ``kvm_cpuid2`` (e.g. ``get_supported_cpuid()``)."""
        self._ioctl(uapi.KVM_SET_CPUID2, cpuid)

    def get_msrs(self, indices):
        """Read MSRs: ``{index: value}`` for those the kernel returned (it stops at the
        first it cannot read)."""
        indices = list(indices)
        msrs = uapi.with_entries(uapi.kvm_msrs, len(indices))()
        msrs.nmsrs = len(indices)
        for entry, index in zip(msrs.entries, indices):
            entry.index = index
        n = self._ioctl(uapi.KVM_GET_MSRS, msrs)
        return {e.index: e.data for e in msrs.entries[:n]}

    def set_msrs(self, values):
        """Write MSRs from ``{index: value}``; returns how many the kernel accepted."""
        items = list(values.items())
        msrs = uapi.with_entries(uapi.kvm_msrs, len(items))()
        msrs.nmsrs = len(items)
        for entry, (index, value) in zip(msrs.entries, items):
            entry.index, entry.data = index, value
        return self._ioctl(uapi.KVM_SET_MSRS, msrs)

    def interrupt(self, vector):
        """Queue an external interrupt (``KVM_INTERRUPT``; no in-kernel irqchip)."""
        self._ioctl(uapi.KVM_INTERRUPT, uapi.kvm_interrupt(irq=vector))

    # -- kvm_run fields the VMM sets or reads --------------------------------

    @property
    def immediate_exit(self):
        return bool(self.run_struct.immediate_exit)

    @immediate_exit.setter
    def immediate_exit(self, value):
        self.run_struct.immediate_exit = int(bool(value))

    @property
    def request_interrupt_window(self):
        return bool(self.run_struct.request_interrupt_window)

    @request_interrupt_window.setter
    def request_interrupt_window(self, value):
        self.run_struct.request_interrupt_window = int(bool(value))

    @property
    def ready_for_interrupt_injection(self):
        return bool(self.run_struct.ready_for_interrupt_injection)

    @property
    def if_flag(self):
        return bool(self.run_struct.if_flag)

    # -- running -------------------------------------------------------------

    def run(self):
        """``KVM_RUN`` until the next exit to user space; returns a :class:`VcpuExit`.

        Answer an IN or MMIO read through the returned exit's ``set_data`` before calling
        ``run`` again.
        """
        self._ioctl(uapi.KVM_RUN)
        return decode_exit(self.run_struct, self._run_address)
