"""Which instruction forms the processor implements, found by translating each one.

A *form* is an opcode (maps folded as in ``kvmpy.hw.translate.decoder``) with the ModRM.reg value
where it selects the operation (groups), ModRM.rm where a register form selects it (x87
escapes, 0F 01), register or memory operand, mandatory/size prefix (none, 66, F3, F2),
REX.W, and the processor mode (64- or 32-bit code).  Each form with an emitter is probed
by translating one instruction built from it (translation does not run the code) and
classified: ``ok``, ``ud`` (the translation always raises #UD), ``nodecode`` (the bytes do
not decode as that opcode here) or ``error`` (the emitter or its Python failed: a bug).

A prefix or REX.W that leaves the translation unchanged (F3 on ADD, W on PADDB) is not a
form of its own: it is an alias of the simpler variant, so counts reflect what the
emitters distinguish.  ``tests.oracle.coverage`` maps the instructions the differential
tests run onto these forms.

    python -m kvmpy.testing.coverage          # implemented forms only
"""

from __future__ import annotations

import sys
from collections import Counter, namedtuple

from kvmpy.hw import insn  # noqa: F401  (insn registers the emitters)
from kvmpy.hw.translate import codegen
from kvmpy.hw.translate.decoder import MAP0F, DecodeError, decode

Form = namedtuple("Form", "bits opc reg rm mem pfx w")
MAPS = {0: "1-byte", 1: "0F", 2: "0F38", 3: "0F3A"}
MAP_BYTES = {0: b"", 1: b"\x0f", 2: b"\x0f\x38", 3: b"\x0f\x3a"}
PREFIXES = {"": b"", "66": b"\x66", "F3": b"\xf3", "F2": b"\xf2"}

# Opcodes whose ModRM.reg selects the operation (or the kind of register), per the SDM's
# opcode-extension tables; elsewhere reg is just an operand and is not part of the form.
GROUPS = frozenset([0x80, 0x81, 0x82, 0x83, 0x8C, 0x8E, 0x8F, 0xC0, 0xC1, 0xC6, 0xC7, 0xD0, 0xD1, 0xD2,
                    0xD3, *range(0xD8, 0xE0), 0xF6, 0xF7, 0xFE, 0xFF]
                   + [MAP0F | o for o in (0x00, 0x01, 0x0D, 0x18, 0x20, 0x21, 0x22, 0x23, 0x71, 0x72, 0x73,
                                          0xAE, 0xBA, 0xC7)])
# (opcode, reg) whose register form (mod = 3) is selected by ModRM.rm too.
RM_SELECTS = frozenset([(0xD9, r) for r in (2, 4, 5, 6, 7)] + [(0xDA, 5), (0xDB, 4), (0xDE, 3), (0xDF, 4)]
                       + [(MAP0F | 0x01, r) for r in (0, 1, 2, 3, 5, 7)])
MEM_MODRM = 0x43            # mod 1, rm 3: [rbx + disp8]
FILLER = bytes(range(0x10, 0x18))   # displacement and immediates
END = 0x1000                # every probe ends here, so next_ip is the same for all variants


def _has_modrm(opc: int, bits: int) -> bool:
    """Whether the decoder reads a ModRM byte for ``opc`` (probed: one ModRM kind only)."""
    ins = _decode(_bytes(Form(bits, opc, None, None, None, "", False)), bits)
    return ins is not None and ins.opc == opc and ins.has_modrm


def _bytes(f: Form) -> bytes:
    code = PREFIXES[f.pfx] + (b"\x48" if f.w else b"") + MAP_BYTES[f.opc >> 8] + bytes([f.opc & 0xFF])
    if f.mem is not None:
        reg = f.reg or 0
        code += bytes([MEM_MODRM | reg << 3] if f.mem else [0xC0 | reg << 3 | (f.rm or 0)])
    return code + FILLER


def _decode(code: bytes, bits: int):
    try:
        return decode(lambda i: code[i], bits // 8, 0)
    except (DecodeError, IndexError):
        return None


def _mode(bits: int) -> codegen.Mode:
    return codegen.Mode(bits // 8, bits // 8, bits == 64, 0, True, False)


def classify(code: bytes, bits: int, opc: int | None = None) -> tuple[str, str]:
    """Translate the instruction at the start of ``code``: (outcome, generated source)."""
    ins = _decode(code, bits)
    if ins is None or (opc is not None and ins.opc != opc):
        return "nodecode", ""
    ins.start = END - ins.length
    try:
        blk = codegen.translate(lambda ip: ins, ins.start, 0, _mode(bits), {}, max_insns=1)
    except Exception as exc:                     # a bug in an emitter: report it, keep probing
        return "error", "%s: %s" % (type(exc).__name__, exc)
    body = " " * 4 * codegen.BODY_IND + "raise_ud()"
    return ("ud" if body in blk.source.splitlines() else "ok"), blk.source


def _shapes(opc: int, bits: int):
    """(reg, rm, mem) combinations to probe for an opcode."""
    if not _has_modrm(opc, bits):
        return [(None, None, None)]
    regs = range(8) if opc in GROUPS else [None]
    out = []
    for reg in regs:
        out.append((reg, None, True))
        rms = range(8) if (opc, reg) in RM_SELECTS else [None]
        out += [(reg, rm, False) for rm in rms]
    return out


class Implemented:
    """Outcome of every probed form; ``alias`` maps a variant to the form it duplicates."""

    def __init__(self, modes=(64, 32)):
        self.outcome: dict[Form, str] = {}
        self.alias: dict[Form, Form] = {}
        self.errors: dict[Form, str] = {}
        for bits in modes:
            for opc in sorted(codegen.EMITTERS):
                for reg, rm, mem in _shapes(opc, bits):
                    self._probe_variants(bits, opc, reg, rm, mem)

    def _probe_variants(self, bits, opc, reg, rm, mem):
        seen: dict[str, Form] = {}
        for w in ((False, True) if bits == 64 else (False,)):
            for pfx in PREFIXES:
                f = Form(bits, opc, reg, rm, mem, pfx, w)
                result, src = classify(_bytes(f), bits, opc)
                if result == "error":
                    self.errors[f] = src
                if src and src in seen:
                    self.alias[f] = seen[src]
                    continue
                seen[src] = f
                self.outcome[f] = result

    def canonical(self, f: Form) -> Form:
        return self.alias.get(f, f)

    def forms(self, result="ok", bits=None):
        return [f for f, r in self.outcome.items() if r == result and bits in (None, f.bits)]

    def form_of(self, ins, bits: int = 64) -> Form:
        """The (canonical) form of a decoded instruction."""
        reg = ins.reg & 7 if ins.has_modrm and ins.opc in GROUPS else None
        mem = ins.is_mem if ins.has_modrm else None
        rm = ins.rm & 7 if mem is False and (ins.opc, reg) in RM_SELECTS else None
        pfx = "%02X" % ins.rep if ins.rep else ("66" if ins.opsize_prefix else "")
        return self.canonical(Form(bits, ins.opc, reg, rm, mem, pfx, ins.rex_w))


def describe(f: Form) -> str:
    """Short name of a form: opcode[/reg][.rm] [pfx] [W] r|m, and a mnemonic when known."""
    text = "%s%02X" % ("" if f.opc < MAP0F else MAPS[f.opc >> 8] + ".", f.opc & 0xFF)
    text += "" if f.reg is None else "/%d" % f.reg
    text += "" if f.rm is None else ".%d" % f.rm
    text += "".join(" " + p for p in (f.pfx, "W" if f.w else "") if p)
    text += {None: "", True: " m", False: " r"}[f.mem]
    name = mnemonic(f)
    return "%s (%s)" % (text, name) if name else text


_CS = {}


def mnemonic(f: Form) -> str:
    """Capstone's mnemonic for the form's probe bytes; '' if capstone is not installed."""
    try:
        import capstone     # local: optional at run time; without it there are no mnemonics
    except ImportError:
        return ""
    cs = _CS.get(f.bits)
    if cs is None:
        cs = _CS[f.bits] = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64 if f.bits == 64
                                       else capstone.CS_MODE_32)
    for ins in cs.disasm(_bytes(f), 0, 1):
        return ins.mnemonic
    return "?"


def report(impl: Implemented, exercised: Counter | None = None, out=sys.stdout) -> dict:
    """Print the per-map table (and the never-compared forms); return the summary numbers."""
    ok64, ok32 = impl.forms("ok", 64), impl.forms("ok", 32)
    ud64 = impl.forms("ud", 64)
    hit = {f for f in (exercised or ()) if impl.outcome.get(f) == "ok"}
    print("%-7s %8s %8s %8s %8s %10s %8s" % ("map", "opcodes", "ok-64", "ok-32", "ud-64", "exercised",
                                              "missing"), file=out)
    for m, name in MAPS.items():
        def on(forms):
            return [f for f in forms if f.opc >> 8 == m]
        opcodes = sum(1 for o in codegen.EMITTERS if o >> 8 == m)
        print("%-7s %8d %8d %8d %8d %10s %8s" % (
            name, opcodes, len(on(ok64)), len(on(ok32)), len(on(ud64)),
            len(on(hit)) if exercised is not None else "-",
            len(on(ok64)) - len(on(hit)) if exercised is not None else "-"), file=out)
    if exercised is not None:
        for m, name in MAPS.items():
            missing = sorted((f for f in ok64 if f.opc >> 8 == m and f not in hit), key=_order)
            print("\n%s implemented (64-bit) but never compared: %d" % (name, len(missing)), file=out)
            for line in _wrap([describe(f) for f in missing]):
                print("  " + line, file=out)
    for f, err in sorted(impl.errors.items(), key=lambda kv: _order(kv[0])):
        print("ERROR %d-bit %s: %s" % (f.bits, describe(f), err), file=out)
    summary = {"opcodes": len(codegen.EMITTERS), "ok64": len(ok64), "ok32": len(ok32), "ud64": len(ud64),
               "errors": len(impl.errors)}
    line = "summary: %(opcodes)d opcodes with emitters; forms ok 64-bit %(ok64)d, 32-bit %(ok32)d; " \
           "#UD-only 64-bit %(ud64)d; translation errors %(errors)d" % summary
    if exercised is not None:
        summary.update(exercised=len(hit), instructions=sum(exercised.values()))
        line += "; compared against silicon: %d of %d 64-bit forms (%.0f%%) by %d instructions" % (
            len(hit), len(ok64), 100.0 * len(hit) / max(1, len(ok64)), summary["instructions"])
    print("\n" + line, file=out)
    return summary


def _order(f: Form):
    return (f.opc, -1 if f.reg is None else f.reg, -1 if f.rm is None else f.rm, str(f.mem), f.pfx, f.w)


def _wrap(items, width=100):
    line = ""
    for item in items:
        if line and len(line) + len(item) + 2 > width:
            yield line
            line = ""
        line += ("; " if line else "") + item
    if line:
        yield line


def main() -> int:
    report(Implemented())
    return 0


if __name__ == "__main__":
    sys.exit(main())
