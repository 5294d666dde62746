"""Run a snippet of x86-64 machine code on the host's processor (the silicon oracle).

``run_native(code, regs, rflags, mem)`` loads the 16 general-purpose registers and the
user flags, runs ``code`` at the fixed address ``CODE_ADDR`` in user mode inside this
process, and returns the registers, flags and data area at the end.  The fixed layout
below is the contract with kvmpy's ``kvmpy.hw.snippet.run_snippet``: both sides must place
code, data and stack at the same addresses so that absolute addresses, RIP-relative
operands and pushed return addresses agree.

A snippet that faults does not kill the process: the trampoline catches the signal and
reports the hardware vector (``exception``) with the registers at the faulting
instruction.  ``isolate=True`` additionally runs the snippet in a forked child, for code
that might loop forever or scribble outside its data area.
"""

from __future__ import annotations

import ctypes
import dataclasses
import os
import pickle
import platform
import select
import shutil
import signal

from kvmpy import compat
from tests.oracle import build

CODE_ADDR = 0x10200000
CODE_MAX = 0x10000 - 14  # the trampoline appends a 14-byte jump back to itself
DATA_ADDR = 0x10000000
DATA_MIN, DATA_MAX = 0x1000, 0x10000
STACK_ADDR = 0x10100000
STACK_SIZE = 0x10000
STACK_TOP = STACK_ADDR + 0x8000  # the default rsp: room to push and to read above it

REG_NAMES = ("rax", "rcx", "rdx", "rbx", "rsp", "rbp", "rsi", "rdi",
             "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15")
CF, PF, AF, ZF, SF, DF, OF = 0x1, 0x4, 0x10, 0x40, 0x80, 0x400, 0x800
USER_FLAGS = CF | PF | AF | ZF | SF | DF | OF  # what a snippet may start with and is compared on
MASK64 = (1 << 64) - 1

# Vector to report when the kernel gives no trap number for a signal.
_SIGNAL_VECTOR = {signal.SIGFPE: 0, signal.SIGTRAP: 3, signal.SIGILL: 6,
                  signal.SIGSEGV: 13, signal.SIGBUS: 17}
VECTOR_NAMES = {0: "#DE", 1: "#DB", 3: "#BP", 6: "#UD", 12: "#SS", 13: "#GP", 14: "#PF",
                16: "#MF", 17: "#AC", 19: "#XM"}


@dataclasses.dataclass
class NativeResult:
    """The state after a snippet: at its end, or at the faulting instruction.

    ``rflags`` holds only ``USER_FLAGS``; ``rip`` is ``CODE_ADDR + len(code)`` when the
    snippet ran to its end; ``exception`` is the vector number of a fault (``None`` if
    none) and ``signal`` the host signal that carried it.
    """
    regs: dict
    rflags: int
    mem: bytes = dataclasses.field(repr=False)
    rip: int = 0
    exception: int | None = None
    signal: int | None = None


class _State(ctypes.Structure):
    _fields_ = [("gpr", ctypes.c_uint64 * 16), ("rflags", ctypes.c_uint64),
                ("rip", ctypes.c_uint64), ("signo", ctypes.c_int64),
                ("trapno", ctypes.c_int64), ("err", ctypes.c_int64)]


_SETUP_ERRORS = {-1: "cannot map the code area at CODE_ADDR",
                 -2: "cannot map the stack area at STACK_ADDR",
                 -3: "code too long", -4: "bad data size",
                 -5: "cannot map the data area at DATA_ADDR"}
_lib = None


def _library():
    global _lib
    if _lib is None:
        lib = ctypes.CDLL(str(build.library_path()))
        lib.oracle_run.argtypes = [ctypes.POINTER(_State), ctypes.c_char_p, ctypes.c_uint64,
                                   ctypes.c_void_p, ctypes.c_uint64]
        lib.oracle_run.restype = ctypes.c_int
        _lib = lib
    return _lib


def unavailable_reason() -> str | None:
    """Why this host cannot run the oracle, or None if it can."""
    if platform.system() != "Linux" or platform.machine() not in ("x86_64", "AMD64"):
        return f"the silicon oracle needs x86-64 Linux, not {platform.machine()} {platform.system()}"
    missing = [tool for tool in ("gcc", "as") if shutil.which(tool) is None]
    if missing:
        return f"the silicon oracle needs {' and '.join(missing)}"
    return None


def _check(code: bytes, mem: bytes) -> None:
    if len(code) > CODE_MAX:
        raise ValueError(f"code is {len(code)} bytes, at most {CODE_MAX}")
    if not DATA_MIN <= len(mem) <= DATA_MAX or len(mem) % 0x1000:
        raise ValueError(f"data area must be whole pages, {DATA_MIN}..{DATA_MAX} bytes")


def _run_here(code: bytes, regs: dict, rflags: int, mem: bytes) -> NativeResult:
    state = _State()
    for i, name in enumerate(REG_NAMES):
        state.gpr[i] = regs.get(name, STACK_TOP if name == "rsp" else 0) & MASK64
    state.rflags = rflags & USER_FLAGS
    buf = compat.string_buffer(bytes(mem), len(mem))
    rc = _library().oracle_run(ctypes.byref(state), code, len(code), buf, len(mem))
    if rc:
        raise OSError(_SETUP_ERRORS.get(rc, f"oracle_run failed ({rc})"))
    exception = sig = None
    if state.signo:
        sig = state.signo
        exception = state.trapno if state.trapno >= 0 else _SIGNAL_VECTOR.get(sig, -1)
    return NativeResult(regs=dict(zip(REG_NAMES, state.gpr)), rflags=state.rflags & USER_FLAGS,
                        mem=buf.raw, rip=state.rip, exception=exception, signal=sig)


def _run_forked(code: bytes, regs: dict, rflags: int, mem: bytes, timeout: float) -> NativeResult:
    rfd, wfd = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: run, send the pickled result, leave without cleanup handlers
        status = 1
        try:
            os.close(rfd)
            data = pickle.dumps(_run_here(code, regs, rflags, mem))
            with os.fdopen(wfd, "wb") as out:
                out.write(data)
            status = 0
        finally:
            os._exit(status)
    os.close(wfd)
    chunks = []
    try:
        with os.fdopen(rfd, "rb") as inp:
            while True:
                ready, _, _ = select.select([inp], [], [], timeout)
                if not ready:
                    os.kill(pid, signal.SIGKILL)
                    raise TimeoutError(f"snippet still running after {timeout} s")
                chunk = inp.read1(1 << 20)
                if not chunk:
                    break
                chunks.append(chunk)
    finally:
        _, status = os.waitpid(pid, 0)
    if not chunks:
        raise RuntimeError(f"oracle child died (wait status {status:#x})")
    return pickle.loads(b"".join(chunks))


def run_native(code: bytes, regs: dict, rflags: int, mem: bytes | None = None, *,
               isolate: bool = False, timeout: float = 5.0) -> NativeResult:
    """Run ``code`` natively from ``regs`` (missing ones 0, rsp ``STACK_TOP``) and
    ``rflags`` (only ``USER_FLAGS`` taken); ``mem`` is the data area at ``DATA_ADDR``
    (default one zeroed page).  ``isolate`` runs it in a forked child, killed after
    ``timeout`` seconds."""
    mem = bytes(DATA_MIN) if mem is None else bytes(mem)
    code = bytes(code)
    _check(code, mem)
    if isolate:
        return _run_forked(code, regs, rflags, mem, timeout)
    return _run_here(code, regs, rflags, mem)
