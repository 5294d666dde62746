"""The kernel tracer: the call chains of the seed and KVM's trace points, recorded on demand.

``@traced`` marks a kernel function whose calls form the seed's chains (``kvm_dev_ioctl`` ->
``kvm_dev_ioctl_create_vm`` -> ``kvm_create_vm`` -> ...).  While tracing is on, each call is
recorded with its nesting depth, so a reader can watch KVM work the way ftrace's
function_graph tracer shows it; ``event(name, **fields)`` records a trace point (``kvm_exit``,
``kvm_pio``, ...) like the kernel's tracepoints.  When tracing is off the cost of a traced call
is one global test.

    with trace.tracing() as t:
        ...
    print(trace.format_records(t.records))
"""

from __future__ import annotations

import functools
import threading
from typing import NamedTuple

__all__ = ["Record", "traced", "event", "start", "stop", "is_on", "tracing", "format_records"]


class Record(NamedTuple):
    """One traced call (``kind == "call"``) or trace point (``kind == "event"``)."""
    kind: str
    depth: int
    name: str
    fields: dict | None = None
    thread: str = ""


_records: list | None = None     # None: tracing off
_lock = threading.Lock()
_local = threading.local()


def _depth() -> int:
    return getattr(_local, "depth", 0)


def _append(rec: Record) -> None:
    with _lock:
        if _records is not None:
            _records.append(rec)


def traced(fn):
    """Decorator: record each call of ``fn`` (by its kernel name) while tracing is on."""
    name = fn.__name__

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        if _records is None:
            return fn(*args, **kwargs)
        depth = _depth()
        _append(Record("call", depth, name, None, threading.current_thread().name))
        _local.depth = depth + 1
        try:
            return fn(*args, **kwargs)
        finally:
            _local.depth = depth

    return wrapper


def event(name: str, **fields) -> None:
    """Record trace point ``name`` with its fields (no-op when tracing is off)."""
    if _records is not None:
        _append(Record("event", _depth(), name, fields, threading.current_thread().name))


def is_on() -> bool:
    return _records is not None


def start() -> None:
    """Start recording (discarding anything recorded before)."""
    global _records
    with _lock:
        _records = []


def stop() -> list:
    """Stop recording and return the records, in order."""
    global _records
    with _lock:
        out, _records = _records or [], None
    return out


class tracing:
    """Context manager: trace the block; the records are in ``.records`` afterwards."""

    def __init__(self):
        self.records: list = []

    def __enter__(self):
        start()
        return self

    def __exit__(self, *exc):
        self.records = stop()


def _fmt_value(v) -> str:
    return "%#x" % v if isinstance(v, int) and not isinstance(v, bool) and v > 9 else str(v)


def format_records(records, show_threads: bool = False) -> str:
    """An indented call tree, trace points shown inline: ``kvm_exit: reason=HLT rip=0x1000``."""
    lines = []
    for r in records:
        prefix = "[%s] " % r.thread if show_threads else ""
        indent = "  " * r.depth
        if r.kind == "call":
            lines.append("%s%s%s()" % (prefix, indent, r.name))
        else:
            fields = " ".join("%s=%s" % (k, _fmt_value(v)) for k, v in (r.fields or {}).items())
            lines.append("%s%s%s: %s" % (prefix, indent, r.name, fields) if fields
                         else "%s%s%s" % (prefix, indent, r.name))
    return "\n".join(lines)
