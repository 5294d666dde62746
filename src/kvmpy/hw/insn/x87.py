"""x87 floating-point instructions (escape opcodes D8..DF).

A block's first x87 instruction checks CR0.EM/TS (#NM) and binds ``FP`` (``cpu.fpu``) and
``FU`` (``kvmpy.hw.fpu.x87``, the execution unit).  Waiting instructions first raise a pending
unmasked exception (#MF).  Memory operands are read here before the unit is called, and
stores happen between ``FU.store_value`` and ``FU.store_done``, so a page fault leaves the
register stack untouched.  Packed BCD (FBLD/FBSTP) moves as a raw 10-byte operand.
"""

from kvmpy.hw.translate.codegen import M, emitter

_TEN_BYTES = ("f80", "bcd")
_SIZE = {"f32": 4, "f64": 8, "f80": 10, "i16": 2, "i32": 4, "i64": 8}
_ARITH = ("add", "mul", None, None, "sub", "subr", "div", "divr")
_ARITH_REV = ("add", "mul", None, None, "subr", "sub", "divr", "div")     # DC/DE register forms
_MEM_KIND = {0xD8: "f32", 0xDC: "f64", 0xDA: "i32", 0xDE: "i16"}
_D9_ROWS_6_7 = ("f2xm1(cpu)", "fyl2x(cpu)", "trig(cpu, 'tan')", "fpatan(cpu)", "fxtract(cpu)",
                "fprem(cpu, True)", "step_top(cpu, -1)", "step_top(cpu, 1)",
                "fprem(cpu, False)", "fyl2xp1(cpu)", "fsqrt(cpu)", "trig(cpu, 'sincos')",
                "frndint(cpu)", "fscale(cpu)", "trig(cpu, 'sin')", "trig(cpu, 'cos')")
_CONSTS = {0: "one", 1: "l2t", 2: "l2e", 3: "pi", 4: "lg2", 5: "ln2", 6: "zero"}


def _x87(*opcodes):
    """Register an escape-opcode emitter; a LOCK prefix makes any of them #UD."""
    def deco(fn):
        def checked(g, ins):
            if ins.lock:
                return g.ud()
            fn(g, ins)
        emitter(*opcodes)(checked)
        return fn
    return deco


def _prologue(g, waiting=True):
    if not vars(g).get("x87_ready"):
        g.emit("if cpu.cr0 & 12: raise_fault(7)")
        g.emit("FP = cpu.fpu; FU = FP.x87; FP.used |= 1")      # XINUSE tracking (xsave.py)
        g.x87_ready = True
    if waiting:
        g.emit("if FP.fsw & 0x80: raise_fault(16)")



def _ea(g, ins):
    ea = g.tmp("ea")
    g.emit("%s = %s" % (ea, g.ea(ins)))
    return ea


def _load(g, ea, kind):
    if kind in _TEN_BYTES:
        lo = g.load(ea, 8)
        hi = g.load("((%s + 8) & %#x)" % (ea, M[8]), 2)
        v = g.tmp()
        g.emit("%s = %s | %s << 64" % (v, lo, hi))
        return v
    return g.load(ea, _SIZE[kind])


def _store(g, ea, kind, val):
    if kind in _TEN_BYTES:
        if not g.emulating:
            g.emit("probe_w(%s, 10)" % ea)
        g.store(ea, 8, "(%s & %#x)" % (val, M[8]))
        g.store("((%s + 8) & %#x)" % (ea, M[8]), 2, "(%s >> 64)" % val)
    else:
        g.store(ea, _SIZE[kind], val)


def _store_op(g, ins, kind, pop, truncate=False):
    """FST/FSTP/FIST/FISTP/FISTTP to memory."""
    ea = _ea(g, ins)
    v, fl = g.tmp(), g.tmp("fl")
    g.emit("%s, %s = FU.store_value(cpu, %r, %s)" % (v, fl, kind, truncate))
    g.emit("if %s is not None:" % v)
    g.indent()
    _store(g, ea, kind, v)
    g.dedent()
    g.emit("FU.store_done(cpu, %s, %s)" % (fl, pop))


def _load_op(g, ins, kind):
    v = _load(g, _ea(g, ins), kind)
    g.emit("FU.load(cpu, %r, %s)" % (kind, v))


def _mem_arith(g, ins, kind):
    r = ins.reg & 7
    v = _load(g, _ea(g, ins), kind)
    if r in (2, 3):
        g.emit("FU.fcom(cpu, 0, %r, %s, %d)" % (kind, v, r == 3))
    else:
        g.emit("FU.arith(cpu, %r, 0, 0, %r, %s)" % (_ARITH[r], kind, v))


@_x87(0xD8, 0xDC, 0xDA, 0xDE)
def _arith_group(g, ins):
    op, r, i = ins.opc, ins.reg & 7, ins.rm & 7
    if ins.mod != 3:
        _prologue(g)
        return _mem_arith(g, ins, _MEM_KIND[op])
    if op == 0xDA:
        if r <= 3:
            return _fcmov(g, ins, (2, 4, 6, 10)[r])
        if r == 5 and i == 1:
            _prologue(g)
            g.emit("FU.fcom(cpu, 1, None, 0, 2, False)")    # FUCOMPP
            return
        return g.ud()
    _prologue(g)
    if r in (2, 3):
        if op == 0xDE and (r != 3 or i != 1):
            return g.ud()
        pops = 2 if op == 0xDE else int(r == 3)
        g.emit("FU.fcom(cpu, %d, None, 0, %d)" % (i, pops))
    elif op == 0xD8:
        g.emit("FU.arith(cpu, %r, 0, %d)" % (_ARITH[r], i))
    else:
        g.emit("FU.arith(cpu, %r, %d, 0, pop=%s)" % (_ARITH_REV[r], i, op == 0xDE))


def _fcmov(g, ins, cc):
    """FCMOVcc (DA: B, E, BE, U; DB: the negations)."""
    if ins.opc == 0xDB:
        cc |= 1
    _prologue(g)
    c = g.cond(cc)
    g.emit("FU.fcmov(cpu, %d, bool(%s))" % (ins.rm & 7, c))


@_x87(0xD9)
def _d9(g, ins):
    r, i = ins.reg & 7, ins.rm & 7
    if ins.mod != 3:
        if r == 0:
            _prologue(g)
            return _load_op(g, ins, "f32")
        if r in (2, 3):
            _prologue(g)
            return _store_op(g, ins, "f32", r == 3)
        if r == 4:
            _prologue(g)
            return _load_env(g, ins, state=False)
        if r == 5:
            _prologue(g)
            v = g.load(_ea(g, ins), 2)
            g.emit("FU.fldcw(cpu, %s)" % v)
            return
        if r == 6:
            _prologue(g, waiting=False)
            return _store_env(g, ins, state=False)
        if r == 7:
            _prologue(g, waiting=False)
            g.store(_ea(g, ins), 2, "FP.fcw")
            return
        return g.ud()
    key = (r, i)
    if r == 0:
        _prologue(g)
        g.emit("FU.load_st(cpu, %d)" % i)
    elif r == 1:
        _prologue(g)
        g.emit("FU.fxch(cpu, %d)" % i)
    elif key == (2, 0):
        _prologue(g)                            # FNOP
    elif r == 4 and i in (0, 1, 4, 5):
        _prologue(g)
        g.emit({0: "FU.fchs(cpu)", 1: "FU.fabs(cpu)", 4: "FU.fcom(cpu, 0, 'zero')", 5: "FU.fxam(cpu)"}[i])
    elif r == 5 and i in _CONSTS:
        _prologue(g)
        g.emit("FU.load_const(cpu, %r)" % _CONSTS[i])
    elif r in (6, 7):
        _prologue(g)
        g.emit("FU.%s" % _D9_ROWS_6_7[(r - 6) * 8 + i])
    else:
        g.ud()


@_x87(0xDB)
def _db(g, ins):
    r, i = ins.reg & 7, ins.rm & 7
    if ins.mod != 3:
        if r == 0:
            _prologue(g)
            return _load_op(g, ins, "i32")
        if r in (1, 2, 3):
            _prologue(g)
            return _store_op(g, ins, "i32", r != 2, truncate=r == 1)
        if r == 5:
            _prologue(g)
            return _load_op(g, ins, "f80")
        if r == 7:
            _prologue(g)
            return _store_op(g, ins, "f80", True)
        return g.ud()
    if r <= 3:
        return _fcmov(g, ins, (2, 4, 6, 10)[r])
    if r == 4:
        if i in (2, 3):
            _prologue(g, waiting=False)
            g.emit("FU.fnclex(cpu)" if i == 2 else "FU.fninit(cpu)")
        elif i in (0, 1, 4):
            _prologue(g, waiting=False)          # FNENI/FNDISI/FNSETPM: no-ops since the 387
        else:
            g.ud()
        return
    if r in (5, 6):
        _fcomi(g, i, r == 6, False)
        return
    g.ud()


def _fcomi(g, i, signal_qnan, pop):
    _prologue(g)
    v = g.tmp()
    g.emit("%s = FU.fcomi(cpu, %d, %s, %s)" % (v, i, signal_qnan, pop))
    g.emit("setfl(0x8d5, %s)" % v)


@_x87(0xDD)
def _dd(g, ins):
    r, i = ins.reg & 7, ins.rm & 7
    if ins.mod != 3:
        if r == 0:
            _prologue(g)
            return _load_op(g, ins, "f64")
        if r in (1, 2, 3):
            _prologue(g)
            if r == 1:
                return _store_op(g, ins, "i64", True, truncate=True)
            return _store_op(g, ins, "f64", r == 3)
        if r == 4:
            _prologue(g)
            return _load_env(g, ins, state=True)
        if r == 6:
            _prologue(g, waiting=False)
            return _store_env(g, ins, state=True)
        if r == 7:
            _prologue(g, waiting=False)
            g.store(_ea(g, ins), 2, "FU.status_word(FP)")
            return
        return g.ud()
    _prologue(g)
    if r == 0:
        g.emit("FU.ffree(cpu, %d)" % i)
    elif r in (2, 3):
        g.emit("FU.store_st(cpu, %d, %s)" % (i, r == 3))
    elif r in (4, 5):
        g.emit("FU.fcom(cpu, %d, None, 0, %d, False)" % (i, r == 5))
    else:
        g.ud()


@_x87(0xDF)
def _df(g, ins):
    r, i = ins.reg & 7, ins.rm & 7
    if ins.mod != 3:
        kind = ("i16", "i16", "i16", "i16", "bcd", "i64", "bcd", "i64")[r]
        _prologue(g)
        if r in (0, 4, 5):
            return _load_op(g, ins, kind)
        return _store_op(g, ins, kind, r != 2, truncate=r == 1)
    if r == 4 and i == 0:
        _prologue(g, waiting=False)
        g.set_reg(0, 2, "FU.status_word(FP)")
    elif r in (5, 6):
        _fcomi(g, i, r == 6, True)
    elif r == 0:
        _prologue(g)
        g.emit("FU.ffree(cpu, %d, True)" % i)    # FFREEP
    else:
        g.ud()


def _env_bytes(ins, state):
    """Operand size (2 or 4) and length of the FNSTENV/FNSAVE image."""
    size = 2 if ins.opsize == 2 else 4
    return size, (14 if size == 2 else 28) + (80 if state else 0)


def _store_env(g, ins, state):
    """FNSTENV / FNSAVE: write the image, then mask exceptions (FNSAVE: re-initialise)."""
    size, n = _env_bytes(ins, state)
    ea = _ea(g, ins)
    if not g.emulating:
        g.emit("probe_w(%s, %d)" % (ea, n))
    img = g.tmp("img")
    g.emit("%s = int.from_bytes(FU.%s(cpu, %d), 'little')" % (img, "save_image" if state else "env_image", size))
    for off in range(0, n, 2):
        g.store("((%s + %d) & %#x)" % (ea, off, M[8]), 2, "((%s >> %d) & 0xffff)" % (img, 8 * off))
    g.emit("FU.fninit(cpu)" if state else "FU.after_fnstenv(cpu)")


def _load_env(g, ins, state):
    """FLDENV / FRSTOR."""
    size, n = _env_bytes(ins, state)
    ea = _ea(g, ins)
    parts = []
    for off in range(0, n, 2):
        parts.append(g.load("((%s + %d) & %#x)" % (ea, off, M[8]), 2))
    data = g.tmp("img")
    g.emit("%s = b''.join(x.to_bytes(2, 'little') for x in (%s,))" % (data, ", ".join(parts)))
    g.emit("FU.%s(cpu, %s, %d)" % ("load_state" if state else "load_env", data, size))
