"""Sleepable RCU (kernel/rcu/srcutree.c), the part KVM uses for ``kvm->srcu``.

Readers (vCPUs using the memslots) mark a read-side section with ``srcu_read_lock`` /
``srcu_read_unlock``; an updater publishes new memslots, then ``synchronize_srcu_expedited``
returns once every section that began before the publication has ended -- from then on no
reader can still hold the old slots.

Each reader thread counts its sections in its own pair of counters (one per index), so
reader paths write only their own state and take no lock: cheap enough for every VM entry.
The updater flips the index and waits for the old index's counters to drain.  A reader
that read the index just before the flip still counts on the old index but began after
the publication, so it can only see the new slots.
"""

from __future__ import annotations

import threading
import time

_POLL = 0.0002          # s between looks at the readers (the wait releases the GIL)


class SrcuStruct:
    """struct srcu_struct."""

    def __init__(self):
        self.idx = 0
        self.readers: dict = {}         # thread ident -> [sections on index 0, on index 1]
        self.mutex = threading.Lock()   # one grace period at a time


def srcu_read_lock(ssp: SrcuStruct) -> int:
    counts = ssp.readers.get(threading.get_ident())
    if counts is None:
        counts = ssp.readers[threading.get_ident()] = [0, 0]
    idx = ssp.idx & 1
    counts[idx] += 1
    return idx


def srcu_read_unlock(ssp: SrcuStruct, idx: int) -> None:
    ssp.readers[threading.get_ident()][idx] -= 1


def synchronize_srcu_expedited(ssp: SrcuStruct) -> None:
    """Wait for the read-side sections in progress (other threads') to end."""
    me = threading.get_ident()
    with ssp.mutex:
        old = ssp.idx & 1
        ssp.idx += 1
        while any(c[old] for t, c in list(ssp.readers.items()) if t != me):
            time.sleep(_POLL)
