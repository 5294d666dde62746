"""linux/kvm.h and asm/kvm.h for x86-64, in Python.

Everything user space needs to talk to KVM: the ioctl encoding, the ioctl numbers of the
system, VM and vCPU files, the ``ctypes`` structures with the kernel's exact layouts, and the
constants (exit reasons, capabilities, flags).  Both backends use these definitions: the
soft kernel (``kvmpy.kernel``) decodes the same bytes the host's ``/dev/kvm`` does, so one VMM
can drive either.  Sizes are encoded in the ioctl numbers from the structures themselves, and
``tests/uapi/test_uapi.py`` checks them against the C headers and the facts file.

Variable-length structures (``kvm_msrs``, ``kvm_cpuid2``, ``kvm_msr_list``,
``kvm_irq_routing``, ``kvm_signal_mask``) are declared as their fixed header; ``with_entries``
builds a ctypes type with N trailing entries.
"""

from __future__ import annotations

import ctypes
import functools

u8, u16, u32, u64 = ctypes.c_uint8, ctypes.c_uint16, ctypes.c_uint32, ctypes.c_uint64
s32, s64 = ctypes.c_int32, ctypes.c_int64

PAGE_SHIFT = 12                     # asm/page.h: the one home of the page size
PAGE_SIZE = 1 << PAGE_SHIFT

# --------------------------------------------------------------------------------------
# ioctl encoding (asm-generic/ioctl.h)
# --------------------------------------------------------------------------------------
_IOC_NRBITS, _IOC_TYPEBITS, _IOC_SIZEBITS, _IOC_DIRBITS = 8, 8, 14, 2
_IOC_NRSHIFT = 0
_IOC_TYPESHIFT = _IOC_NRSHIFT + _IOC_NRBITS
_IOC_SIZESHIFT = _IOC_TYPESHIFT + _IOC_TYPEBITS
_IOC_DIRSHIFT = _IOC_SIZESHIFT + _IOC_SIZEBITS
_IOC_NONE, _IOC_WRITE, _IOC_READ = 0, 1, 2

KVMIO = 0xAE


def _IOC(direction: int, type_: int, nr: int, size: int) -> int:
    return (direction << _IOC_DIRSHIFT) | (type_ << _IOC_TYPESHIFT) | (nr << _IOC_NRSHIFT) | (
        size << _IOC_SIZESHIFT)


def _size(t) -> int:
    return t if isinstance(t, int) else ctypes.sizeof(t)


def _IO(type_: int, nr: int) -> int:
    return _IOC(_IOC_NONE, type_, nr, 0)


def _IOR(type_: int, nr: int, t) -> int:
    return _IOC(_IOC_READ, type_, nr, _size(t))


def _IOW(type_: int, nr: int, t) -> int:
    return _IOC(_IOC_WRITE, type_, nr, _size(t))


def _IOWR(type_: int, nr: int, t) -> int:
    return _IOC(_IOC_READ | _IOC_WRITE, type_, nr, _size(t))


def _IOC_DIR(cmd: int) -> int:
    return (cmd >> _IOC_DIRSHIFT) & ((1 << _IOC_DIRBITS) - 1)


def _IOC_TYPE(cmd: int) -> int:
    return (cmd >> _IOC_TYPESHIFT) & ((1 << _IOC_TYPEBITS) - 1)


def _IOC_NR(cmd: int) -> int:
    return (cmd >> _IOC_NRSHIFT) & ((1 << _IOC_NRBITS) - 1)


def _IOC_SIZE(cmd: int) -> int:
    return (cmd >> _IOC_SIZESHIFT) & ((1 << _IOC_SIZEBITS) - 1)


class _S(ctypes.Structure):
    """Base for kvm structures: native alignment (x86-64 C ABI), readable repr."""

    def __repr__(self):
        parts = []
        for name, *_ in self._fields_:
            v = getattr(self, name)
            parts.append("%s=%s" % (name, hex(v) if isinstance(v, int) else "..."))
        return "%s(%s)" % (type(self).__name__, ", ".join(parts))


class _U(ctypes.Union):
    pass


# --------------------------------------------------------------------------------------
# asm/kvm.h: x86 register and state structures
# --------------------------------------------------------------------------------------
KVM_NR_INTERRUPTS = 256
KVM_IOAPIC_NUM_PINS = 24
KVM_IRQCHIP_PIC_MASTER, KVM_IRQCHIP_PIC_SLAVE, KVM_IRQCHIP_IOAPIC, KVM_NR_IRQCHIPS = 0, 1, 2, 3
KVM_APIC_REG_SIZE = 0x400
KVM_PIO_PAGE_OFFSET = 1
KVM_COALESCED_MMIO_PAGE_OFFSET = 2
KVM_DIRTY_LOG_PAGE_OFFSET = 64
KVM_RUN_X86_SMM = 1 << 0
KVM_RUN_X86_BUS_LOCK = 1 << 1

REGS_FIELDS = ("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rsp", "rbp",
               "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15", "rip", "rflags")


class kvm_regs(_S):
    _fields_ = [(n, u64) for n in REGS_FIELDS]


class kvm_segment(_S):
    _fields_ = [("base", u64), ("limit", u32), ("selector", u16), ("type", u8), ("present", u8),
                ("dpl", u8), ("db", u8), ("s", u8), ("l", u8), ("g", u8), ("avl", u8),
                ("unusable", u8), ("padding", u8)]


class kvm_dtable(_S):
    _fields_ = [("base", u64), ("limit", u16), ("padding", u16 * 3)]


SREGS_SEGMENTS = ("cs", "ds", "es", "fs", "gs", "ss", "tr", "ldt")
_SREGS_COMMON = ([(n, kvm_segment) for n in SREGS_SEGMENTS]
                 + [("gdt", kvm_dtable), ("idt", kvm_dtable)]
                 + [(n, u64) for n in ("cr0", "cr2", "cr3", "cr4", "cr8", "efer", "apic_base")])


class kvm_sregs(_S):
    _fields_ = _SREGS_COMMON + [("interrupt_bitmap", u64 * ((KVM_NR_INTERRUPTS + 63) // 64))]


KVM_SREGS2_FLAGS_PDPTRS_VALID = 1


class kvm_sregs2(_S):
    _fields_ = _SREGS_COMMON + [("flags", u64), ("pdptrs", u64 * 4)]


class kvm_fpu(_S):
    _fields_ = [("fpr", (u8 * 16) * 8), ("fcw", u16), ("fsw", u16), ("ftwx", u8), ("pad1", u8),
                ("last_opcode", u16), ("last_ip", u64), ("last_dp", u64), ("xmm", (u8 * 16) * 16),
                ("mxcsr", u32), ("pad2", u32)]


class kvm_msr_entry(_S):
    _fields_ = [("index", u32), ("reserved", u32), ("data", u64)]


class kvm_msrs(_S):
    """Header; entries follow (see ``with_entries``)."""
    _fields_ = [("nmsrs", u32), ("pad", u32)]
    _entry_ = ("entries", kvm_msr_entry)


class kvm_msr_list(_S):
    _fields_ = [("nmsrs", u32)]
    _entry_ = ("indices", u32)


class kvm_cpuid_entry(_S):
    _fields_ = [("function", u32), ("eax", u32), ("ebx", u32), ("ecx", u32), ("edx", u32),
                ("padding", u32)]


class kvm_cpuid(_S):
    _fields_ = [("nent", u32), ("padding", u32)]
    _entry_ = ("entries", kvm_cpuid_entry)


KVM_CPUID_FLAG_SIGNIFCANT_INDEX = 1 << 0
KVM_CPUID_FLAG_STATEFUL_FUNC = 1 << 1
KVM_CPUID_FLAG_STATE_READ_NEXT = 1 << 2


class kvm_cpuid_entry2(_S):
    _fields_ = [("function", u32), ("index", u32), ("flags", u32), ("eax", u32), ("ebx", u32),
                ("ecx", u32), ("edx", u32), ("padding", u32 * 3)]


class kvm_cpuid2(_S):
    _fields_ = [("nent", u32), ("padding", u32)]
    _entry_ = ("entries", kvm_cpuid_entry2)


class kvm_lapic_state(_S):
    _fields_ = [("regs", ctypes.c_char * KVM_APIC_REG_SIZE)]


class kvm_pic_state(_S):
    _fields_ = [(n, u8) for n in (
        "last_irr", "irr", "imr", "isr", "priority_add", "irq_base", "read_reg_select", "poll",
        "special_mask", "init_state", "auto_eoi", "rotate_on_auto_eoi",
        "special_fully_nested_mode", "init4", "elcr", "elcr_mask")]


class kvm_ioapic_redirtbl_fields(_S):
    _fields_ = [("vector", u8), ("_bits1", u8), ("_bits2", u8), ("reserved", u8 * 4),
                ("dest_id", u8)]


class kvm_ioapic_redirtbl(_U):
    _fields_ = [("bits", u64), ("fields", kvm_ioapic_redirtbl_fields)]


class kvm_ioapic_state(_S):
    _fields_ = [("base_address", u64), ("ioregsel", u32), ("id", u32), ("irr", u32),
                ("pad", u32), ("redirtbl", kvm_ioapic_redirtbl * KVM_IOAPIC_NUM_PINS)]


class _kvm_irqchip_chip(_U):
    _fields_ = [("dummy", ctypes.c_char * 512), ("pic", kvm_pic_state),
                ("ioapic", kvm_ioapic_state)]


class kvm_irqchip(_S):
    _fields_ = [("chip_id", u32), ("pad", u32), ("chip", _kvm_irqchip_chip)]


class kvm_pit_channel_state(_S):
    _fields_ = [("count", u32), ("latched_count", u16), ("count_latched", u8),
                ("status_latched", u8), ("status", u8), ("read_state", u8), ("write_state", u8),
                ("write_latch", u8), ("rw_mode", u8), ("mode", u8), ("bcd", u8), ("gate", u8),
                ("count_load_time", s64)]


class kvm_pit_state(_S):
    _fields_ = [("channels", kvm_pit_channel_state * 3)]


KVM_PIT_FLAGS_HPET_LEGACY = 0x1
KVM_PIT_FLAGS_SPEAKER_DATA_ON = 0x2


class kvm_pit_state2(_S):
    _fields_ = [("channels", kvm_pit_channel_state * 3), ("flags", u32), ("reserved", u32 * 9)]


KVM_PIT_SPEAKER_DUMMY = 1


class kvm_reinject_control(_S):
    _fields_ = [("pit_reinject", u8), ("reserved", u8 * 31)]


class kvm_pit_config(_S):
    _fields_ = [("flags", u32), ("pad", u32 * 15)]


class kvm_debug_exit_arch(_S):
    _fields_ = [("exception", u32), ("pad", u32), ("pc", u64), ("dr6", u64), ("dr7", u64)]


KVM_GUESTDBG_ENABLE = 0x00000001
KVM_GUESTDBG_SINGLESTEP = 0x00000002
KVM_GUESTDBG_USE_SW_BP = 0x00010000
KVM_GUESTDBG_USE_HW_BP = 0x00020000
KVM_GUESTDBG_INJECT_DB = 0x00040000
KVM_GUESTDBG_INJECT_BP = 0x00080000
KVM_GUESTDBG_BLOCKIRQ = 0x00100000


class kvm_guest_debug_arch(_S):
    _fields_ = [("debugreg", u64 * 8)]


class kvm_guest_debug(_S):
    _fields_ = [("control", u32), ("pad", u32), ("arch", kvm_guest_debug_arch)]


KVM_VCPUEVENT_VALID_NMI_PENDING = 0x01
KVM_VCPUEVENT_VALID_SIPI_VECTOR = 0x02
KVM_VCPUEVENT_VALID_SHADOW = 0x04
KVM_VCPUEVENT_VALID_SMM = 0x08
KVM_VCPUEVENT_VALID_PAYLOAD = 0x10
KVM_VCPUEVENT_VALID_TRIPLE_FAULT = 0x20
KVM_X86_SHADOW_INT_MOV_SS = 0x01
KVM_X86_SHADOW_INT_STI = 0x02

# asm/kvm.h: exception vectors
DE_VECTOR, DB_VECTOR, BP_VECTOR, OF_VECTOR, BR_VECTOR, UD_VECTOR, NM_VECTOR, DF_VECTOR = 0, 1, 3, 4, 5, 6, 7, 8
TS_VECTOR, NP_VECTOR, SS_VECTOR, GP_VECTOR, PF_VECTOR = 10, 11, 12, 13, 14
MF_VECTOR, AC_VECTOR, MC_VECTOR, XM_VECTOR, VE_VECTOR = 16, 17, 18, 19, 20
NMI_VECTOR = 2                      # asm/kvm_host.h


class _events_exception(_S):
    _fields_ = [("injected", u8), ("nr", u8), ("has_error_code", u8), ("pending", u8),
                ("error_code", u32)]


class _events_interrupt(_S):
    _fields_ = [("injected", u8), ("nr", u8), ("soft", u8), ("shadow", u8)]


class _events_nmi(_S):
    _fields_ = [("injected", u8), ("pending", u8), ("masked", u8), ("pad", u8)]


class _events_smi(_S):
    _fields_ = [("smm", u8), ("pending", u8), ("smm_inside_nmi", u8), ("latched_init", u8)]


class _events_triple_fault(_S):
    _fields_ = [("pending", u8)]


class kvm_vcpu_events(_S):
    _fields_ = [("exception", _events_exception), ("interrupt", _events_interrupt),
                ("nmi", _events_nmi), ("sipi_vector", u32), ("flags", u32), ("smi", _events_smi),
                ("triple_fault", _events_triple_fault), ("reserved", u8 * 26),
                ("exception_has_payload", u8), ("exception_payload", u64)]


class kvm_debugregs(_S):
    _fields_ = [("db", u64 * 4), ("dr6", u64), ("dr7", u64), ("flags", u64),
                ("reserved", u64 * 9)]


KVM_MAX_XCRS = 16


class kvm_xcr(_S):
    _fields_ = [("xcr", u32), ("reserved", u32), ("value", u64)]


class kvm_xcrs(_S):
    _fields_ = [("nr_xcrs", u32), ("flags", u32), ("xcrs", kvm_xcr * KVM_MAX_XCRS),
                ("padding", u64 * 16)]


class kvm_xsave(_S):
    _fields_ = [("region", u32 * 1024)]


KVM_SYNC_X86_REGS = 1 << 0
KVM_SYNC_X86_SREGS = 1 << 1
KVM_SYNC_X86_EVENTS = 1 << 2
KVM_SYNC_X86_VALID_FIELDS = KVM_SYNC_X86_REGS | KVM_SYNC_X86_SREGS | KVM_SYNC_X86_EVENTS


class kvm_sync_regs(_S):
    _fields_ = [("regs", kvm_regs), ("sregs", kvm_sregs), ("events", kvm_vcpu_events)]


class kvm_x86_mce(_S):
    _fields_ = [("status", u64), ("addr", u64), ("misc", u64), ("mcg_status", u64),
                ("bank", u8), ("pad1", u8 * 7), ("pad2", u64 * 3)]


class kvm_xen_hvm_config(_S):
    _fields_ = [("flags", u32), ("msr", u32), ("blob_addr_32", u64), ("blob_addr_64", u64),
                ("blob_size_32", u8), ("blob_size_64", u8), ("pad2", u8 * 30)]


class kvm_vmx_nested_state_hdr(_S):
    _fields_ = [("vmxon_pa", u64), ("vmcs12_pa", u64), ("smm_flags", u16), ("pad", u16),
                ("flags", u32), ("preemption_timer_deadline", u64)]


class _nested_hdr(_U):
    _fields_ = [("vmx", kvm_vmx_nested_state_hdr), ("pad", u8 * 120)]


class kvm_nested_state(_S):
    _fields_ = [("flags", u16), ("format", u16), ("size", u32), ("hdr", _nested_hdr)]


# --------------------------------------------------------------------------------------
# linux/kvm.h: generic structures
# --------------------------------------------------------------------------------------
KVM_API_VERSION = 12
KVM_X86_DEFAULT_VM = 0              # asm/kvm.h: the only VM type kvmpy creates

KVM_MEM_LOG_DIRTY_PAGES = 1 << 0
KVM_MEM_READONLY = 1 << 1
KVM_MEM_GUEST_MEMFD = 1 << 2

KVM_USER_MEM_SLOTS = 32764      # x86: KVM_MEM_SLOTS_NUM (0x7fff) minus 3 private slots
KVM_MAX_VCPUS = 1024
KVM_MAX_VCPU_IDS = 4 * KVM_MAX_VCPUS  # KVM_VCPU_ID_RATIO * KVM_MAX_VCPUS
KVM_SOFT_MAX_VCPUS = KVM_MAX_VCPUS


class kvm_userspace_memory_region(_S):
    _fields_ = [("slot", u32), ("flags", u32), ("guest_phys_addr", u64), ("memory_size", u64),
                ("userspace_addr", u64)]


class kvm_userspace_memory_region2(_S):
    _fields_ = [("slot", u32), ("flags", u32), ("guest_phys_addr", u64), ("memory_size", u64),
                ("userspace_addr", u64), ("guest_memfd_offset", u64), ("guest_memfd", u32),
                ("pad1", u32), ("pad2", u64 * 14)]


class kvm_irq_level(_S):
    class _u(_U):
        _fields_ = [("irq", u32), ("status", s32)]
    _anonymous_ = ("u",)
    _fields_ = [("u", _u), ("level", u32)]


class kvm_dirty_log(_S):
    class _u(_U):
        _fields_ = [("dirty_bitmap", ctypes.c_void_p), ("padding2", u64)]
    _anonymous_ = ("u",)
    _fields_ = [("slot", u32), ("padding1", u32), ("u", _u)]


class kvm_clear_dirty_log(_S):
    class _u(_U):
        _fields_ = [("dirty_bitmap", ctypes.c_void_p), ("padding2", u64)]
    _anonymous_ = ("u",)
    _fields_ = [("slot", u32), ("num_pages", u32), ("first_page", u64), ("u", _u)]


class kvm_signal_mask(_S):
    _fields_ = [("len", u32)]
    _entry_ = ("sigset", u8)


class kvm_tpr_access_ctl(_S):
    _fields_ = [("enabled", u32), ("flags", u32), ("reserved", u32 * 8)]


class kvm_vapic_addr(_S):
    _fields_ = [("vapic_addr", u64)]


KVM_MP_STATE_RUNNABLE = 0
KVM_MP_STATE_UNINITIALIZED = 1
KVM_MP_STATE_INIT_RECEIVED = 2
KVM_MP_STATE_HALTED = 3
KVM_MP_STATE_SIPI_RECEIVED = 4
KVM_MP_STATE_STOPPED = 5
KVM_MP_STATE_CHECK_STOP = 6
KVM_MP_STATE_OPERATING = 7
KVM_MP_STATE_LOAD = 8
KVM_MP_STATE_AP_RESET_HOLD = 9
KVM_MP_STATE_SUSPENDED = 10


class kvm_mp_state(_S):
    _fields_ = [("mp_state", u32)]


class kvm_interrupt(_S):
    _fields_ = [("irq", u32)]


class kvm_translation(_S):
    _fields_ = [("linear_address", u64), ("physical_address", u64), ("valid", u8),
                ("writeable", u8), ("usermode", u8), ("pad", u8 * 5)]


class kvm_coalesced_mmio_zone(_S):
    class _u(_U):
        _fields_ = [("pad", u32), ("pio", u32)]
    _anonymous_ = ("u",)
    _fields_ = [("addr", u64), ("size", u32), ("u", _u)]


class kvm_coalesced_mmio(_S):
    class _u(_U):
        _fields_ = [("pad", u32), ("pio", u32)]
    _anonymous_ = ("u",)
    _fields_ = [("phys_addr", u64), ("len", u32), ("u", _u), ("data", u8 * 8)]


class kvm_coalesced_mmio_ring(_S):
    _fields_ = [("first", u32), ("last", u32)]
    _entry_ = ("coalesced_mmio", kvm_coalesced_mmio)


KVM_COALESCED_MMIO_MAX = (PAGE_SIZE - ctypes.sizeof(kvm_coalesced_mmio_ring)) // ctypes.sizeof(
    kvm_coalesced_mmio)

KVM_IRQFD_FLAG_DEASSIGN = 1 << 0
KVM_IRQFD_FLAG_RESAMPLE = 1 << 1


class kvm_irqfd(_S):
    _fields_ = [("fd", u32), ("gsi", u32), ("flags", u32), ("resamplefd", u32), ("pad", u8 * 16)]


KVM_IOEVENTFD_FLAG_DATAMATCH = 1 << 0
KVM_IOEVENTFD_FLAG_PIO = 1 << 1
KVM_IOEVENTFD_FLAG_DEASSIGN = 1 << 2
KVM_IOEVENTFD_FLAG_VIRTIO_CCW_NOTIFY = 1 << 3


class kvm_ioeventfd(_S):
    _fields_ = [("datamatch", u64), ("addr", u64), ("len", u32), ("fd", s32), ("flags", u32),
                ("pad", u8 * 36)]


KVM_CLOCK_TSC_STABLE = 2
KVM_CLOCK_REALTIME = 1 << 2
KVM_CLOCK_HOST_TSC = 1 << 3


class kvm_clock_data(_S):
    _fields_ = [("clock", u64), ("flags", u32), ("pad0", u32), ("realtime", u64),
                ("host_tsc", u64), ("pad", u32 * 4)]


class kvm_enable_cap(_S):
    _fields_ = [("cap", u32), ("flags", u32), ("args", u64 * 4), ("pad", u8 * 64)]


KVM_MSI_VALID_DEVID = 1 << 0


class kvm_msi(_S):
    _fields_ = [("address_lo", u32), ("address_hi", u32), ("data", u32), ("flags", u32),
                ("devid", u32), ("pad", u8 * 12)]


KVM_IRQ_ROUTING_IRQCHIP = 1
KVM_IRQ_ROUTING_MSI = 2
KVM_IRQ_ROUTING_S390_ADAPTER = 3
KVM_IRQ_ROUTING_HV_SINT = 4
KVM_IRQ_ROUTING_XEN_EVTCHN = 5


class kvm_irq_routing_irqchip(_S):
    _fields_ = [("irqchip", u32), ("pin", u32)]


class kvm_irq_routing_msi(_S):
    _fields_ = [("address_lo", u32), ("address_hi", u32), ("data", u32), ("devid", u32)]


class _irq_routing_u(_U):
    _fields_ = [("irqchip", kvm_irq_routing_irqchip), ("msi", kvm_irq_routing_msi),
                ("pad", u32 * 8)]


class kvm_irq_routing_entry(_S):
    _fields_ = [("gsi", u32), ("type", u32), ("flags", u32), ("pad", u32), ("u", _irq_routing_u)]


class kvm_irq_routing(_S):
    _fields_ = [("nr", u32), ("flags", u32)]
    _entry_ = ("entries", kvm_irq_routing_entry)


class kvm_one_reg(_S):
    _fields_ = [("id", u64), ("addr", u64)]


class kvm_reg_list(_S):
    _fields_ = [("n", u64)]
    _entry_ = ("reg", u64)


class kvm_create_device(_S):
    _fields_ = [("type", u32), ("fd", u32), ("flags", u32)]


class kvm_device_attr(_S):
    _fields_ = [("flags", u32), ("group", u32), ("attr", u64), ("addr", u64)]


# Binary statistics (KVM_GET_STATS_FD)
class kvm_stats_header(_S):
    _fields_ = [("flags", u32), ("name_size", u32), ("num_desc", u32), ("id_offset", u32),
                ("desc_offset", u32), ("data_offset", u32)]


class kvm_stats_desc(_S):
    _fields_ = [("flags", u32), ("exponent", ctypes.c_int16), ("size", u16), ("offset", u32),
                ("bucket_size", u32)]
    _entry_ = ("name", ctypes.c_char)


KVM_STATS_NAME_SIZE = 48
KVM_STATS_TYPE_CUMULATIVE = 0x0 << 0
KVM_STATS_TYPE_INSTANT = 0x1 << 0
KVM_STATS_TYPE_PEAK = 0x2 << 0
KVM_STATS_TYPE_LINEAR_HIST = 0x3 << 0
KVM_STATS_TYPE_LOG_HIST = 0x4 << 0
KVM_STATS_UNIT_NONE = 0x0 << 4
KVM_STATS_UNIT_BYTES = 0x1 << 4
KVM_STATS_UNIT_SECONDS = 0x2 << 4
KVM_STATS_UNIT_CYCLES = 0x3 << 4
KVM_STATS_UNIT_BOOLEAN = 0x4 << 4
KVM_STATS_BASE_POW10 = 0x0 << 8
KVM_STATS_BASE_POW2 = 0x1 << 8


def with_entries(header_type, n: int):
    """A ctypes type: ``header_type``'s fixed part followed by ``n`` trailing entries.

    The trailing array is named like the kernel's flexible array member (``entries``,
    ``indices``, ...), so ``with_entries(kvm_cpuid2, 3)()`` has ``.nent`` and ``.entries[i]``.
    """
    return _with_entries(header_type, int(n))


@functools.lru_cache(maxsize=None)
def _with_entries(header_type, n):
    name, entry = header_type._entry_
    return type("%s_%d" % (header_type.__name__, n), (header_type,), {"_fields_": [(name, entry * n)]})


def entry_size(header_type) -> int:
    """Size of one trailing entry of a variable-length structure."""
    return ctypes.sizeof(header_type._entry_[1])


# --------------------------------------------------------------------------------------
# struct kvm_run
# --------------------------------------------------------------------------------------
KVM_EXIT_UNKNOWN = 0
KVM_EXIT_EXCEPTION = 1
KVM_EXIT_IO = 2
KVM_EXIT_HYPERCALL = 3
KVM_EXIT_DEBUG = 4
KVM_EXIT_HLT = 5
KVM_EXIT_MMIO = 6
KVM_EXIT_IRQ_WINDOW_OPEN = 7
KVM_EXIT_SHUTDOWN = 8
KVM_EXIT_FAIL_ENTRY = 9
KVM_EXIT_INTR = 10
KVM_EXIT_SET_TPR = 11
KVM_EXIT_TPR_ACCESS = 12
KVM_EXIT_S390_SIEIC = 13
KVM_EXIT_S390_RESET = 14
KVM_EXIT_DCR = 15
KVM_EXIT_NMI = 16
KVM_EXIT_INTERNAL_ERROR = 17
KVM_EXIT_OSI = 18
KVM_EXIT_PAPR_HCALL = 19
KVM_EXIT_S390_UCONTROL = 20
KVM_EXIT_WATCHDOG = 21
KVM_EXIT_S390_TSCH = 22
KVM_EXIT_EPR = 23
KVM_EXIT_SYSTEM_EVENT = 24
KVM_EXIT_S390_STSI = 25
KVM_EXIT_IOAPIC_EOI = 26
KVM_EXIT_HYPERV = 27
KVM_EXIT_ARM_NISV = 28
KVM_EXIT_X86_RDMSR = 29
KVM_EXIT_X86_WRMSR = 30
KVM_EXIT_DIRTY_RING_FULL = 31
KVM_EXIT_AP_RESET_HOLD = 32
KVM_EXIT_X86_BUS_LOCK = 33
KVM_EXIT_XEN = 34
KVM_EXIT_RISCV_SBI = 35
KVM_EXIT_RISCV_CSR = 36
KVM_EXIT_NOTIFY = 37
KVM_EXIT_LOONGARCH_IOCSR = 38
KVM_EXIT_MEMORY_FAULT = 39

EXIT_REASON_NAMES = {v: k[len("KVM_EXIT_"):] for k, v in list(globals().items())
                     if k.startswith("KVM_EXIT_") and isinstance(v, int)}

KVM_EXIT_IO_IN = 0
KVM_EXIT_IO_OUT = 1

KVM_INTERNAL_ERROR_EMULATION = 1
KVM_INTERNAL_ERROR_SIMUL_EX = 2
KVM_INTERNAL_ERROR_DELIVERY_EV = 3
KVM_INTERNAL_ERROR_UNEXPECTED_EXIT_REASON = 4
KVM_INTERNAL_ERROR_EMULATION_FLAG_INSTRUCTION_BYTES = 1 << 0

KVM_SYSTEM_EVENT_SHUTDOWN = 1
KVM_SYSTEM_EVENT_RESET = 2
KVM_SYSTEM_EVENT_CRASH = 3
KVM_SYSTEM_EVENT_WAKEUP = 4
KVM_SYSTEM_EVENT_SUSPEND = 5
KVM_SYSTEM_EVENT_SEV_TERM = 6

KVM_MSR_EXIT_REASON_INVAL = 1 << 0
KVM_MSR_EXIT_REASON_UNKNOWN = 1 << 1
KVM_MSR_EXIT_REASON_FILTER = 1 << 2

KVM_HYPERV_EXIT_SYNIC, KVM_HYPERV_EXIT_HCALL, KVM_HYPERV_EXIT_SYNDBG = 1, 2, 3


class _run_hw(_S):
    _fields_ = [("hardware_exit_reason", u64)]


class _run_fail_entry(_S):
    _fields_ = [("hardware_entry_failure_reason", u64), ("cpu", u32)]


class _run_ex(_S):
    _fields_ = [("exception", u32), ("error_code", u32)]


class _run_io(_S):
    _fields_ = [("direction", u8), ("size", u8), ("port", u16), ("count", u32),
                ("data_offset", u64)]


class _run_debug(_S):
    _fields_ = [("arch", kvm_debug_exit_arch)]


class _run_mmio(_S):
    _fields_ = [("phys_addr", u64), ("data", u8 * 8), ("len", u32), ("is_write", u8)]


class _run_hypercall(_S):
    class _u(_U):
        _fields_ = [("longmode", u32), ("flags", u64)]
    _anonymous_ = ("u",)
    _fields_ = [("nr", u64), ("args", u64 * 6), ("ret", u64), ("u", _u)]


class _run_tpr_access(_S):
    _fields_ = [("rip", u64), ("is_write", u32), ("pad", u32)]


class _run_internal(_S):
    _fields_ = [("suberror", u32), ("ndata", u32), ("data", u64 * 16)]


class _run_emulation_failure(_S):
    _fields_ = [("suberror", u32), ("ndata", u32), ("flags", u64), ("insn_size", u8),
                ("insn_bytes", u8 * 15)]


class _run_system_event(_S):
    class _u(_U):
        _fields_ = [("flags", u64), ("data", u64 * 16)]
    _anonymous_ = ("u",)
    _fields_ = [("type", u32), ("ndata", u32), ("u", _u)]


class _run_eoi(_S):
    _fields_ = [("vector", u8)]


class _run_msr(_S):
    _fields_ = [("error", u8), ("pad", u8 * 7), ("reason", u32), ("index", u32), ("data", u64)]


class _run_notify(_S):
    _fields_ = [("flags", u32)]


class _run_memory_fault(_S):
    _fields_ = [("flags", u64), ("gpa", u64), ("size", u64)]


class _run_exit(_U):
    _fields_ = [("hw", _run_hw), ("fail_entry", _run_fail_entry), ("ex", _run_ex),
                ("io", _run_io), ("debug", _run_debug), ("mmio", _run_mmio),
                ("hypercall", _run_hypercall), ("tpr_access", _run_tpr_access),
                ("internal", _run_internal), ("emulation_failure", _run_emulation_failure),
                ("system_event", _run_system_event), ("eoi", _run_eoi), ("msr", _run_msr),
                ("notify", _run_notify), ("memory_fault", _run_memory_fault),
                ("padding", ctypes.c_char * 256)]


class _run_s(_U):
    _fields_ = [("regs", kvm_sync_regs), ("padding", ctypes.c_char * 2048)]


class kvm_run(_S):
    """The page shared by the kernel and user space (``mmap`` of the vCPU fd, offset 0).

    The exit union is anonymous, so ``run.io.port`` works like ``run->io.port`` in C.
    """
    _anonymous_ = ("exit",)
    _fields_ = [("request_interrupt_window", u8), ("immediate_exit", u8), ("padding1", u8 * 6),
                ("exit_reason", u32), ("ready_for_interrupt_injection", u8), ("if_flag", u8),
                ("flags", u16), ("cr8", u64), ("apic_base", u64), ("exit", _run_exit),
                ("kvm_valid_regs", u64), ("kvm_dirty_regs", u64), ("s", _run_s)]


# --------------------------------------------------------------------------------------
# Capabilities (KVM_CHECK_EXTENSION)
# --------------------------------------------------------------------------------------
KVM_CAP_IRQCHIP = 0
KVM_CAP_HLT = 1
KVM_CAP_MMU_SHADOW_CACHE_CONTROL = 2
KVM_CAP_USER_MEMORY = 3
KVM_CAP_SET_TSS_ADDR = 4
KVM_CAP_VAPIC = 6
KVM_CAP_EXT_CPUID = 7
KVM_CAP_CLOCKSOURCE = 8
KVM_CAP_NR_VCPUS = 9
KVM_CAP_NR_MEMSLOTS = 10
KVM_CAP_PIT = 11
KVM_CAP_NOP_IO_DELAY = 12
KVM_CAP_PV_MMU = 13
KVM_CAP_MP_STATE = 14
KVM_CAP_COALESCED_MMIO = 15
KVM_CAP_SYNC_MMU = 16
KVM_CAP_IOMMU = 18
KVM_CAP_DESTROY_MEMORY_REGION_WORKS = 21
KVM_CAP_USER_NMI = 22
KVM_CAP_SET_GUEST_DEBUG = 23
KVM_CAP_REINJECT_CONTROL = 24
KVM_CAP_IRQ_ROUTING = 25
KVM_CAP_IRQ_INJECT_STATUS = 26
KVM_CAP_ASSIGN_DEV_IRQ = 29
KVM_CAP_JOIN_MEMORY_REGIONS_WORKS = 30
KVM_CAP_MCE = 31
KVM_CAP_IRQFD = 32
KVM_CAP_PIT2 = 33
KVM_CAP_SET_BOOT_CPU_ID = 34
KVM_CAP_PIT_STATE2 = 35
KVM_CAP_IOEVENTFD = 36
KVM_CAP_SET_IDENTITY_MAP_ADDR = 37
KVM_CAP_XEN_HVM = 38
KVM_CAP_ADJUST_CLOCK = 39
KVM_CAP_INTERNAL_ERROR_DATA = 40
KVM_CAP_VCPU_EVENTS = 41
KVM_CAP_HYPERV = 44
KVM_CAP_HYPERV_VAPIC = 45
KVM_CAP_HYPERV_SPIN = 46
KVM_CAP_PCI_SEGMENT = 47
KVM_CAP_INTR_SHADOW = 49
KVM_CAP_DEBUGREGS = 50
KVM_CAP_X86_ROBUST_SINGLESTEP = 51
KVM_CAP_ENABLE_CAP = 54
KVM_CAP_XSAVE = 55
KVM_CAP_XCRS = 56
KVM_CAP_ASYNC_PF = 59
KVM_CAP_TSC_CONTROL = 60
KVM_CAP_GET_TSC_KHZ = 61
KVM_CAP_MAX_VCPUS = 66
KVM_CAP_ONE_REG = 70
KVM_CAP_TSC_DEADLINE_TIMER = 72
KVM_CAP_SYNC_REGS = 74
KVM_CAP_PCI_2_3 = 75
KVM_CAP_KVMCLOCK_CTRL = 76
KVM_CAP_SIGNAL_MSI = 77
KVM_CAP_READONLY_MEM = 81
KVM_CAP_IRQFD_RESAMPLE = 82
KVM_CAP_DEVICE_CTRL = 89
KVM_CAP_EXT_EMUL_CPUID = 95
KVM_CAP_HYPERV_TIME = 96
KVM_CAP_IOAPIC_POLARITY_IGNORED = 97
KVM_CAP_ENABLE_CAP_VM = 98
KVM_CAP_IOEVENTFD_NO_LENGTH = 100
KVM_CAP_VM_ATTRIBUTES = 101
KVM_CAP_CHECK_EXTENSION_VM = 105
KVM_CAP_DISABLE_QUIRKS = 116
KVM_CAP_X86_SMM = 117
KVM_CAP_MULTI_ADDRESS_SPACE = 118
KVM_CAP_GUEST_DEBUG_HW_BPS = 119
KVM_CAP_GUEST_DEBUG_HW_WPS = 120
KVM_CAP_SPLIT_IRQCHIP = 121
KVM_CAP_IOEVENTFD_ANY_LENGTH = 122
KVM_CAP_HYPERV_SYNIC = 123
KVM_CAP_MAX_VCPU_ID = 128
KVM_CAP_X2APIC_API = 129
KVM_CAP_MSI_DEVID = 131
KVM_CAP_IMMEDIATE_EXIT = 136
KVM_CAP_X86_DISABLE_EXITS = 143
KVM_CAP_GET_MSR_FEATURES = 153
KVM_CAP_NESTED_STATE = 157
KVM_CAP_MSR_PLATFORM_INFO = 159
KVM_CAP_COALESCED_PIO = 162
KVM_CAP_EXCEPTION_PAYLOAD = 164
KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2 = 168
KVM_CAP_PMU_EVENT_FILTER = 173
KVM_CAP_HALT_POLL = 182
KVM_CAP_ASYNC_PF_INT = 183
KVM_CAP_LAST_CPU = 184
KVM_CAP_SMALLER_MAXPHYADDR = 185
KVM_CAP_STEAL_TIME = 187
KVM_CAP_X86_USER_SPACE_MSR = 188
KVM_CAP_X86_MSR_FILTER = 189
KVM_CAP_ENFORCE_PV_FEATURE_CPUID = 190
KVM_CAP_SYS_HYPERV_CPUID = 191
KVM_CAP_DIRTY_LOG_RING = 192
KVM_CAP_X86_BUS_LOCK_EXIT = 193
KVM_CAP_SET_GUEST_DEBUG2 = 195
KVM_CAP_SGX_ATTRIBUTE = 196
KVM_CAP_SREGS2 = 200
KVM_CAP_EXIT_HYPERCALL = 201
KVM_CAP_BINARY_STATS_FD = 203
KVM_CAP_EXIT_ON_EMULATION_FAILURE = 204
KVM_CAP_VM_GPA_BITS = 207
KVM_CAP_XSAVE2 = 208
KVM_CAP_SYS_ATTRIBUTES = 209
KVM_CAP_PMU_CAPABILITY = 212
KVM_CAP_DISABLE_QUIRKS2 = 213
KVM_CAP_VM_TSC_CONTROL = 214
KVM_CAP_SYSTEM_EVENT_DATA = 215
KVM_CAP_X86_TRIPLE_FAULT_EVENT = 218
KVM_CAP_X86_NOTIFY_VMEXIT = 219
KVM_CAP_VM_DISABLE_NX_HUGE_PAGES = 220
KVM_CAP_DIRTY_LOG_RING_ACQ_REL = 223
KVM_CAP_USER_MEMORY2 = 231
KVM_CAP_MEMORY_FAULT_INFO = 232
KVM_CAP_MEMORY_ATTRIBUTES = 233
KVM_CAP_GUEST_MEMFD = 234
KVM_CAP_VM_TYPES = 235
KVM_CAP_PRE_FAULT_MEMORY = 236
KVM_CAP_X86_APIC_BUS_CYCLES_NS = 237

# --------------------------------------------------------------------------------------
# ioctl numbers
# --------------------------------------------------------------------------------------
# System ioctls (the /dev/kvm fd)
KVM_GET_API_VERSION = _IO(KVMIO, 0x00)
KVM_CREATE_VM = _IO(KVMIO, 0x01)
KVM_GET_MSR_INDEX_LIST = _IOWR(KVMIO, 0x02, kvm_msr_list)
KVM_CHECK_EXTENSION = _IO(KVMIO, 0x03)
KVM_GET_VCPU_MMAP_SIZE = _IO(KVMIO, 0x04)
KVM_GET_SUPPORTED_CPUID = _IOWR(KVMIO, 0x05, kvm_cpuid2)
KVM_GET_EMULATED_CPUID = _IOWR(KVMIO, 0x09, kvm_cpuid2)
KVM_GET_MSR_FEATURE_INDEX_LIST = _IOWR(KVMIO, 0x0A, kvm_msr_list)
KVM_X86_GET_MCE_CAP_SUPPORTED = _IOR(KVMIO, 0x9D, u64)
KVM_GET_SUPPORTED_HV_CPUID = _IOWR(KVMIO, 0xC1, kvm_cpuid2)

# VM ioctls
KVM_CREATE_VCPU = _IO(KVMIO, 0x41)
KVM_GET_DIRTY_LOG = _IOW(KVMIO, 0x42, kvm_dirty_log)
KVM_SET_NR_MMU_PAGES = _IO(KVMIO, 0x44)
KVM_GET_NR_MMU_PAGES = _IO(KVMIO, 0x45)
KVM_SET_USER_MEMORY_REGION = _IOW(KVMIO, 0x46, kvm_userspace_memory_region)
KVM_SET_TSS_ADDR = _IO(KVMIO, 0x47)
KVM_SET_IDENTITY_MAP_ADDR = _IOW(KVMIO, 0x48, u64)
KVM_SET_USER_MEMORY_REGION2 = _IOW(KVMIO, 0x49, kvm_userspace_memory_region2)
KVM_CREATE_IRQCHIP = _IO(KVMIO, 0x60)
KVM_IRQ_LINE = _IOW(KVMIO, 0x61, kvm_irq_level)
KVM_GET_IRQCHIP = _IOWR(KVMIO, 0x62, kvm_irqchip)
KVM_SET_IRQCHIP = _IOR(KVMIO, 0x63, kvm_irqchip)
KVM_CREATE_PIT = _IO(KVMIO, 0x64)
KVM_GET_PIT = _IOWR(KVMIO, 0x65, kvm_pit_state)
KVM_SET_PIT = _IOR(KVMIO, 0x66, kvm_pit_state)
KVM_IRQ_LINE_STATUS = _IOWR(KVMIO, 0x67, kvm_irq_level)
KVM_REGISTER_COALESCED_MMIO = _IOW(KVMIO, 0x67, kvm_coalesced_mmio_zone)
KVM_UNREGISTER_COALESCED_MMIO = _IOW(KVMIO, 0x68, kvm_coalesced_mmio_zone)
KVM_SET_GSI_ROUTING = _IOW(KVMIO, 0x6A, kvm_irq_routing)
KVM_REINJECT_CONTROL = _IO(KVMIO, 0x71)
KVM_IRQFD = _IOW(KVMIO, 0x76, kvm_irqfd)
KVM_CREATE_PIT2 = _IOW(KVMIO, 0x77, kvm_pit_config)
KVM_SET_BOOT_CPU_ID = _IO(KVMIO, 0x78)
KVM_IOEVENTFD = _IOW(KVMIO, 0x79, kvm_ioeventfd)
KVM_XEN_HVM_CONFIG = _IOW(KVMIO, 0x7A, kvm_xen_hvm_config)
KVM_SET_CLOCK = _IOW(KVMIO, 0x7B, kvm_clock_data)
KVM_GET_CLOCK = _IOR(KVMIO, 0x7C, kvm_clock_data)
KVM_GET_PIT2 = _IOR(KVMIO, 0x9F, kvm_pit_state2)
KVM_SET_PIT2 = _IOW(KVMIO, 0xA0, kvm_pit_state2)
KVM_SET_TSC_KHZ = _IO(KVMIO, 0xA2)          # VM and vCPU
KVM_GET_TSC_KHZ = _IO(KVMIO, 0xA3)          # VM and vCPU
KVM_SIGNAL_MSI = _IOW(KVMIO, 0xA5, kvm_msi)
KVM_SET_PMU_EVENT_FILTER = _IOW(KVMIO, 0xB2, 32)  # header of kvm_pmu_event_filter
KVM_CLEAR_DIRTY_LOG = _IOWR(KVMIO, 0xC0, kvm_clear_dirty_log)
KVM_RESET_DIRTY_RINGS = _IO(KVMIO, 0xC7)
KVM_CREATE_DEVICE = _IOWR(KVMIO, 0xE0, kvm_create_device)
KVM_SET_DEVICE_ATTR = _IOW(KVMIO, 0xE1, kvm_device_attr)
KVM_GET_DEVICE_ATTR = _IOW(KVMIO, 0xE2, kvm_device_attr)   # also on the system fd
KVM_HAS_DEVICE_ATTR = _IOW(KVMIO, 0xE3, kvm_device_attr)   # also on the system fd

# vCPU ioctls
KVM_RUN = _IO(KVMIO, 0x80)
KVM_GET_REGS = _IOR(KVMIO, 0x81, kvm_regs)
KVM_SET_REGS = _IOW(KVMIO, 0x82, kvm_regs)
KVM_GET_SREGS = _IOR(KVMIO, 0x83, kvm_sregs)
KVM_SET_SREGS = _IOW(KVMIO, 0x84, kvm_sregs)
KVM_TRANSLATE = _IOWR(KVMIO, 0x85, kvm_translation)
KVM_INTERRUPT = _IOW(KVMIO, 0x86, kvm_interrupt)
KVM_GET_MSRS = _IOWR(KVMIO, 0x88, kvm_msrs)
KVM_SET_MSRS = _IOW(KVMIO, 0x89, kvm_msrs)
KVM_SET_CPUID = _IOW(KVMIO, 0x8A, kvm_cpuid)
KVM_SET_SIGNAL_MASK = _IOW(KVMIO, 0x8B, kvm_signal_mask)
KVM_GET_FPU = _IOR(KVMIO, 0x8C, kvm_fpu)
KVM_SET_FPU = _IOW(KVMIO, 0x8D, kvm_fpu)
KVM_GET_LAPIC = _IOR(KVMIO, 0x8E, kvm_lapic_state)
KVM_SET_LAPIC = _IOW(KVMIO, 0x8F, kvm_lapic_state)
KVM_SET_CPUID2 = _IOW(KVMIO, 0x90, kvm_cpuid2)
KVM_GET_CPUID2 = _IOWR(KVMIO, 0x91, kvm_cpuid2)
KVM_TPR_ACCESS_REPORTING = _IOWR(KVMIO, 0x92, kvm_tpr_access_ctl)
KVM_SET_VAPIC_ADDR = _IOW(KVMIO, 0x93, kvm_vapic_addr)
KVM_GET_MP_STATE = _IOR(KVMIO, 0x98, kvm_mp_state)
KVM_SET_MP_STATE = _IOW(KVMIO, 0x99, kvm_mp_state)
KVM_NMI = _IO(KVMIO, 0x9A)
KVM_SET_GUEST_DEBUG = _IOW(KVMIO, 0x9B, kvm_guest_debug)
KVM_X86_SETUP_MCE = _IOW(KVMIO, 0x9C, u64)
KVM_X86_SET_MCE = _IOW(KVMIO, 0x9E, kvm_x86_mce)
KVM_GET_VCPU_EVENTS = _IOR(KVMIO, 0x9F, kvm_vcpu_events)
KVM_SET_VCPU_EVENTS = _IOW(KVMIO, 0xA0, kvm_vcpu_events)
KVM_GET_DEBUGREGS = _IOR(KVMIO, 0xA1, kvm_debugregs)
KVM_SET_DEBUGREGS = _IOW(KVMIO, 0xA2, kvm_debugregs)
KVM_ENABLE_CAP = _IOW(KVMIO, 0xA3, kvm_enable_cap)  # VM and vCPU
KVM_GET_XSAVE = _IOR(KVMIO, 0xA4, kvm_xsave)
KVM_SET_XSAVE = _IOW(KVMIO, 0xA5, kvm_xsave)
KVM_GET_XCRS = _IOR(KVMIO, 0xA6, kvm_xcrs)
KVM_SET_XCRS = _IOW(KVMIO, 0xA7, kvm_xcrs)
KVM_GET_ONE_REG = _IOW(KVMIO, 0xAB, kvm_one_reg)
KVM_SET_ONE_REG = _IOW(KVMIO, 0xAC, kvm_one_reg)
KVM_KVMCLOCK_CTRL = _IO(KVMIO, 0xAD)
KVM_GET_REG_LIST = _IOWR(KVMIO, 0xB0, kvm_reg_list)
KVM_SMI = _IO(KVMIO, 0xB7)
KVM_MEMORY_ENCRYPT_OP = _IOWR(KVMIO, 0xBA, ctypes.c_ulong)     # VM and vCPU (SEV, TDX)
KVM_GET_NESTED_STATE = _IOWR(KVMIO, 0xBE, kvm_nested_state)
KVM_SET_NESTED_STATE = _IOW(KVMIO, 0xBF, kvm_nested_state)
KVM_GET_SREGS2 = _IOR(KVMIO, 0xCC, kvm_sregs2)
KVM_SET_SREGS2 = _IOW(KVMIO, 0xCD, kvm_sregs2)
KVM_GET_STATS_FD = _IO(KVMIO, 0xCE)          # VM and vCPU
KVM_GET_XSAVE2 = _IOR(KVMIO, 0xCF, kvm_xsave)

IOCTL_NAMES = {}
for _k, _v in list(globals().items()):
    if _k.startswith("KVM_") and isinstance(_v, int) and _IOC_TYPE(_v) == KVMIO:
        IOCTL_NAMES.setdefault(_v, _k)
del _k, _v


def ioctl_name(cmd: int) -> str:
    """Human-readable name of an ioctl number (for traces and error messages)."""
    return IOCTL_NAMES.get(cmd, "ioctl(%#x)" % cmd)


__all__ = [_n for _n, _v in list(globals().items())
           if not _n.startswith("__") and _n not in ("ctypes", "functools", "annotations")
           and not (_n.startswith("_") and not _n.startswith("_IO"))]
