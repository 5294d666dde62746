"""Shifts and rotates: group 2 (ROL ROR RCL RCR SHL SHR SAL SAR) and SHLD/SHRD.

The count is masked to 5 bits (6 with a 64-bit operand).  A masked count of 0
changes no flag, yet the destination is still written (a 32-bit register is
zero-extended, as the silicon does), so the generated code always writes the
result and guards only the flag update with ``if c:`` when the count comes
from CL.  Shifts define SF/ZF/PF and keep them lazy (``K_SHL``/``K_SHR``/
``K_SAR`` carry CF and OF in ``cc_aux``); rotates touch only CF and OF, so they
write those two eagerly through ``setfl``.
"""

from .. import flags as F
from kvmpy.hw.translate.codegen import M, SIGN, emitter
from kvmpy.hw.translate.decoder import MAP0F

ROL, ROR, RCL, RCR, SHL, SHR, SAL, SAR = range(8)
CF_OF = F.CF | F.OF


def _count(g, ins, size, src):
    """Return (count expression, static count or None): masked to 5/6 bits."""
    cmask = 0x3F if size == 8 else 0x1F
    if src == "cl":
        c = g.tmp("c")
        g.emit("%s = R[1] & %#x" % (c, cmask))
        return c, None
    k = (1 if src == "1" else ins.imm) & cmask
    return str(k), k


def _flag_update(g, count, static, lines):
    """Emit the flag-writing ``lines`` only when the masked count is not zero."""
    if static == 0:
        return
    if static is None:
        g.emit("if %s:" % count)
        g.indent()
    for line in lines:
        line()
    if static is None:
        g.dedent()
        g.flags = None      # flags may be the previous instruction's: no static knowledge


def _amd_flags(g) -> bool:
    """Whether the model's shifts leave AMD's undefined flags (``shift_flags_amd``)."""
    return g.model is not None and g.model.shift_flags_amd


def _sign_change(g, r, n):
    """OF as AMD's RCR and SHRD leave it for any count: the result's two top bits differ
    (the 1-bit definition, measured on Zen 3 for larger counts)."""
    return "((%s ^ (%s >> 1)) >> %d) & 1" % (r, r, n - 2)


def _of_cf(g, of, cf):
    """Name of a local holding CF | OF bits from 0/1 expressions ``of`` and ``cf`` (with AF
    set where the model's silicon sets it: AMD's shifts by a non-zero count)."""
    v = g.tmp("x")
    g.emit("%s = (%s) << 11 | (%s)%s" % (v, of, cf, " | %#x" % F.AF if _amd_flags(g) else ""))
    return v


def shift(g, ins, op, size, count_src):
    """Emit one group-2 operation on the r/m operand with count from 'cl', '1' or 'imm'."""
    n, m, sign = size * 8, M[size], SIGN[size]
    a = g.rm_read(size)
    c, static = _count(g, ins, size, count_src)
    r = g.tmp("r")
    if op in (SHL, SAL):
        g.emit("%s = (%s << %s) & %#x" % (r, a, c, m))
    elif op == SHR:
        g.emit("%s = %s >> %s" % (r, a, c))
    elif op == SAR:
        g.emit("%s = (((%s ^ %#x) - %#x) >> %s) & %#x" % (r, a, sign, sign, c, m))
    elif op in (ROL, ROR):
        k = g.tmp("k")
        g.emit("%s = %s %% %d" % (k, c, n) if n != 64 and n != 32 else "%s = %s" % (k, c))
        left, right = (k, "%d - %s" % (n, k)) if op == ROL else ("%d - %s" % (n, k), k)
        g.emit("%s = ((%s << (%s)) | (%s >> (%s))) & %#x" % (r, a, left, a, right, m))
    else:   # RCL / RCR rotate the (n+1)-bit value CF:a
        cin = g.carry()
        k, t = g.tmp("k"), g.tmp("w")
        g.emit("%s = %s %% %d" % (k, c, n + 1) if n < 32 else "%s = %s" % (k, c))
        g.emit("%s = %s << %d | %s" % (t, cin, n, a))
        left, right = (k, "%d - %s" % (n + 1, k)) if op == RCL else ("%d - %s" % (n + 1, k), k)
        g.emit("%s = ((%s << (%s)) | (%s >> (%s))) & %#x" % (t, t, left, t, right, (1 << (n + 1)) - 1))
        g.emit("%s = %s & %#x" % (r, t, m))
    if static != 0 or ins.mod == 3:
        g.rm_write(size, r, reuse_ea=True)

    def lazy(kind, cf_expr, of_expr):
        def emit():
            g.set_flags(kind, size, r, "0", _of_cf(g, of_expr, cf_expr))
        return emit

    def eager(cf_expr, of_expr):
        return lambda: g.emit("setfl(%#x, %s)" % (CF_OF, _of_cf(g, of_expr, cf_expr)))

    msb = "(%s >> %d)" % (r, n - 1)
    if op in (SHL, SAL):
        cf = "((%s << %s) >> %d) & 1" % (a, c, n)
        upd = lazy(F.K_SHL, cf, "%s ^ (%s)" % (msb, cf))
    elif op == SHR:
        # OF: the operand's sign (defined for a count of 1); AMD: the sign before the last step
        of = "%s >> (%s + %d)" % (a, c, n - 2) if _amd_flags(g) else "%s >> %d" % (a, n - 1)
        upd = lazy(F.K_SHR, "(%s >> (%s - 1)) & 1" % (a, c), of)
    elif op == SAR:
        upd = lazy(F.K_SAR, "(((%s ^ %#x) - %#x) >> (%s - 1)) & 1" % (a, sign, sign, c), "0")
    elif op == ROL:
        upd = eager("%s & 1" % r, "%s ^ (%s & 1)" % (msb, r))
    elif op == ROR:
        upd = eager(msb, "(%s ^ (%s >> %d)) & 1" % (msb, r, n - 2))
    elif op == RCL:
        upd = eager("%s >> %d" % (t, n), "%s ^ (%s >> %d)" % (msb, t, n))
    else:
        upd = eager("%s >> %d" % (t, n), _sign_change(g, r, n) if _amd_flags(g)
                    else "(%s >> %d) ^ %s" % (a, n - 1, cin))
    _flag_update(g, c, static, [upd])


@emitter(0xC0, 0xC1, 0xD0, 0xD1, 0xD2, 0xD3)
def _group2(g, ins):
    size = 1 if ins.opc in (0xC0, 0xD0, 0xD2) else ins.opsize
    src = {0xC0: "imm", 0xC1: "imm", 0xD0: "1", 0xD1: "1"}.get(ins.opc, "cl")
    shift(g, ins, ins.reg & 7, size, src)


@emitter(MAP0F | 0xA4, MAP0F | 0xA5, MAP0F | 0xAC, MAP0F | 0xAD)
def _shld_shrd(g, ins):
    """Double-precision shifts: bits shifted in come from the register operand.

    The operand is shifted through the pattern dst:src:dst, so one expression
    serves every count; a count above the operand width (possible with 16-bit
    operands only) leaves the result architecturally undefined.
    """
    size = ins.opsize
    n, m = size * 8, M[size]
    left = (ins.opc & 0xFF) in (0xA4, 0xA5)
    a = g.rm_read(size)
    s = g.tmp("s")
    g.emit("%s = %s" % (s, g.reg(ins.reg, size)))
    c, static = _count(g, ins, size, "imm" if ins.opc & 1 == 0 else "cl")
    r, w = g.tmp("r"), g.tmp("w")
    if left:
        g.emit("%s = (%s << %d | %s) << %d | %s" % (w, a, n, s, n, a))
        g.emit("%s = (%s << %s >> %d) & %#x" % (r, w, c, 2 * n, m))
        cf = "(%s << %s >> %d) & 1" % (w, c, 3 * n)
    else:
        g.emit("%s = (%s << %d | %s) << %d | %s" % (w, a, n, s, n, a))
        g.emit("%s = (%s >> %s) & %#x" % (r, w, c, m))
        cf = "(%s >> (%s - 1)) & 1" % (w, c)
    if static != 0 or ins.mod == 3:
        g.rm_write(size, r, reuse_ea=True)
    if not _amd_flags(g):
        of = "((%s ^ %s) >> %d) & 1" % (r, a, n - 1)
    elif left:
        of = "((%s >> %d) ^ (%s)) & 1" % (r, n - 1, cf)
    else:
        of = _sign_change(g, r, n)
    _flag_update(g, c, static, [lambda: g.set_flags(F.K_SHL if left else F.K_SHR, size, r, "0",
                                                    _of_cf(g, of, cf))])
