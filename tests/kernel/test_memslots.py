"""Memslot bookkeeping under many changes: the gfn-sorted table that gfn_to_memslot bisects,
the overlap check (EEXIST) and the page count, which kvm_set_memory_region updates by the one
slot that changed, against a plain model of the slots.

Why: VMMs change slots by the thousand (SeaBIOS under QEMU deletes and re-adds them at run
time; the selftest set_memory_region_test adds KVM_CAP_NR_MEMSLOTS of them), so each change
must not rebuild the table, and an incremental table is easy to get wrong on moves, flag
changes and deletes.
"""

import ctypes
import errno
import mmap
import random

from kvmpy import syscalls as S
from kvmpy import uapi
from kvmpy.kernel import fs, kvm_host

PAGE = 4096


def _set(vm, slot, gpa, size, addr, flags=0):
    try:
        S.ioctl(vm, uapi.KVM_SET_USER_MEMORY_REGION, uapi.kvm_userspace_memory_region(slot, flags, gpa, size, addr))
        return 0
    except OSError as e:
        return e.errno


def test_random_slot_changes_match_a_model(soft_kvm):
    rng = random.Random(7)
    kvm = S.open("/dev/kvm")
    vm = S.ioctl(kvm, uapi.KVM_CREATE_VM)
    mem = mmap.mmap(-1, 64 * PAGE)
    addr = ctypes.addressof(ctypes.c_char.from_buffer(mem))
    model = {}                  # slot id -> (base_gfn, npages, hva offset)
    try:
        for _ in range(600):
            slot = rng.randrange(40)
            if slot in model and rng.random() < 0.3:
                assert _set(vm, slot, 0, 0, 0) == 0                         # delete
                del model[slot]
                continue
            if slot in model:                                               # move, or change flags
                _, npages, off = model[slot]
                base = rng.randrange(400) if rng.random() < 0.7 else model[slot][0]
                flags = rng.choice((0, uapi.KVM_MEM_LOG_DIRTY_PAGES))
            else:
                npages, off, base, flags = rng.randrange(1, 9), rng.randrange(56), rng.randrange(400), 0
            clash = any(other != slot and b < base + npages and base < b + n for other, (b, n, _) in model.items())
            got = _set(vm, slot, base * PAGE, npages * PAGE, addr + off * PAGE, flags)
            assert got == (errno.EEXIST if clash else 0), (slot, base, npages, model)
            if not clash:
                model[slot] = (base, npages, off)
        k = fs.fdget(vm).private_data
        owner = {b + i: s for s, (b, n, _) in model.items() for i in range(n)}
        for gfn in range(410):
            found = kvm_host.gfn_to_memslot(k, gfn)
            assert (found.id if found else None) == owner.get(gfn), gfn
        assert k.nr_memslot_pages == sum(n for _, n, _ in model.values())
        assert [e[0] for e in k._slots_by_gfn] == sorted(b for b, _, _ in model.values())
    finally:
        S.close(vm)
        S.close(kvm)
