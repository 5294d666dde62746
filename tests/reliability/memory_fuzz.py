"""Memory-changes fuzzer: guests use memslot memory while the VMM munmaps, mprotects, deletes
and moves it, between runs and from another thread (see ``memory_vm`` for the VM).

    python -m tests.reliability.memory_fuzz --count N --seed S [--host] [--threads-only]
    python -m tests.reliability.memory_fuzz --scenario NAME [--backend soft|host]

Each case runs in a child process, so a segfault is a reported defect, not a dead fuzzer.
A case is a defect when: KVM_RUN raises anything but an errno the host gives, an outcome is
not one the host gives (``memory_vm.host_like``), a canary page changed, memory changed after
its slot's deletion returned, the run does not end within its time limit, or (``--host``,
cases without threads) kvmpy's outcomes differ from the host's.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import threading
import time

from tests.support import rawvmm
from tests.reliability import memory_vm as mv

MAX_RUNS = 400              # KVM_RUNs per case before the VMM gives up (a hang)
CASE_TIMEOUT = 60           # s per child process
ACTIONS = ("munmap", "remap", "ro", "none", "rw", "delete", "move", "readd", "nothing")


def backend(name):
    if name == "host":
        return rawvmm.HOST
    from kvmpy import syscalls
    return syscalls


def notify_range_change(vm):
    """What an interposed mprotect (issue 10's preload) does first: tell kvmpy's kernel."""
    kernel = sys.modules.get("kvmpy.kernel.kvm_main")
    if kernel is not None:
        kernel.mmu_notifier_invalidate_range_start(vm.data_addr, vm.data_addr + mv.SLOT_SIZE)


def act(vm, action, state):
    """Apply one VMM memory change; ``state`` tracks what the slot and mapping are."""
    if action == "munmap" and vm.data_mapped:
        vm.munmap_data()
    elif action == "remap" and not vm.data_mapped:
        vm.remap_data()
    elif action in ("ro", "none", "rw") and vm.data_mapped:
        notify_range_change(vm)
        vm.mprotect_data({"ro": mv.PROT_READ, "none": mv.PROT_NONE, "rw": mv.PROT_RW}[action])
        state["prot"] = action
    elif action == "delete" and state["slot"]:
        vm.delete_data_slot()
        state["slot"] = False
    elif action == "move" and state["slot"]:
        state["gpa"] = mv.MOVED_GPA if state["gpa"] == mv.DATA_GPA else mv.DATA_GPA
        vm.move_data_slot(state["gpa"])
    elif action == "readd" and not state["slot"]:
        vm.set_slot(1, mv.DATA_GPA, vm.data_addr)
        state["slot"], state["gpa"] = True, mv.DATA_GPA


def run_to_end(vm, between=None, stop=None, max_runs=MAX_RUNS):
    """KVM_RUN until a final exit or ``stop`` is set; ``between(i)`` runs at each progress OUT."""
    outcomes = []
    for i in range(max_runs):
        if stop is not None and stop.is_set():
            return outcomes
        o = vm.run_once()
        outcomes.append(o)
        if mv.final(o):
            return outcomes
        if between is not None and o.startswith("IO 0x80"):
            between(i)
    outcomes.append("VMM_GAVE_UP")
    return outcomes


# ------------------------------------------------------------------ the reproducers
def _plain(kind, access):
    ops = [("w", 0x10, 0x55)] if access == "write" else [("r", 0x10)]

    def scenario(sc):
        vm = mv.MemoryVm(sc, mv.guest(ops), data_mapped=kind != "nevermapped")
        if kind == "munmap":
            vm.munmap_data()
        elif kind in ("ro", "none"):
            vm.mprotect_data(mv.PROT_READ if kind == "ro" else mv.PROT_NONE)
        elif kind == "code_munmap":
            vm.munmap_code()
        return vm, run_to_end(vm)
    return scenario


def _after_use(kind):
    """The guest maps the page first (a write, then an exit); then the memory changes."""
    def scenario(sc):
        vm = mv.MemoryVm(sc, mv.guest([("w", 0x10, 0x55), ("out",), ("w", 0x10, 0x66), ("r", 0x10)]))

        def between(i):
            if kind == "munmap":
                vm.munmap_data()
            else:
                notify_range_change(vm)
                vm.mprotect_data(mv.PROT_READ if kind == "ro" else mv.PROT_NONE)
        return vm, run_to_end(vm, between)
    return scenario


def _all_slots_deleted():
    """The guest runs from both slots; then the VMM deletes both and unmaps their memory
    (the selftest set_memory_region_test's last step): the next run has no memory at all."""
    def scenario(sc):
        vm = mv.MemoryVm(sc, mv.guest([("w", 0x10, 0x55), ("out",), ("r", 0x10)]))

        def between(i):
            vm.delete_data_slot()
            vm.set_slot(0, mv.CODE_GPA, vm.code_addr, 0)
            vm.munmap_data()
            vm.munmap_code()
        return vm, run_to_end(vm, between)
    return scenario


SCENARIOS = {"%s_%s" % (k, a): _plain(k, a) for k in ("munmap", "ro", "none", "nevermapped", "code_munmap")
             for a in ("write", "read")}
SCENARIOS.update({"used_then_%s" % k: _after_use(k) for k in ("munmap", "ro", "none")})
SCENARIOS["all_deleted_then_munmap"] = _all_slots_deleted()


def run_scenario(name, backend_name):
    vm, outcomes = SCENARIOS[name](backend(backend_name))
    result = {"outcomes": outcomes, "canaries": vm.canaries_intact()}
    vm.close()
    return result


# ------------------------------------------------------------------ delete under a running vCPU
def threaded_case(sc, rng):
    """A vCPU thread stores to the data slot in a loop; the VMM thread deletes (or moves) the
    slot, snapshots the old memory, and munmaps it after a while.  Returns defects found.

    The last store loop spins for ever, so the delete always lands while the guest stores,
    whatever the timing: its next store becomes an MMIO exit, where the thread sees ``stop``
    (a guest that went on storing to the old memory would hang, a defect reported)."""
    defects = []
    offsets = rng.sample(range(0, mv.SLOT_SIZE, 7), rng.randint(1, 4))
    ops = [("loop", o, rng.randint(5000, 40000)) for o in offsets[:-1]] + [("spin", offsets[-1])]
    vm = mv.MemoryVm(sc, mv.guest(ops))
    outcomes, errors = [], []
    stop = threading.Event()

    def vcpu_thread():
        try:
            outcomes.extend(run_to_end(vm, stop=stop, max_runs=10 ** 6))
        except BaseException as e:         # noqa: BLE001 - any escape is the defect reported
            errors.append(repr(e))
    t = threading.Thread(target=vcpu_thread, daemon=True)
    t.start()
    time.sleep(rng.uniform(0, 0.03))
    if rng.random() < 0.7:
        vm.delete_data_slot()
    else:
        vm.move_data_slot(mv.MOVED_GPA + 0x10000)       # a gpa the guest does not use
    snapshot = vm.data()
    time.sleep(rng.uniform(0, 0.05))
    if vm.data() != snapshot:
        defects.append("memory written after its slot was deleted/moved")
    if rng.random() < 0.8:
        vm.munmap_data()
    time.sleep(rng.uniform(0, 0.02))
    stop.set()                      # the vCPU thread ends at its next exit to user space
    t.join(CASE_TIMEOUT / 2)
    if t.is_alive():
        defects.append("vCPU thread hangs")
        return defects, outcomes, 0
    if vm.data_mapped and vm.data() != snapshot:
        defects.append("memory written after its slot was deleted/moved (at the end)")
    defects += errors
    defects += ["outcome %r" % o for o in outcomes if not mv.host_like(o)]
    if not vm.canaries_intact():
        defects.append("canary changed")
    insns = vm.guest_insns()
    vm.close()
    return defects, outcomes, insns


# ------------------------------------------------------------------ random sequential cases
def random_ops(rng):
    ops = []
    for _ in range(rng.randint(1, 12)):
        k = rng.random()
        off = rng.randrange(0, mv.SLOT_SIZE - 1)
        if k < 0.35:
            ops.append(("w", off, rng.randrange(256)))
        elif k < 0.6:
            ops.append(("r", off))
        elif k < 0.9:
            ops.append(("out",))
        else:
            ops.append(("loop", off, rng.randint(1, 50)))
    return ops


def sequential_case(sc, rng):
    """Random stores/loads with the VMM changing memory at each progress exit."""
    ops = random_ops(rng)
    actions = [rng.choice(ACTIONS) for _ in ops]
    vm = mv.MemoryVm(sc, mv.guest(ops))
    state = {"slot": True, "gpa": mv.DATA_GPA, "prot": "rw"}
    outcomes = run_to_end(vm, lambda i: act(vm, actions[i % len(actions)], state))
    defects = ["outcome %r" % o for o in outcomes if not mv.host_like(o)]
    if not vm.canaries_intact():
        defects.append("canary changed")
    data = vm.data().hex() if vm.data_mapped and state["prot"] != "none" else None
    insns = vm.guest_insns()
    vm.close()
    return defects, outcomes, insns, data


def same_as_host(soft, host):
    """Outcomes equal; or the host's end in EFAULT where kvmpy's have an MMIO exit or an
    emulation failure.  KVM with EPT/NPT (kvm_intel, kvm_amd) cannot fault in a page its
    memslot's hva no longer backs (munmap, mprotect) and fails KVM_RUN with EFAULT, which
    ends the run; kvm_pvm, and kvmpy, emulate the access as MMIO and the guest goes on."""
    if host and host[-1] == "EFAULT" and len(soft) >= len(host):
        i = len(host) - 1
        return soft[:i] == host[:i] and (soft[i] == "EFAULT" or soft[i].startswith(("MMIO", "INTERNAL_ERROR")))
    return soft == host


def run_case(seed, backend_name, compare_host, threads_only=False):
    rng = random.Random(seed)
    if threads_only or rng.random() < 0.3:
        defects, outcomes, insns = threaded_case(backend(backend_name), rng)
        return {"seed": seed, "kind": "thread", "defects": defects, "exits": len(outcomes), "insns": insns}
    defects, outcomes, insns, data = sequential_case(backend(backend_name), random.Random(seed + 1))
    if compare_host:
        _, h_outcomes, _, h_data = sequential_case(rawvmm.HOST, random.Random(seed + 1))
        if not same_as_host(outcomes, h_outcomes) or (data != h_data and "EFAULT" not in h_outcomes):
            defects.append("differs from host: %r vs %r" % (outcomes, h_outcomes))
    return {"seed": seed, "kind": "sequential", "defects": defects, "exits": len(outcomes), "insns": insns}


# ------------------------------------------------------------------ driver
def _child(args):
    for seed in range(args.seed, args.seed + args.count):
        print(json.dumps(run_case(seed, args.backend, args.host, args.threads_only)), flush=True)


def fuzz(count, seed, compare_host=False, threads_only=False, batch=25, log=sys.stdout):
    """Run ``count`` cases in child processes; return the summary dict."""
    summary = {"cases": 0, "exits": 0, "guest_insns": 0, "defects": []}
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.getcwd()] + sys.path))
    s = seed
    while s < seed + count:
        n = min(batch, seed + count - s)
        cmd = [sys.executable, "-m", "tests.reliability.memory_fuzz", "--child", "--seed", str(s),
               "--count", str(n)] + (["--host"] if compare_host else []) + (
               ["--threads-only"] if threads_only else [])
        try:
            p = subprocess.run(cmd, capture_output=True, text=True, timeout=CASE_TIMEOUT * n, env=env)
            out, rc = p.stdout, p.returncode
        except subprocess.TimeoutExpired as e:
            out, rc = (e.stdout or b"").decode() if isinstance(e.stdout, bytes) else (e.stdout or ""), "timeout"
        done = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
        for r in done:
            summary["cases"] += 1
            summary["exits"] += r["exits"]
            summary["guest_insns"] += r["insns"]
            summary["defects"] += [(r["seed"], d) for d in r["defects"]]
        if len(done) < n:           # the child died (signal, traceback or hang) in case s+len(done)
            summary["cases"] += 1
            summary["defects"].append((s + len(done), "child process ended: %s %s" % (
                rc, (p.stderr[-500:] if rc != "timeout" else ""))))
            s += len(done) + 1
        else:
            s += n
        print("cases %(cases)d exits %(exits)d insns %(guest_insns)d defects %(n)d" % dict(
            summary, n=len(summary["defects"])), file=log, flush=True)
    return summary


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--count", type=int, default=100)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--host", action="store_true", help="compare cases without threads with /dev/kvm")
    ap.add_argument("--threads-only", action="store_true")
    ap.add_argument("--backend", choices=("soft", "host"), default="soft")
    ap.add_argument("--scenario", choices=sorted(SCENARIOS))
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.scenario:
        print(json.dumps(run_scenario(args.scenario, args.backend)))
        return 0
    if args.child:
        _child(args)
        return 0
    t = time.time()
    summary = fuzz(args.count, args.seed, args.host, args.threads_only)
    for seed, d in summary["defects"]:
        print("defect seed %d: %s" % (seed, d))
    print("%d cases, %d exits, %d guest instructions, %d defects in %.0f s" % (
        summary["cases"], summary["exits"], summary["guest_insns"], len(summary["defects"]), time.time() - t))
    return 1 if summary["defects"] else 0


if __name__ == "__main__":
    sys.exit(main())
