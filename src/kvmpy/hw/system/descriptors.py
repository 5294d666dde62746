"""Segment descriptors as the processor reads them from the GDT/LDT (SDM vol. 3 3.4.5).

Shared by segment loads (``kvmpy.hw.system.segments``), task switches (``kvmpy.hw.system.tasks``) and the
descriptor-table instructions (``kvmpy.hw.system.sysops``), none of which needs the others for it.
"""

from __future__ import annotations

from kvmpy.hw.state import Segment


def parse_descriptor(d: int, seg: Segment, selector: int) -> Segment:
    lo, hi = d & 0xFFFFFFFF, d >> 32
    seg.selector = selector
    seg.base = ((lo >> 16) & 0xFFFF) | ((hi & 0xFF) << 16) | (hi & 0xFF000000)
    limit = (lo & 0xFFFF) | (hi & 0xF0000)
    seg.g = (hi >> 23) & 1
    seg.limit = (limit << 12) | 0xFFF if seg.g else limit
    seg.type = (hi >> 8) & 0xF
    seg.s = (hi >> 12) & 1
    seg.dpl = (hi >> 13) & 3
    seg.present = (hi >> 15) & 1
    seg.avl = (hi >> 20) & 1
    seg.l = (hi >> 21) & 1
    seg.db = (hi >> 22) & 1
    seg.unusable = 0
    return seg
