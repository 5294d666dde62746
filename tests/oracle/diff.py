"""Run a snippet natively and on kvmpy from the same state, and compare the outcomes.

kvmpy's side is ``kvmpy.hw.snippet.run_snippet(code, regs, rflags, mem)``, which returns an
object with the attributes of ``native.NativeResult`` (``regs``, ``rflags``, ``mem``,
``exception``; ``rip`` optional) and places code, data and stack at the addresses in
``tests.oracle.native`` (checked here when the module exports ``CODE_ADDR``, ``DATA_ADDR``
or ``STACK_TOP``).
"""

from __future__ import annotations

import dataclasses
import importlib

from tests.oracle import native
from tests.oracle.native import REG_NAMES, USER_FLAGS, VECTOR_NAMES

FLAG_NAMES = {0x1: "CF", 0x4: "PF", 0x10: "AF", 0x40: "ZF", 0x80: "SF", 0x400: "DF", 0x800: "OF"}


def load_run_snippet():
    """Return kvmpy's ``run_snippet``, after checking it uses the oracle's fixed addresses."""
    mod = importlib.import_module("kvmpy.testing.snippet")
    for name in ("CODE_ADDR", "DATA_ADDR", "STACK_TOP"):
        if hasattr(mod, name) and getattr(mod, name) != getattr(native, name):
            raise RuntimeError(f"kvmpy.hw.snippet.{name} = {getattr(mod, name):#x}, "
                              f"the oracle uses {getattr(native, name):#x}")
    return mod.run_snippet


@dataclasses.dataclass
class Case:
    """One execution to compare: Intel-syntax source and the starting state.

    ``undefined_flags`` and ``undefined_regs`` name what the architecture leaves
    undefined for this execution; they are not compared.
    """
    asm: str
    regs: dict
    rflags: int = 0
    mem: bytes | None = None
    undefined_flags: int = 0
    undefined_regs: tuple = ()

    def describe(self) -> str:
        regs = " ".join(f"{k}={v:#x}" for k, v in self.regs.items())
        return f"[{self.asm}] {regs} rflags={self.rflags:#x}"


def _flags(value: int) -> str:
    return "|".join(n for b, n in FLAG_NAMES.items() if value & b) or "0"


def _vector(v) -> str:
    return "none" if v is None else VECTOR_NAMES.get(v, str(v))


def compare(expected, actual, undefined_flags: int = 0, undefined_regs=()) -> list[str]:
    """Differences between two results (``expected`` from the silicon), as readable lines.

    Compares the exception vector, every register not in ``undefined_regs``, the user
    flags not in ``undefined_flags``, the data area and, when both report it, rip.
    """
    out = []
    if expected.exception != actual.exception:
        out.append(f"exception: silicon {_vector(expected.exception)}, "
                   f"kvmpy {_vector(actual.exception)}")
    for name in REG_NAMES:
        if name in undefined_regs:
            continue
        e, a = expected.regs[name], actual.regs[name]
        if e != a:
            out.append(f"{name}: silicon {e:#x}, kvmpy {a:#x}")
    mask = USER_FLAGS & ~undefined_flags
    e, a = expected.rflags & mask, actual.rflags & mask
    if e != a:
        out.append(f"rflags: silicon {_flags(e)}, kvmpy {_flags(a)} "
                   f"(differ in {_flags(e ^ a)}; ignored {_flags(undefined_flags)})")
    if bytes(expected.mem) != bytes(actual.mem):
        em, am = bytes(expected.mem), bytes(actual.mem)
        at = [i for i in range(min(len(em), len(am))) if em[i] != am[i]]
        where = f"first at data+{at[0]:#x}, {len(at)} bytes" if at else "in length"
        out.append(f"memory differs {where}: silicon {em[at[0]:at[0] + 8].hex() if at else len(em)}"
                   f", kvmpy {am[at[0]:at[0] + 8].hex() if at else len(am)}")
    if getattr(actual, "rip", None) is not None and expected.rip != actual.rip:
        out.append(f"rip: silicon {expected.rip:#x}, kvmpy {actual.rip:#x}")
    return out


def run_case(case: Case, code: bytes, run_snippet) -> list[str]:
    """Run one case on both sides; return its differences, each prefixed by the case."""
    mem = bytes(native.DATA_MIN) if case.mem is None else case.mem
    expected = native.run_native(code, case.regs, case.rflags, mem)
    regs = dict(case.regs)
    regs.setdefault("rsp", native.STACK_TOP)
    actual = run_snippet(code, regs, case.rflags, mem)
    diffs = compare(expected, actual, case.undefined_flags, case.undefined_regs)
    return [f"{case.describe()}: {d}" for d in diffs]
