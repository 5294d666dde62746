"""Single-step a fuzzer guest on the host's /dev/kvm and on kvmpy; print where they part.

    python -m tests.reliability.step_trace --seed 8 --index 0 [--combo vmx/tdp] [--steps 2000]

Guest ``index`` of a ``guest_fuzz`` run with ``seed`` is built on both backends (the same
program, tables and registers), and each is run under KVM_GUESTDBG_SINGLESTEP: one
KVM_EXIT_DEBUG per instruction, IO and MMIO exits served as the fuzzer serves them.  After
each instruction the general registers, RIP, RFLAGS (as KVM_GET_REGS shows them: without the
TF single-stepping set) and the segment selectors are recorded; the first step whose state
differs is printed with the instructions before it.

The host's kvm_pvm runs every instruction in KVM's emulator, which differs from VMX and
SVM hardware (and kvmpy) in two ways that matter here:

* it traps after every instruction while single-stepping, an INT n or an exception included
  (at the handler's first instruction), where the processor delivers the event with TF
  cleared and traps again only once TF is back (after the handler's IRET).  The host is
  traced first, and kvmpy is then stepped with a hardware breakpoint at the host's next
  linear RIP as well, which stops it at the handler too;
* it loses the trap of an instruction whose port or MMIO write went to user space
  (x86_emulate_instruction's "FIXME: return into emulator if single-stepping"), where kvmpy
  traps after it: the comparison skips such a step of kvmpy's when the next one matches.
"""

import argparse
import sys

from kvmpy.uapi import kvm as uapi
from tests.reliability import guest_fuzz, guests

_REGS = ("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rsp", "rbp", "rip", "rflags")
_SEGS = ("cs", "ds", "es", "ss")


def _state(vm):
    regs, sregs = uapi.kvm_regs(), uapi.kvm_sregs()
    vm.ioctl(uapi.KVM_GET_REGS, regs)
    vm.ioctl(uapi.KVM_GET_SREGS, sregs)
    state = {n: getattr(regs, n) for n in _REGS}
    state.update({n: getattr(sregs, n).selector for n in _SEGS})
    state["pc"] = (sregs.cs.base + regs.rip) & (0xFFFFFFFFFFFFFFFF if sregs.cs.l else 0xFFFFFFFF)
    return state


def _step_control(state, follow):
    """KVM_SET_GUEST_DEBUG for the next step from ``state``: single-stepping, and with
    ``follow`` (the state the host reached next) a breakpoint at its linear RIP too."""
    dbg = uapi.kvm_guest_debug(control=uapi.KVM_GUESTDBG_ENABLE | uapi.KVM_GUESTDBG_SINGLESTEP)
    if follow is not None and follow["pc"] != state["pc"]:
        dbg.control |= uapi.KVM_GUESTDBG_USE_HW_BP
        dbg.arch.debugreg[0], dbg.arch.debugreg[7] = follow["pc"], 0x401
    return dbg


def _run_to_debug(vm, limit):
    """KVM_RUN, serving IO and MMIO, until KVM_EXIT_DEBUG: (None, the user-space exits
    passed), or the outcome that ended the guest first."""
    via = "debug"
    for _ in range(limit):
        try:
            vm.ioctl(uapi.KVM_RUN, 0)
        except OSError as e:
            return guests.errno_class(e), via
        if vm.run.exit_reason == uapi.KVM_EXIT_DEBUG:
            return None, via
        outcome = guests.serve_exit(vm)
        if outcome is not None:
            return outcome, via
        via = uapi.EXIT_REASON_NAMES.get(vm.run.exit_reason, str(vm.run.exit_reason))
    return "running", via


def trace(sc, seed, index, steps, skip_to=None, hits=1, follow=()):
    """The states after each single-stepped instruction of guest ``index``, each with the
    exit that ended it (``debug``, or the user-space exit it went through first); then the
    guest's outcome class (None if it was still stepping after ``steps``).  ``skip_to``: run
    freely until the ``hits``-th time the guest is about to execute the instruction at that
    linear address (a KVM_GUESTDBG_USE_HW_BP breakpoint), and step from there.  ``follow``:
    the host's trace, whose next RIP each step also has a breakpoint on."""
    vm = guests.GuestVm(sc)
    try:
        mode = guests.MODES[index % len(guests.MODES)]
        guests.build(vm, mode, guests.seeded(seed, index))
        dbg = uapi.kvm_guest_debug(control=uapi.KVM_GUESTDBG_ENABLE | uapi.KVM_GUESTDBG_USE_HW_BP)
        dbg.arch.debugreg[0], dbg.arch.debugreg[7] = skip_to or 0, 0x401
        for _ in range(hits if skip_to is not None else 0):
            vm.ioctl(uapi.KVM_SET_GUEST_DEBUG, dbg)     # again: RF passes the last hit
            outcome, _ = _run_to_debug(vm, 100000)
            if outcome is not None:
                return [], outcome
            regs = uapi.kvm_regs()
            vm.ioctl(uapi.KVM_GET_REGS, regs)
            regs.rflags |= 1 << 16
            vm.ioctl(uapi.KVM_SET_REGS, regs)
        out = [dict(_state(vm), via="start")]
        for k in range(steps):
            # before each step, as a debugger does: a guest's POPF may have cleared the TF
            nxt = follow[k + 1] if k + 1 < len(follow) else None
            vm.ioctl(uapi.KVM_SET_GUEST_DEBUG, _step_control(out[-1], nxt))
            outcome, via = _run_to_debug(vm, 1000)
            if outcome is not None:
                return out, outcome
            out.append(dict(_state(vm), via=via))
        return out, None
    finally:
        vm.close()


def _same(a, b):
    return all(a[k] == b[k] for k in _REGS + _SEGS)


def first_difference(host, soft):
    """(host step, kvmpy step) of the first state that differs, or None; a kvmpy step after a
    user-space exit that the host's emulator did not trap is skipped (see the docstring)."""
    i = j = 0
    while i < len(host) and j < len(soft):
        if _same(host[i], soft[j]):
            i, j = i + 1, j + 1
        elif soft[j]["via"] != "debug" and j + 1 < len(soft) and _same(host[i], soft[j + 1]):
            j += 1
        else:
            return i, j
    return None


def _show(state):
    return " ".join("%s=%#x" % (k, state[k]) for k in _REGS + _SEGS) + " (after %s)" % state["via"]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seed", type=int, required=True)
    p.add_argument("--index", type=int, required=True)
    p.add_argument("--combo", default="vmx/tdp", choices=guest_fuzz.COMBOS)
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--context", type=int, default=4, help="steps shown before the difference")
    p.add_argument("--skip-to", type=lambda v: int(v, 0), help="step from the first time the guest reaches "
                   "this linear address (a hardware breakpoint)")
    p.add_argument("--hits", type=int, default=1, help="... from the N-th time")
    args = p.parse_args(argv)
    from tests.support import rawvmm
    host, host_end = trace(rawvmm.HOST, args.seed, args.index, args.steps, args.skip_to, args.hits)
    soft_sc, _ = guest_fuzz.soft_syscalls(args.combo)
    soft, soft_end = trace(soft_sc, args.seed, args.index, args.steps, args.skip_to, args.hits, host)
    print("host: %d steps, then %s; kvmpy (%s): %d steps, then %s"
          % (len(host), host_end, args.combo, len(soft), soft_end))
    diff = first_difference(host, soft)
    if diff is None:
        print("no difference in the steps both ran")
        return 0
    i, j = diff
    for k in range(max(0, i - args.context), i):
        print("  host  %4d  %s" % (k, _show(host[k])))
    print("first difference: host step %d, kvmpy step %d" % (i, j))
    print("  host  %4d  %s" % (i, _show(host[i])))
    print("  kvmpy %4d  %s" % (j, _show(soft[j])))
    return 1


if __name__ == "__main__":
    sys.exit(main())
