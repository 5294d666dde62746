"""KVM's MMU (arch/x86/kvm/mmu): two-dimensional paging and shadow paging.

``kvm_init_mmu`` chooses, like the kernel's ``ept``/``npt`` module parameter:

- **TDP** (``init_kvm_tdp_mmu``): the processor walks the guest's page tables
  itself and translates guest-physical addresses through a second-level table,
  one per VM (``kvm.arch.tdp``: gfn -> host page).  A miss is an EPT/NPT
  violation; ``kvm_tdp_page_fault`` fills it from the memslot, or sends the
  access down the MMIO path when there is no memslot.
- **Shadow** (``init_kvm_softmmu``): the processor translates linear addresses
  only through KVM's shadow table (per vCPU: linear page -> host page).  A miss
  is a #PF exit; ``paging_page_fault`` walks the guest tables in software (the
  shared walker in ``kvmpy.hw.paging``), raises the guest's own #PF when its
  mapping is absent (``kvm_mmu_page_fault`` injects it), or fills the shadow entry.  Guest page-table pages are
  write-protected; a write to one is emulated and zaps the shadow entries.  When the write
  cannot be emulated (an exception frame pushed there, an instruction the emulator lacks),
  ``kvm_mmu_unprotect_gfn_and_retry`` stops shadowing the page and lets the guest write it
  itself -- unless the page translates the very address written (``write_fault_to_shadow_pgtable``):
  it would be shadowed again by the walk of the retry.

Dirty logging write-protects a slot's pages and records the first write to each.
"""

from __future__ import annotations

from kvmpy.hw import memory as hm
from kvmpy.hw import paging
from kvmpy.hw.events import Fault
from kvmpy.hw.x86defs import CR0_PG, CR0_WP, EFER_LMA
from kvmpy.uapi import kvm as uapi
from kvmpy.kernel.kvm_host import gfn_to_memslot, hva_to_pfn, mark_page_dirty_in_slot
from kvmpy.kernel.trace import event, traced
from kvmpy.kernel.x86 import params

RET_PF_RETRY, RET_PF_EMULATE, RET_PF_WRITE_PROTECTED = 1, 2, 3


def kvm_mmu_do_page_fault(handler):
    """Wrap an MMU's page-fault handler with the kernel's accounting around it: every fault
    is ``pf_taken``, one sent to the emulator also ``pf_emulate`` (handlers count
    ``pf_fixed`` and ``pf_guest`` themselves, where they know)."""
    def do_page_fault(vcpu, *fault):
        vcpu.stat["pf_taken"] += 1
        r = handler(vcpu, *fault)
        if r == RET_PF_EMULATE:
            vcpu.stat["pf_emulate"] += 1
        return r
    do_page_fault.__name__ = do_page_fault.__qualname__ = handler.__name__
    do_page_fault.__doc__ = handler.__doc__
    return do_page_fault


class KvmMmu:
    """struct kvm_mmu: which page-fault handler and walker this vCPU uses."""

    def __init__(self):
        self.tdp = True
        self.page_fault = None
        self.generation = -1
        self.pt_gfns: set = set()       # shadow paging: gfns of guest page-table pages (write-protected)
        # the last write fault hit a page table that translates the address written
        self.write_fault_to_shadow_pgtable = False
        self.last_retry_eip = self.last_retry_addr = None   # the last unprotect-and-retry


class TdpTable:
    """The VM's second-level page table (EPT/NPT), shared by its vCPUs."""

    def __init__(self):
        self.map: dict = {}             # gfn -> host address of the page
        self.ro: set = set()            # gfns mapped read-only (read-only slots, dirty logging)


@traced
def kvm_mmu_create(vcpu) -> None:
    vcpu.arch.mmu = KvmMmu()


@traced
def kvm_init_mmu(vcpu) -> None:
    if params.ept:
        init_kvm_tdp_mmu(vcpu)
    else:
        init_kvm_softmmu(vcpu)


@traced
def init_kvm_tdp_mmu(vcpu) -> None:
    mmu, cpu = vcpu.arch.mmu, vcpu.arch.cpu
    mmu.tdp = True
    mmu.page_fault = kvm_tdp_page_fault
    t = vcpu.kvm.arch.tdp
    cpu.tdp = True
    cpu.ept, cpu.ept_ro = t.map, t.ro
    cpu.exception_bitmap &= ~(1 << uapi.PF_VECTOR)
    cpu.intercept_cr3 = cpu.intercept_invlpg = cpu.intercept_cr0_cr4 = False
    cpu.flush_tlb()


@traced
def init_kvm_softmmu(vcpu) -> None:
    mmu, cpu = vcpu.arch.mmu, vcpu.arch.cpu
    mmu.tdp = False
    mmu.page_fault = paging_page_fault
    cpu.tdp = False
    cpu.shadow = {}
    cpu.exception_bitmap |= 1 << uapi.PF_VECTOR
    cpu.intercept_cr3 = cpu.intercept_invlpg = cpu.intercept_cr0_cr4 = True
    cpu.flush_tlb()


def kvm_mmu_check_generation(vcpu) -> None:
    """Drop cached translations after a memslot change (the kernel zaps on commit)."""
    mmu = vcpu.arch.mmu
    gen = vcpu.kvm.memslots_generation
    if mmu.generation != gen:
        mmu.generation = gen
        if mmu.tdp:
            t = vcpu.kvm.arch.tdp
            t.map.clear()
            t.ro.clear()
        else:
            vcpu.arch.cpu.shadow.clear()
            mmu.pt_gfns.clear()
        vcpu.arch.cpu.flush_tlb()


def _slot_host(slot, gfn) -> int:
    return slot.userspace_addr + ((gfn - slot.base_gfn) << 12)


def kvm_faultin_pfn(kvm, slot, gfn: int, write: bool):
    """The host page backing ``gfn`` in ``slot``, faulted in for the access; None when the
    user memory is not there with the needed permission (unmapped, never mapped, read-only
    or PROT_NONE).  Every mapping KVM's MMU installs, and every access KVM itself makes to
    guest memory, comes through here first.  A frame without backing is handled like one
    without a slot: the access goes to the emulator and out as MMIO (an instruction fetch
    from it is an emulation failure), which is what the host's KVM answers."""
    host = hva_to_pfn(_slot_host(slot, gfn), write)
    if host is not None:
        kvm.mmu_mapped_slots.add(slot.id)
    return host


def _slot_ro(slot, gfn) -> bool:
    if slot.flags & uapi.KVM_MEM_READONLY:
        return True
    if slot.flags & uapi.KVM_MEM_LOG_DIRTY_PAGES:
        return not _is_dirty(slot, gfn)
    return False


def _is_dirty(slot, gfn) -> bool:
    bitmap = getattr(slot, "dirty_bitmap", None)
    if bitmap is None:
        return False
    i = gfn - slot.base_gfn
    return bool(bitmap[i >> 3] >> (i & 7) & 1) if isinstance(bitmap, (bytearray, bytes)) else i in bitmap


@kvm_mmu_do_page_fault
@traced
def kvm_tdp_page_fault(vcpu, gpa: int, write: bool, fetch: bool) -> int:
    """EPT/NPT violation: map the page from its memslot, or report MMIO."""
    gfn = gpa >> 12
    slot = gfn_to_memslot(vcpu.kvm, gfn)
    event("kvm_page_fault", vcpu=vcpu.vcpu_id, address=gpa, error_code=int(write) << 1)
    if slot is None:
        return RET_PF_EMULATE
    t = vcpu.kvm.arch.tdp
    if write and slot.flags & uapi.KVM_MEM_READONLY:
        return RET_PF_EMULATE
    host = kvm_faultin_pfn(vcpu.kvm, slot, gfn, write)
    if host is None:
        return RET_PF_EMULATE
    if write and slot.flags & uapi.KVM_MEM_LOG_DIRTY_PAGES:
        mark_page_dirty_in_slot(vcpu.kvm, slot, gfn)
    t.map[gfn] = host
    # mapped writable only after a write fault: a read fault checked the backing for reading
    if not write or _slot_ro(slot, gfn) and not slot.flags & uapi.KVM_MEM_LOG_DIRTY_PAGES:
        t.ro.add(gfn)
    else:
        t.ro.discard(gfn)
    vcpu.stat["pf_fixed"] += 1
    return RET_PF_RETRY


def kvm_unmap_gfn_range(kvm, start: int, end: int) -> None:
    """Zap the TDP and shadow entries of gfns [start, end); the caller then flushes the
    vCPUs' TLBs (kvm_flush_remote_tlbs), kicking those in guest mode out first."""
    t = kvm.arch.tdp
    if end - start <= len(t.map):
        gone = [g for g in range(start, end) if g in t.map]
    else:
        gone = [g for g in list(t.map) if start <= g < end]
    for g in gone:
        t.map.pop(g, None)
        t.ro.discard(g)
    for vcpu in kvm.vcpus:
        shadow = vcpu.arch.cpu.shadow
        for lpn, ent in list(shadow.items()):
            if start <= ent[3] < end:
                shadow.pop(lpn, None)


def kvm_arch_flush_shadow_memslot(kvm, slot) -> None:
    kvm_unmap_gfn_range(kvm, slot.base_gfn, slot.base_gfn + slot.npages)


def kvm_arch_mmu_enable_log_dirty_pt_masked(kvm, slot, gfns) -> None:
    """Dirty logging: write-protect the pages just harvested by KVM_GET_DIRTY_LOG again, in
    the TDP table and in every vCPU's shadow table, so that their next write is logged."""
    gfns = set(gfns)
    t = kvm.arch.tdp
    t.ro.update(g for g in gfns if g in t.map)
    for vcpu in kvm.vcpus:
        cpu = vcpu.arch.cpu
        if not cpu.tdp:
            for lpn, ent in list(cpu.shadow.items()):
                if ent[1] and ent[3] in gfns:
                    cpu.shadow[lpn] = (ent[0], False, ent[2], ent[3])
        cpu.flush_tlb()
    kvm.stat["remote_tlb_flush"] += 1       # kvm_flush_remote_tlbs


# ------------------------------------------------------------------ guest memory by gpa
def kvm_read_guest(kvm, gpa: int, size: int) -> int:
    """Read guest RAM within one page; LookupError when ``gpa`` is not backed RAM."""
    host = gpa_to_host(kvm, gpa, False)
    if host is None:
        raise LookupError(gpa)
    return hm.read(host, size)


def kvm_write_guest(kvm, gpa: int, size: int, value: int) -> None:
    host = gpa_to_host(kvm, gpa, True)
    if host is None:
        raise LookupError(gpa)
    hm.write(host, size, value)


def gpa_to_host(kvm, gpa: int, write: bool):
    """Host address of guest-physical ``gpa`` if backed RAM (writable for ``write``), else
    None (MMIO).  The one way KVM's own accesses (emulator, page walker, task switches,
    KVM_TRANSLATE) reach guest memory: through ``kvm_faultin_pfn``'s check."""
    slot = gfn_to_memslot(kvm, gpa >> 12)
    if slot is None or (write and slot.flags & uapi.KVM_MEM_READONLY):
        return None
    host = kvm_faultin_pfn(kvm, slot, gpa >> 12, write)
    if host is None:
        return None
    if write:
        mark_page_dirty_in_slot(kvm, slot, gpa >> 12)
    return host + (gpa & 0xFFF)


def kvm_mmu_gva_to_gpa(vcpu, gva: int, access: int, track_tables=None,
                       system: bool = False, user_from_cpl: bool = True) -> int:
    """KVM's software walk of the guest page tables (raises Fault(14) like the guest would see).

    ``track_tables``: a set to which the gfns of the guest's page tables read are added,
    each write-protected as a shadowed table (shadow paging's own walk).
    ``system``: an access of KVM's own (kvm_mmu_gva_to_gpa_system, e.g. KVM_TRANSLATE): a
    supervisor access whatever the guest's CPL, and without paging the address is the
    guest-physical address as given (nonpaging_gva_to_gpa), not truncated to 32 bits.
    ``user_from_cpl`` False: ``access`` already says whether it is a user access (a #PF's
    error code: an implicit supervisor access at CPL 3 has U/S clear).
    """
    cpu = vcpu.arch.cpu
    if not cpu.cr0 & CR0_PG:
        gpa = gva & 0xFFFFFFFF if not cpu.efer & EFER_LMA and not system else gva
        return gpa, paging.Translation(gpa & ~0xFFF, True, True, False, 0x1000, False)
    if cpu.mode.cpl == 3 and not system and user_from_cpl:
        access |= paging.PFERR_USER
    kvm = vcpu.kvm

    def read_pte(gpa, size):
        if track_tables is not None:
            track_tables.add(gpa >> 12)
            _protect_table(vcpu, gpa >> 12)
        return kvm_read_guest(kvm, gpa, size)

    def write_pte(gpa, size, value):
        kvm_write_guest(kvm, gpa, size, value)

    try:
        t = paging.walk(gva, access, cpu.cr0, cpu.cr3, cpu.cr4, cpu.efer, read_pte, write_pte,
                        vcpu.arch.maxphyaddr, vcpu.arch.gbpages)
    except LookupError:
        raise Fault(uapi.PF_VECTOR, access | paging.PFERR_RSVD | 1, cr2=gva) from None
    return t.gpa | (gva & 0xFFF), t


# ------------------------------------------------------------------ shadow paging
def _protect_table(vcpu, gfn):
    mmu = vcpu.arch.mmu
    if gfn in mmu.pt_gfns:
        return
    mmu.pt_gfns.add(gfn)
    cpu = vcpu.arch.cpu
    for lpn, ent in list(cpu.shadow.items()):
        if ent[3] == gfn and ent[1]:
            cpu.shadow[lpn] = (ent[0], False, ent[2], gfn)
    cpu.flush_tlb()


@kvm_mmu_do_page_fault
@traced
def paging_page_fault(vcpu, gva: int, error_code: int) -> int:
    """Shadow paging's #PF handler (paging_tmpl.h's FNAME(page_fault)).

    A fault the guest's own tables cause is the guest's: raised as ``Fault(14)`` for the
    caller to inject (the MMU sits below the code that queues exceptions).  The error
    code's U/S bit, not the CPL, says whether the access is a user one: the processor's
    implicit supervisor accesses (descriptor tables, the TSS) at CPL 3 have it clear."""
    cpu = vcpu.arch.cpu
    event("kvm_page_fault", vcpu=vcpu.vcpu_id, address=gva, error_code=error_code)
    access = error_code & (paging.PFERR_WRITE | paging.PFERR_FETCH | paging.PFERR_USER)
    tables = set()
    try:
        gpa, t = kvm_mmu_gva_to_gpa(vcpu, gva, access, track_tables=tables, user_from_cpl=False)
    except Fault as f:
        vcpu.stat["pf_guest"] += 1
        raise Fault(uapi.PF_VECTOR, f.error_code, cr2=gva) from None    # the guest's #PF: the caller injects it
    gfn = gpa >> 12
    slot = gfn_to_memslot(vcpu.kvm, gfn)
    if slot is None:
        return RET_PF_EMULATE
    user = bool(error_code & paging.PFERR_USER)
    writable = t.writable or (not user and not cpu.cr0 & CR0_WP)
    if slot.flags & uapi.KVM_MEM_READONLY:
        writable = False
    if gfn in vcpu.arch.mmu.pt_gfns:
        if error_code & paging.PFERR_WRITE and writable:
            vcpu.kvm.stat["mmu_pte_write"] += 1
            vcpu.arch.mmu.write_fault_to_shadow_pgtable = gfn in tables
            return RET_PF_WRITE_PROTECTED   # emulate the write, then zap (see kvm_mmu_pte_write)
        writable = False
    if error_code & paging.PFERR_WRITE and slot.flags & uapi.KVM_MEM_LOG_DIRTY_PAGES:
        mark_page_dirty_in_slot(vcpu.kvm, slot, gfn)
    elif slot.flags & uapi.KVM_MEM_LOG_DIRTY_PAGES and not _is_dirty(slot, gfn):
        writable = False
    if error_code & paging.PFERR_WRITE and not writable and not slot.flags & uapi.KVM_MEM_READONLY:
        return RET_PF_EMULATE
    if error_code & paging.PFERR_WRITE and slot.flags & uapi.KVM_MEM_READONLY:
        return RET_PF_EMULATE
    host = kvm_faultin_pfn(vcpu.kvm, slot, gfn, bool(error_code & paging.PFERR_WRITE))
    if host is None:
        return RET_PF_EMULATE
    writable = writable and bool(error_code & paging.PFERR_WRITE)   # backing checked for writes only
    cpu.shadow[gva >> 12] = (host, writable, t.user, gfn)
    cpu.flush_tlb()
    vcpu.stat["pf_fixed"] += 1
    return RET_PF_RETRY


def kvm_mmu_unprotect_gfn_and_retry(vcpu, gva: int) -> bool:
    """Stop shadowing the guest page table that the write to ``gva`` hit, so that the guest
    writes it itself when it re-executes the instruction (or delivers the event) KVM could
    not emulate.  The shadow entries built through the table go with it: kvmpy keeps no
    record of which those are, so all of them go, as after an emulated table write.
    Remembers RIP and address, so that a second fault there is not retried again (see
    ``kvm_mmu_write_protect_fault``).  False if the page was no longer protected (the
    caller retries all the same: another path may have unprotected it)."""
    mmu = vcpu.arch.mmu
    try:
        gpa, _ = kvm_mmu_gva_to_gpa(vcpu, gva, paging.PFERR_WRITE)
    except Fault:
        return False
    if gpa >> 12 not in mmu.pt_gfns:
        return False
    mmu.last_retry_eip, mmu.last_retry_addr = vcpu.arch.cpu.rip, gva
    vcpu.arch.cpu.shadow.clear()
    mmu.pt_gfns.clear()
    vcpu.arch.cpu.flush_tlb()
    vcpu.kvm.stat["mmu_shadow_zapped"] += 1
    return True


def kvm_mmu_write_protect_fault(vcpu, gva: int) -> bool:
    """A write hit a write-protected guest page table: it is emulated.  May KVM, if the
    emulation fails, unprotect the page and let the guest retry instead?  Not when the
    retry would fault at the same RIP and address as the last one (it would loop), nor when
    the page translates the address written (the walk would protect it again)."""
    mmu = vcpu.arch.mmu
    if (mmu.last_retry_eip, mmu.last_retry_addr) == (vcpu.arch.cpu.rip, gva):
        return False
    mmu.last_retry_eip = mmu.last_retry_addr = None
    return not mmu.write_fault_to_shadow_pgtable


def kvm_mmu_pte_write(vcpu, gpa: int) -> None:
    """A guest page-table page was written: drop the shadow entries built from it."""
    if gpa >> 12 in vcpu.arch.mmu.pt_gfns:
        vcpu.arch.cpu.shadow.clear()
        vcpu.arch.mmu.pt_gfns.clear()
        vcpu.arch.cpu.flush_tlb()
        vcpu.kvm.stat["mmu_shadow_zapped"] += 1


@traced
def kvm_mmu_new_pgd(vcpu) -> None:
    """CR3 load under shadow paging: the shadow table for the old root is gone."""
    if not vcpu.arch.mmu.tdp:
        vcpu.arch.cpu.shadow.clear()
        vcpu.arch.mmu.pt_gfns.clear()
    vcpu.arch.cpu.flush_tlb()
    vcpu.stat["tlb_flush"] += 1


@traced
def kvm_mmu_invlpg(vcpu, gva: int) -> None:
    cpu = vcpu.arch.cpu
    cpu.shadow.pop(gva >> 12, None)
    for t in (cpu.tlb_r, cpu.tlb_w, cpu.tlb_x):
        t.pop(gva >> 12, None)
    vcpu.stat["invlpg"] += 1


def kvm_mmu_reset_context(vcpu) -> None:
    """Paging mode changed (CR0.PG/WP, CR4.PAE/PSE/PGE, EFER): rebuild translations."""
    kvm_mmu_new_pgd(vcpu)
