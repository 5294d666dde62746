"""Random-guest fuzzer: every mode on every vendor/MMU combination, against the host.

    python -m tests.reliability.guest_fuzz --count N --seed S [--no-host] [--combos vmx/tdp,...]
    python -m tests.reliability.guest_fuzz --seed S --start I --count 1 --combos vmx/tdp   (guest I alone)

Guest ``i`` of a run (``guests.seeded(seed, i)``) is the same program on every backend, in
mode ``MODES[i % 4]``.  Each backend runs in a worker process of its own (one vendor module
per process, as in the kernel): vmx/tdp, vmx/shadow, svm/tdp, svm/shadow, and the host's
/dev/kvm where it can be opened.  The worker serves IO and MMIO exits and ends a guest at its
first other exit, after ``MAX_EXITS`` exits, when kvmpy's processor has retired
``INSN_BUDGET`` instructions (the soft kernel's ``insn_limit``, which signals the vCPU
thread), or when its wall-clock budget is spent: then a watchdog thread sets
``immediate_exit`` and sends SIGUSR1 to the vCPU thread.  The outcome class of a guest is
``hlt``, ``shutdown``, ``internal-error/<suberror>``, ``fail-entry``, ``errno-E...``,
``insn-limit`` or ``running`` (the wall-clock budget ended it).

Defects, by kind:

* **crash**: the worker died (a signal such as SIGSEGV, or an exit) while running a guest;
* **escape**: KVM_RUN raised something other than an OSError (a Python exception out of
  the kernel);
* **hang**: KVM_RUN did not return within ``HANG_S`` of the watchdog's kick (or never: the
  worker stops answering and is killed);
* **canary**: a byte of a guard page around a memslot changed;
* **mismatch**: the host ended the guest with a definite outcome (``DEFINITE``) and kvmpy's
  outcome class is another; or the host ran the guest's control (below) and kvmpy did not.

Each guest has a control: its tables and registers with ``jmp $`` as the code, run for
``CONTROL_S``.  A host that cannot run the control (it ends it at once: the host's
kvm_pvm, for one, shuts down every 32-bit paged guest) says nothing about the guest, which
is then not comparable; so are guests the host's emulator failed on (``internal-error/1``)
and those its budget ended.  Not comparable guests are counted, not failed.

kvmpy's own emulation failure is explained, not a mismatch, where KVM's emulator on VMX and
SVM fails too: an IRET or INT n outside real mode that had to be emulated (its stack or
IDT in an MMIO hole).  KVM's em_iret and emulate_int handle real mode only; kvm_pvm, which
runs the guest differently, may end such a guest otherwise (a shutdown, say).
"""

import argparse
import collections
import json
import os
import select
import signal
import subprocess
import sys
import threading
import time
import traceback

from kvmpy.uapi import kvm as uapi
from tests.reliability import guests
from tests.support.hostkvm import host_kvm_usable

COMBOS = ("vmx/tdp", "vmx/shadow", "svm/tdp", "svm/shadow")
DEFECT_KINDS = ("crash", "escape", "hang", "canary", "mismatch")
#: host outcomes that say what the guest did (not the host emulator's limits or its budget)
DEFINITE = ("hlt", "shutdown", "fail-entry")
MAX_EXITS = 200
INSN_BUDGET = 50_000
HANG_S = 1.0
BUDGET_S = 0.25
CONTROL_S = 0.02
WORKER_START_S = 60     # a worker's imports, on a loaded machine
CONFIRM = 10            # budgets of the second run of a guest kvmpy was still running


#: how the watchdog kicks the vCPU thread: both ways, or one of them alone
KICKS = ("both", "immediate_exit", "signal")


class Watchdog:
    """Kicks the vCPU thread once its guest's budget is over, from a timer thread, as a
    VMM's other thread would: ``immediate_exit`` and SIGUSR1 (``kick``: one of KICKS)."""

    def __init__(self, vm, budget, icount, kick="both"):
        self.vm, self.icount, self.how = vm, icount, kick
        self.thread = threading.get_ident()
        self.kicked_at = self.kicked_insns = None
        self.timer = threading.Timer(budget, self.kick)
        self.timer.daemon = True

    def kick(self):
        self.kicked_insns = self.icount()
        self.kicked_at = time.perf_counter()
        if self.how != "signal":
            self.vm.run.immediate_exit = 1
        if self.how != "immediate_exit":
            signal.pthread_kill(self.thread, signal.SIGUSR1)

    def __enter__(self):
        self.timer.start()
        return self

    def __exit__(self, *exc):
        self.timer.cancel()
        self.timer.join()


class InsnLimit:
    """SIGXCPU from the soft kernel: the vCPU has retired its ``insn_limit`` instructions."""

    def __init__(self):
        self.reached = False
        signal.signal(signal.SIGXCPU, self._handler)

    def _handler(self, signum, frame):
        self.reached = True


def run_one(vm, mode, rng, budget, icount, limit, control=False, kick="both"):
    """Build and run one guest; its record (outcome, retired instructions, kick latency)."""
    guests.build(vm, mode, rng, control)
    start = icount()
    limit.reached = False
    record = {"mode": mode, "exits": 0}
    with Watchdog(vm, budget, icount, kick) as dog:
        outcome = None
        while outcome is None:
            try:
                vm.ioctl(uapi.KVM_RUN, 0)
            except OSError as e:
                if dog.kicked_at is not None:
                    outcome = "running"
                elif limit.reached:
                    outcome = "insn-limit"
                else:
                    outcome = guests.errno_class(e)
                break
            except Exception as e:      # noqa: BLE001 - the defect this fuzzer looks for
                record["escape"] = "".join(traceback.format_exception_only(type(e), e)).strip()
                outcome = "escape"
                break
            record["exits"] += 1
            outcome = guests.serve_exit(vm)
            if outcome is None and (record["exits"] >= MAX_EXITS or dog.kicked_at is not None):
                outcome = "running"
        returned = time.perf_counter()
    if dog.kicked_at is not None and outcome == "running":
        record["kick_ms"] = (returned - dog.kicked_at) * 1e3
        record["kick_insns"] = icount() - dog.kicked_insns
    record["outcome"] = outcome
    if outcome == "internal-error/%d" % uapi.KVM_INTERNAL_ERROR_EMULATION:
        record["insn"] = _failed_instruction(vm.run).hex()
    record["insns"] = icount() - start
    record["canary"] = vm.canaries_intact()
    return record


def _failed_instruction(run):
    """The instruction bytes KVM reports with an emulation failure (the flag
    KVM_INTERNAL_ERROR_EMULATION_FLAG_INSTRUCTION_BYTES), or b"" without them."""
    failure = run.emulation_failure
    if failure.ndata < 3 or not failure.flags & uapi.KVM_INTERNAL_ERROR_EMULATION_FLAG_INSTRUCTION_BYTES:
        return b""
    return bytes(failure.insn_bytes[:min(failure.insn_size, 15)])


#: legacy prefixes and REX, which an IRET or INT may carry
_PREFIXES = frozenset([0x26, 0x2E, 0x36, 0x3E, 0x64, 0x65, 0x66, 0x67, 0xF0, 0xF2, 0xF3] + list(range(0x40, 0x50)))


def _kvm_emulator_limit(rec):
    """kvmpy failed to emulate an IRET or INT n/INT3/INTO outside real mode, which KVM's
    emulator cannot emulate either (see the module docstring)."""
    insn = bytes.fromhex(rec.get("insn", ""))
    i = 0
    while i < len(insn) and insn[i] in _PREFIXES:
        i += 1
    return rec["mode"] != "real" and i < len(insn) and insn[i] in (0xCC, 0xCD, 0xCE, 0xCF)


def soft_syscalls(combo, insn_limit=None):
    """kvmpy's system calls with the vendor module and MMU of ``combo`` ("vmx/tdp"...) and
    vCPUs limited to ``insn_limit`` instructions (0: none), and a function giving the
    instructions a vCPU fd's processor has retired."""
    vendor, mmu = combo.split("/")
    from kvmpy import syscalls
    from kvmpy.kernel import fs
    from kvmpy.kernel.x86 import params
    params.set(vendor=vendor, ept=mmu == "tdp")
    params.insn_limit = insn_limit or None

    def icount_of(vcpu_fd):
        cpu = fs.fdget(vcpu_fd).private_data.arch.cpu
        return lambda: cpu.icount
    return syscalls, icount_of


def worker(backend, seed, indices, budget, insn_budget, kick="both", controls=True):
    """Run guests ``indices`` on ``backend``, one JSON line each (and one before)."""
    signal.signal(signal.SIGUSR1, lambda *a: None)
    limit = InsnLimit()
    if backend == "host":
        from tests.support import rawvmm
        sc = rawvmm.HOST

        def icount_of(vcpu_fd):
            return lambda: 0
    else:
        sc, icount_of = soft_syscalls(backend, insn_budget)
    for i in indices:
        print(json.dumps({"i": i, "start": True}), flush=True)
        mode = guests.MODES[i % len(guests.MODES)]
        records = []
        for control in (False, True) if controls else (False,):
            vm = guests.GuestVm(sc)
            try:
                records.append(run_one(vm, mode, guests.seeded(seed, i), CONTROL_S if control else budget,
                                       icount_of(vm.vcpu), limit, control, kick))
            finally:
                vm.close()
        record = records[0]
        record["i"] = i
        if controls:
            record["control"] = records[1]
        print(json.dumps(record), flush=True)


def _spawn(backend, seed, indices, budget, insn_budget, kick, controls):
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([root, os.environ.get("PYTHONPATH", "")]))
    return subprocess.Popen([sys.executable, "-m", "tests.reliability.guest_fuzz", "--worker", backend,
                             "--seed", str(seed), "--indices", ",".join(map(str, indices)),
                             "--budget", str(budget), "--insn-budget", str(insn_budget), "--kick", kick]
                            + ([] if controls else ["--no-controls"]),
                            stdout=subprocess.PIPE, env=env, text=True)


def run_backend(backend, seed, indices, budget, insn_budget=INSN_BUDGET, kick="both", controls=True):
    """Guests ``indices`` on one backend; a worker that stops answering is killed (a hang)
    and one that dies is a crash; either is restarted after the guest it was running.
    Returns the records, by guest index."""
    records, todo = {}, list(indices)
    while todo:
        proc = _spawn(backend, seed, todo, budget, insn_budget, kick, controls)
        current, wait = None, WORKER_START_S
        while True:
            ready, _, _ = select.select([proc.stdout], [], [], wait)
            line = proc.stdout.readline() if ready else None
            if not line:
                if line is None:
                    proc.kill()
                proc.wait()
                current = todo[0] if current is None else current
                if current not in records:
                    records[current] = {"i": current, "mode": guests.MODES[current % 4]}
                    if line is None:
                        records[current]["outcome"] = "hang"
                    else:
                        records[current].update(outcome="crash",
                                                detail="worker ended with status %s" % proc.returncode)
                todo = todo[todo.index(current) + 1:]
                break
            rec = json.loads(line)
            if rec.get("start"):
                current, wait = rec["i"], budget + HANG_S + 10
            else:
                records[rec["i"]] = rec
        proc.stdout.close()
    return records


def defects(rec, host_rec=None):
    """The defect kinds of one guest's record on kvmpy (``host_rec``: the host's, if any)."""
    out = []
    for run in (rec, rec.get("control")) if "control" in rec else (rec,):
        if run["outcome"] in ("crash", "escape", "hang"):
            out.append(run["outcome"])
        if run.get("canary") is False:
            out.append("canary")
        if run.get("kick_ms", 0) > HANG_S * 1e3:
            out.append("hang")
    if host_rec is not None and "control" in host_rec and not out and (
            _still_running(host_rec["control"]) and not _still_running(rec["control"])
            or comparable(host_rec) and rec["outcome"] != host_rec["outcome"]
            and not _kvm_emulator_limit(rec)):
        out.append("mismatch")
    return out


def _still_running(record):
    return record["outcome"] in ("running", "insn-limit")


def comparable(host_rec):
    """The host's outcome says what the guest does (see the module docstring)."""
    return host_rec["outcome"] in DEFINITE and _still_running(host_rec["control"])


def percentile(values, q):
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))] if values else 0.0


def summarize(results, seed):
    """The figures of a run: counts by defect kind, instructions by mode, each defect."""
    host = results.get("host")
    summary = {"guests": 0, "insns": 0, "insns_by_mode": collections.Counter(),
               "defects": collections.Counter({k: 0 for k in DEFECT_KINDS}), "found": [],
               "comparable": 0, "outcomes": {}}
    for backend, records in results.items():
        summary["outcomes"][backend] = collections.Counter(r["outcome"] for r in records.values())
        if backend == "host":
            continue
        for i, rec in sorted(records.items()):
            host_rec = host.get(i) if host else None
            summary["guests"] += 1
            summary["insns"] += rec.get("insns", 0)
            summary["insns_by_mode"][rec["mode"]] += rec.get("insns", 0)
            summary["comparable"] += bool(host_rec and "control" in host_rec and comparable(host_rec))
            for kind in defects(rec, host_rec):
                summary["defects"][kind] += 1
                summary["found"].append(dict(kind=kind, backend=backend, seed=seed, i=i, mode=rec["mode"],
                                             outcome=rec["outcome"], insns=rec.get("insns"),
                                             host=host_rec["outcome"] if host_rec else None,
                                             detail=rec.get("escape") or rec.get("detail", "")))
    return summary


def report(summary, results, out=sys.stdout, show=20):
    for backend, outcomes in summary["outcomes"].items():
        print("%-10s %s" % (backend, dict(outcomes.most_common())), file=out)
    print("guests %d (x %d backends), guest instructions %d: %s" % (
        summary["guests"], len([b for b in results if b != "host"]), summary["insns"],
        ", ".join("%s %d" % (m, summary["insns_by_mode"][m]) for m in guests.MODES)), file=out)
    if "host" in results:
        print("compared with the host: %d guest runs the host ended definitely after running their control"
              % summary["comparable"], file=out)
    print("defects: " + ", ".join("%s %d" % (k, summary["defects"][k]) for k in DEFECT_KINDS), file=out)
    for d in summary["found"][:show]:
        print("  %(kind)s: %(backend)s guest %(i)d (%(mode)s): kvmpy %(outcome)s after %(insns)s insns, "
              "host %(host)s %(detail)s  [--seed %(seed)d --start %(i)d --count 1 --combos %(backend)s]" % d,
              file=out)
    lat = [r["kick_ms"] for b, rs in results.items() if b != "host" for r in rs.values() if "kick_ms" in r]
    if lat:
        print("kick -> KVM_RUN return (kvmpy): n %d, median %.2f ms, p99 %.2f ms, max %.2f ms" % (
            len(lat), percentile(lat, 0.5), percentile(lat, 0.99), max(lat)), file=out)


def fuzz(count, seed, backends=COMBOS, budget=BUDGET_S, start=0, insn_budget=INSN_BUDGET):
    """Run guests ``start..start+count`` of ``seed`` on each backend; (summary, records).

    A guest that kvmpy was still running when the host had ended it is run again with
    ``CONFIRM`` times the budgets before it counts as a mismatch: kvmpy is far slower than
    the host, and a long REP string or delivery loop may just need more time."""
    indices = range(start, start + count)
    results = {b: run_backend(b, seed, indices, budget, insn_budget) for b in backends if b == "host"}
    host = results.get("host", {})
    for b in backends:
        if b == "host":
            continue
        records = results[b] = run_backend(b, seed, indices, budget, insn_budget)
        slow = [i for i, r in records.items()
                if i in host and "control" in r and "control" in host[i] and comparable(host[i])
                and _still_running(r)]
        if slow:
            for i, r in run_backend(b, seed, slow, budget * CONFIRM, insn_budget * CONFIRM).items():
                r["first"] = records[i]["outcome"]
                records[i] = r
    return summarize(results, seed), results


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--count", type=int, default=100, help="guests per backend")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--start", type=int, default=0, help="index of the first guest")
    p.add_argument("--budget", type=float, default=BUDGET_S, help="wall-clock seconds per guest")
    p.add_argument("--insn-budget", type=int, default=INSN_BUDGET, help="kvmpy's instructions per guest (0: none)")
    p.add_argument("--no-host", action="store_true", help="do not run the guests on the host's /dev/kvm")
    p.add_argument("--combos", default=",".join(COMBOS), help="comma-separated vendor/mmu list")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--indices", help=argparse.SUPPRESS)
    p.add_argument("--kick", choices=KICKS, default="both", help=argparse.SUPPRESS)
    p.add_argument("--no-controls", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        worker(args.worker, args.seed, [int(i) for i in args.indices.split(",")], args.budget, args.insn_budget,
               args.kick, not args.no_controls)
        return 0
    backends = [b for b in args.combos.split(",") if b]
    if not args.no_host and host_kvm_usable():
        backends.append("host")
    t0 = time.time()
    summary, results = fuzz(args.count, args.seed, backends, args.budget, args.start, args.insn_budget)
    report(summary, results)
    n = sum(summary["defects"].values())
    print("%d defects in %.0f s" % (n, time.time() - t0))
    return 1 if n else 0


if __name__ == "__main__":
    sys.exit(main())
