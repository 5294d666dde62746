"""The guest page-table walker: 32-bit, PAE and 4-level paging.

One walker, used by the processor (with TDP the silicon walks the guest's
tables itself), by KVM's shadow MMU (paging_tmpl.h's ``walk_addr``: with shadow
paging KVM walks them in software) and by ``KVM_TRANSLATE``.  Page-table
entries are read and written through callbacks on guest-physical addresses, so
each user decides how guest-physical memory is reached.
"""

from .events import Fault
from kvmpy.hw.x86defs import CR0_WP, CR4_PAE, CR4_PSE, EFER_LMA, EFER_NXE

# Page-fault error code bits, which are also the access kinds
PFERR_PRESENT, PFERR_WRITE, PFERR_USER, PFERR_RSVD, PFERR_FETCH = 1, 2, 4, 8, 16

P, RW, US, A, D, PS, G = 1, 2, 4, 0x20, 0x40, 0x80, 0x100
NX = 1 << 63
ADDR_MASK = 0x000FFFFFFFFFF000


class Translation:
    """Result of a walk: the guest-physical page and the combined permissions."""

    __slots__ = ("gpa", "writable", "user", "nx", "size", "global_")

    def __init__(self, gpa, writable, user, nx, size, global_):
        self.gpa, self.writable, self.user, self.nx, self.size, self.global_ = gpa, writable, user, nx, size, global_


def rsvd_bits(lo: int, hi: int) -> int:
    """The mask of bits ``lo`` to ``hi``, inclusive (empty when ``hi < lo``)."""
    return ((1 << (hi - lo + 1)) - 1) << lo if hi >= lo else 0


_RESERVED_CACHE: dict = {}


def reserved_masks(levels: int, nxe: bool, maxphyaddr: int, gbpages: bool):
    """Per level of a walk (the root first), the bits that must be zero in a present entry
    that points at a table and in one that maps a large page or is the leaf (the SDM,
    vol. 3, 4.4 to 4.5; KVM's shadow walker checks the same masks, reset_rsvds_bits_mask).
    A set one is a #PF with PFERR_RSVD: a page-table page that a guest has overwritten with
    data (an exception frame, say) faults where it would otherwise map garbage.

    ``levels``: 2 (32-bit paging), 3 (PAE: the PDPTEs are checked when CR3 is loaded, not
    here) or 4; ``maxphyaddr``: the physical-address width; ``gbpages``: 1-GByte pages."""
    key = levels, nxe, maxphyaddr, gbpages
    masks = _RESERVED_CACHE.get(key)
    if masks is not None:
        return masks
    if levels == 2:
        # a 4-MByte page (PSE-36): bits 20:13 are physical-address bits 39:32, those at or
        # above MAXPHYADDR (at most 40) reserved, and bit 21
        masks = ((0, rsvd_bits(min(maxphyaddr, 40) - 19, 21)), (0, 0))
    else:
        exb = 0 if nxe else 1 << 63
        high = exb | rsvd_bits(maxphyaddr, 51 if levels == 4 else 62)
        large_2m = high | rsvd_bits(13, 20)
        if levels == 3:
            masks = ((0, 0), (high, large_2m), (high, high))
        else:
            large_1g = high | rsvd_bits(13, 29) if gbpages else high | PS
            masks = ((high | PS, high | PS), (high, large_1g), (high, large_2m), (high, high))
    _RESERVED_CACHE[key] = masks
    return masks


def walk(lin: int, access: int, cr0: int, cr3: int, cr4: int, efer: int, read_pte, write_pte,
         maxphyaddr: int = 52, gbpages: bool = True) -> Translation:
    """Translate linear ``lin`` for ``access`` (PFERR_* bits), setting A/D bits.

    ``maxphyaddr`` and ``gbpages`` are the walking processor's (the silicon's for its own
    walk, the guest's CPUID for KVM's): they decide which entry bits are reserved.
    Raises ``Fault(14, error_code, cr2=lin)`` for a not-present, reserved or forbidden access.
    """
    if efer & EFER_LMA:
        levels = ((39, 8), (30, 8), (21, 8), (12, 8))
        table = cr3 & ADDR_MASK
    elif cr4 & CR4_PAE:
        levels = ((30, 8), (21, 8), (12, 8))
        table = cr3 & 0xFFFFFFE0
    else:
        levels = ((22, 4), (12, 4))
        table = cr3 & 0xFFFFF000
    nxe = efer & EFER_NXE
    writable = user = True
    nx = False
    entries = []
    pae_pdpte = not (efer & EFER_LMA) and cr4 & CR4_PAE
    reserved = reserved_masks(len(levels), bool(nxe), maxphyaddr, gbpages)
    for depth, (shift, esize) in enumerate(levels):
        nbits = 9 if esize == 8 else 10
        if pae_pdpte and depth == 0:
            nbits = 2
        idx = (lin >> shift) & ((1 << nbits) - 1)
        pte_addr = table + idx * esize
        pte = read_pte(pte_addr, esize)
        if not pte & P:
            raise Fault(14, _access_code(access, nxe), cr2=lin)
        leaf = depth == len(levels) - 1
        large = not leaf and pte & PS and (esize == 8 or cr4 & CR4_PSE)
        if pte & reserved[depth][bool(leaf or large)]:
            raise Fault(14, _access_code(access, nxe) | PFERR_PRESENT | PFERR_RSVD, cr2=lin)
        if pae_pdpte and depth == 0:
            table = pte & ADDR_MASK
            continue
        if not pte & RW:
            writable = False
        if not pte & US:
            user = False
        if nxe and esize == 8 and pte & NX:
            nx = True
        entries.append((pte_addr, pte, esize))
        if leaf or large:
            size = 1 << shift
            if esize == 4 and large:
                base = (pte & 0xFFC00000) | ((pte & 0x1FE000) << 19)     # PSE-36
            else:
                base = pte & ADDR_MASK & ~(size - 1)
            gpa = base | (lin & (size - 1) & ~0xFFF)
            _check(lin, access, writable, user, nx, cr0)
            _set_ad(entries, access & PFERR_WRITE, write_pte)
            return Translation(gpa, writable, user, nx, size, bool(pte & G))
        table = pte & (ADDR_MASK if esize == 8 else 0xFFFFF000)
    raise AssertionError("unreachable")


def _access_code(access, nxe):
    """The access bits of a #PF error code: write and user, and instruction fetch when
    EFER.NXE is set."""
    return access & (PFERR_WRITE | PFERR_USER | (PFERR_FETCH if nxe else 0))


def _check(lin, access, writable, user, nx, cr0):
    err = access | PFERR_PRESENT
    if access & PFERR_USER and not user:
        raise Fault(14, err & 0x1F, cr2=lin)
    if access & PFERR_WRITE and not writable and (access & PFERR_USER or cr0 & CR0_WP):
        raise Fault(14, err & 0x1F, cr2=lin)
    if access & PFERR_FETCH and nx:
        raise Fault(14, err & 0x1F, cr2=lin)


def _set_ad(entries, is_write, write_pte):
    last = len(entries) - 1
    for i, (addr, pte, esize) in enumerate(entries):
        new = pte | A
        if i == last and is_write:
            new |= D
        if new != pte:
            write_pte(addr, esize, new)
