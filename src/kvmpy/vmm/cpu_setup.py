"""Initial vCPU state for the images the loaders produce.

* flat binaries start like a boot sector: real mode, CS:IP = 0:load address;
* ELF executables start in 32-bit protected mode with flat 4 GiB code and data segments
  from a three-entry GDT the VMM writes into guest memory (paging off), at the ELF entry
  point — the state a multiboot loader hands to a kernel;
* a multiboot kernel starts in the same flat protected mode at its entry, with EAX = the
  multiboot boot magic and EBX = the information structure (the multiboot spec; the
  selectors are QEMU's option ROM's too, code 0x08 and data 0x10);
* a bzImage starts as the Linux boot protocol says (boot.rst): at its 64-bit entry in long
  mode with the low 1 GiB identity-mapped, or at its 32-bit entry in flat protected mode,
  the code segment at __BOOT_CS (0x10) and data at __BOOT_DS (0x18), RSI/ESI pointing at
  the zero page;
* a PVH kernel starts as Xen's direct boot ABI says (docs/misc/pvh.pandoc): 32-bit
  protected mode, paging off, CR0 only PE (and the fixed ET), CR4 clear, CS a flat 4 GiB
  execute/read segment, DS/ES/SS flat read/write, TR an active 32-bit TSS (base 0, limit
  0x67), IF and TF clear, EBX = ``hvm_start_info``.  The ABI leaves the selectors and GDT
  open; these are the ELF entry's GDT (code 0x08, data 0x10) with the TSS at 0x18.

The CPUID the vCPU gets is KVM's supported table, with the features ``-cpu`` turns off
cleared (:func:`edit_cpu_features`).
"""

from kvmpy.hw.features import FEATURES
from kvmpy.uapi.kvm import KVM_CPUID_FLAG_SIGNIFCANT_INDEX
from kvmpy.vmm.loader import LoadError
from kvmpy.vmm.multiboot import BOOT_MAGIC

GDT_ADDR = 0x500
GDT_ENTRIES = (
    0x0000000000000000,  # null
    0x00CF9A000000FFFF,  # 0x08: code, base 0, limit 4 GiB, 32-bit, execute/read
    0x00CF92000000FFFF,  # 0x10: data, base 0, limit 4 GiB, 32-bit, read/write
)
CODE_SELECTOR, DATA_SELECTOR = 0x08, 0x10
#: a PVH entry's TR: a busy 32-bit TSS, base 0, limit 0x67 (descriptor and segment type)
PVH_TSS_DESCRIPTOR, PVH_TSS_SELECTOR, PVH_TSS_LIMIT, TSS32_BUSY = 0x00008B0000000067, 0x18, 0x67, 0xB
#: the Linux boot protocol's GDT: __BOOT_CS = 0x10, __BOOT_DS = 0x18 (code is 64-bit or 32-bit)
LINUX_CODE64, LINUX_CODE32, LINUX_DATA = 0x00AF9A000000FFFF, 0x00CF9A000000FFFF, 0x00CF92000000FFFF
LINUX_CS, LINUX_DS = 0x10, 0x18
#: identity page tables for a 64-bit Linux entry: 0 .. 1 GiB in 2 MiB pages (Firecracker's places)
PML4_ADDR, PDPT_ADDR, PD_ADDR = 0x9000, 0xA000, 0xB000
PTE_PRESENT_RW, PDE_LARGE = 0x3, 0x80
PAGE_2M = 1 << 21
CR0_PE, CR0_ET, CR0_PG = 1 << 0, 1 << 4, 1 << 31
CR4_PAE = 1 << 5
EFER_LME, EFER_LMA = 1 << 8, 1 << 10
RFLAGS_RESERVED = 1 << 1


def setup_real_mode(vcpu, entry):
    """CS:IP = 0:entry, everything else as after reset."""
    sregs = vcpu.get_sregs()
    sregs.cs.selector = 0
    sregs.cs.base = 0
    vcpu.set_sregs(sregs)
    regs = vcpu.get_regs()
    regs.rip = entry
    regs.rflags = RFLAGS_RESERVED
    vcpu.set_regs(regs)


def _flat_segment(seg, selector, type_):
    seg.base = 0
    seg.limit = 0xFFFFFFFF
    seg.selector = selector
    seg.type = type_
    seg.present = 1
    seg.dpl = 0
    seg.db = 1
    seg.s = 1
    seg.l = 0
    seg.g = 1
    seg.avl = 0
    seg.unusable = 0


def setup_protected_mode(vcpu, memory, image, gdt=GDT_ENTRIES):
    """Flat 32-bit protected mode at ``image.entry``, ``gdt`` at :data:`GDT_ADDR` (its
    first three entries: null, code, data)."""
    gdt_size = 8 * len(gdt)
    for start, size in image.segments:
        if start < GDT_ADDR + gdt_size and GDT_ADDR < start + size:
            raise LoadError(f"the image overlaps the VMM's GDT at {GDT_ADDR:#x}")
    for i, descriptor in enumerate(gdt):
        memory.write_int(GDT_ADDR + 8 * i, 8, descriptor)
    sregs = vcpu.get_sregs()
    sregs.gdt.base = GDT_ADDR
    sregs.gdt.limit = gdt_size - 1
    _flat_segment(sregs.cs, CODE_SELECTOR, 0xB)  # code, execute/read, accessed
    for seg in (sregs.ds, sregs.es, sregs.fs, sregs.gs, sregs.ss):
        _flat_segment(seg, DATA_SELECTOR, 0x3)  # data, read/write, accessed
    sregs.cr0 |= CR0_PE
    vcpu.set_sregs(sregs)
    regs = vcpu.get_regs()
    regs.rip = image.entry
    regs.rflags = RFLAGS_RESERVED
    vcpu.set_regs(regs)


def setup_multiboot(vcpu, memory, image):
    """A multiboot kernel's entry: flat protected mode, EAX = magic, EBX = the info."""
    setup_protected_mode(vcpu, memory, image)
    regs = vcpu.get_regs()
    regs.rax, regs.rbx = BOOT_MAGIC, image.boot_params
    vcpu.set_regs(regs)


def setup_pvh(vcpu, memory, image):
    """A PVH kernel's entry (see the module docstring)."""
    setup_protected_mode(vcpu, memory, image, GDT_ENTRIES + (PVH_TSS_DESCRIPTOR,))
    sregs = vcpu.get_sregs()
    sregs.cr0, sregs.cr4, sregs.efer = CR0_PE | CR0_ET, 0, 0
    tr = sregs.tr
    tr.base, tr.limit, tr.selector, tr.type = 0, PVH_TSS_LIMIT, PVH_TSS_SELECTOR, TSS32_BUSY
    tr.present, tr.dpl, tr.db, tr.s, tr.l, tr.g, tr.avl, tr.unusable = 1, 0, 0, 0, 0, 0, 0, 0
    vcpu.set_sregs(sregs)
    regs = vcpu.get_regs()
    regs.rbx = image.boot_params
    vcpu.set_regs(regs)


def setup_linux_boot(vcpu, memory, image):
    """The boot protocol's entry state for a loaded bzImage (see the module docstring)."""
    long_mode = image.bits == 64
    gdt = (0, 0, LINUX_CODE64 if long_mode else LINUX_CODE32, LINUX_DATA)
    for i, descriptor in enumerate(gdt):
        memory.write_int(GDT_ADDR + 8 * i, 8, descriptor)
    sregs = vcpu.get_sregs()
    sregs.gdt.base, sregs.gdt.limit = GDT_ADDR, 8 * len(gdt) - 1
    _flat_segment(sregs.cs, LINUX_CS, 0xB)
    for seg in (sregs.ds, sregs.es, sregs.fs, sregs.gs, sregs.ss):
        _flat_segment(seg, LINUX_DS, 0x3)
    sregs.cr0 |= CR0_PE
    if long_mode:
        memory.write_int(PML4_ADDR, 8, PDPT_ADDR | PTE_PRESENT_RW)
        memory.write_int(PDPT_ADDR, 8, PD_ADDR | PTE_PRESENT_RW)
        for i in range(512):
            memory.write_int(PD_ADDR + 8 * i, 8, i * PAGE_2M | PTE_PRESENT_RW | PDE_LARGE)
        sregs.cs.l, sregs.cs.db = 1, 0
        sregs.cr3 = PML4_ADDR
        sregs.cr4 |= CR4_PAE
        sregs.cr0 |= CR0_PG
        sregs.efer |= EFER_LME | EFER_LMA
    vcpu.set_sregs(sregs)
    regs = vcpu.get_regs()
    regs.rip = image.entry
    regs.rsi = image.boot_params
    regs.rflags = RFLAGS_RESERVED
    vcpu.set_regs(regs)


def setup_boot_state(vcpu, memory, image):
    """The entry state that fits ``image`` (a :class:`~kvmpy.vmm.loader.LoadedImage`)."""
    if image.kind == "flat":
        setup_real_mode(vcpu, image.entry)
    elif image.kind == "bzimage":
        setup_linux_boot(vcpu, memory, image)
    elif image.kind == "multiboot":
        setup_multiboot(vcpu, memory, image)
    elif image.kind == "pvh":
        setup_pvh(vcpu, memory, image)
    else:
        setup_protected_mode(vcpu, memory, image)


class FeatureUnsupported(ValueError):
    """``-cpu ...,+feat`` for a feature KVM cannot give the guest."""


def edit_cpu_features(cpuid, edits):
    """``cpuid`` (a ``kvm_cpuid2`` from KVM_GET_SUPPORTED_CPUID) with each feature of
    ``edits`` ({name: on}) set or cleared.  Turning on a bit KVM does not report is
    refused, as QEMU's ``enforce`` does: KVM cannot virtualise what it does not support."""
    for name, on in edits.items():
        leaf, subleaf, reg, bit = FEATURES[name]
        entry = next((e for e in cpuid.entries[:cpuid.nent] if e.function == leaf and (
            e.index == subleaf or not e.flags & KVM_CPUID_FLAG_SIGNIFCANT_INDEX)), None)
        value = getattr(entry, reg) if entry is not None else 0
        if on and not value >> bit & 1:
            raise FeatureUnsupported(f"CPU feature {name}: not supported by this KVM "
                                     f"(KVM_GET_SUPPORTED_CPUID)")
        if not on and entry is not None:
            setattr(entry, reg, value & ~(1 << bit))
    return cpuid


#: the leaves whose EDX is the x2APIC ID (extended topology, v1 and v2)
TOPOLOGY_LEAVES = (0xB, 0x1F)
AMD_EXT_APIC_ID_LEAF = 0x8000001E       # EAX: the extended APIC ID


def cpuid_for_vcpu(cpuid, apic_id):
    """A copy of ``cpuid`` for the vCPU with APIC ID ``apic_id``: the IDs CPUID reports are
    the VMM's to fill, as QEMU does (KVM passes them through): leaf 1 EBX[31:24] the
    initial APIC ID, EDX of every extended-topology subleaf the x2APIC ID, and AMD's
    leaf 0x8000001E EAX the extended APIC ID."""
    copy = type(cpuid).from_buffer_copy(cpuid)
    for e in copy.entries[:copy.nent]:
        if e.function == 1:
            e.ebx = (e.ebx & 0x00FFFFFF) | (apic_id & 0xFF) << 24
        elif e.function in TOPOLOGY_LEAVES:
            e.edx = apic_id
        elif e.function == AMD_EXT_APIC_ID_LEAF:
            e.eax = apic_id
    return copy
