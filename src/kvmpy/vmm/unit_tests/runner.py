"""Run the tests: the command line ``x86/run`` builds, the environment file the suite
passes as an initrd, a timeout as timeout(1) gives, and several tests at once.

A :class:`Target` is the VMM: kvmpy (``python -m kvmpy.vmm.cli run`` with kvmpy's own
options) or a QEMU binary with an accelerator.  Both get the same QEMU command line.
"""

import argparse
import os
import platform
import re
import shlex
import signal
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from kvmpy.vmm.unit_tests import RunnerError, rules
from kvmpy.vmm.unit_tests.config import parse

#: what x86/run gives every test (pc-testdev and pci-testdev where the VMM lists them)
PIT_OPTS = ["-global", "kvm-pit.lost_tick_policy=discard"]
PC_TESTDEV_OPTS = ["-device", "pc-testdev", "-device", "isa-debug-exit,iobase=0xf4,iosize=0x4"]
PCI_TESTDEV_OPTS = ["-device", "pci-testdev"]
#: seconds between timeout(1)'s SIGTERM and its SIGKILL (``-k 1s``)
KILL_AFTER = 1.0
#: a VMM's status when abort() killed it (128 + SIGABRT)
ABORTED_STATUS = 128 + signal.SIGABRT
#: the vendor module and parameter that switch two-dimensional paging, per --vendor
TDP_PARAMS = {"vmx": ("kvm_intel", "ept"), "svm": ("kvm_amd", "npt")}
_KVMPY_PARAM = re.compile(r"^/sys/module/(kvm|kvm_intel|kvm_amd)/parameters/(\w+)$")


class Target:
    """A VMM that takes QEMU's command line. ``argv`` starts the VMM; ``accel`` is the
    ACCEL the suite's rules see; ``devices`` the -device drivers it lists."""

    def __init__(self, name, argv, accel, devices, env, read_check=None):
        self.name, self.argv, self.accel = name, list(argv), accel
        self.devices = devices
        self.env = env
        self.read_check = read_check or rules.Context.read_check

    def base_opts(self):
        """x86/run's options before ``-kernel``."""
        opts = ["--no-reboot", "-nodefaults"] + PIT_OPTS
        if "pc-testdev" in self.devices:
            opts += PC_TESTDEV_OPTS
        opts += ["-display", "none", "-serial", "stdio"]
        if "pci-testdev" in self.devices:
            opts += PCI_TESTDEV_OPTS
        return opts + ["-machine", f"accel={self.accel}"]

    def describe(self):
        return f"{self.name} (accel={self.accel})"


def kvmpy_target(kvmpy_args=()):
    """kvmpy's soft KVM (``kvmpy_args``: --vendor, --mmu...). A ``check`` of a KVM module
    parameter reads kvmpy's own: the loaded vendor module's two-dimensional paging switch
    (kvm_intel.ept or kvm_amd.npt, from --mmu); kvmpy has no other, so such checks fail
    and the test is skipped, as on a host whose KVM lacks the parameter."""
    argv = [sys.executable, "-m", "kvmpy.vmm.cli", "run", *kvmpy_args]
    known = argparse.ArgumentParser(add_help=False)
    known.add_argument("--mmu", default="tdp")
    known.add_argument("--vendor", default="vmx")
    opts, _ = known.parse_known_args(list(kvmpy_args))
    tdp_param = TDP_PARAMS.get(opts.vendor)

    def read_check(path):
        m = _KVMPY_PARAM.match(path)
        if not m:
            return rules.Context.read_check(path)
        if m.groups() == tdp_param:
            return "N" if opts.mmu == "shadow" else "Y"
        return None

    env = {"QEMU_ACCEL": "kvm", "ERRATA_FORCE": "y"}
    return Target("kvmpy", argv, "kvm", ("pc-testdev", "pci-testdev"), env, read_check)


def qemu_target(path, accel):
    """A QEMU binary: its version goes in the environment as the suite puts it, and its
    ``-device help`` says whether it has pc-testdev and pci-testdev (x86/run's probe)."""
    try:
        version = subprocess.run([path, "-h"], capture_output=True, text=True,
                                 timeout=30).stdout.splitlines()[:1]
        devices = subprocess.run([path, "-device", "help"], capture_output=True, text=True,
                                 timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired) as e:
        raise RunnerError(f"--qemu {path}: cannot run it ({e})") from None
    version = version[0] if version else ""
    if "QEMU" not in version:
        raise RunnerError(f"--qemu {path}: not a QEMU binary ({version!r})")
    env = {"QEMU_ACCEL": accel, "QEMU_VERSION_STRING": version}
    m = re.search(r"version (\d+)\.(\d+)\.(\d+)", version)
    if m:
        env.update(zip(("QEMU_MAJOR", "QEMU_MINOR", "QEMU_MICRO"), m.groups()))
    if accel == "tcg":
        env["ERRATA_FORCE"] = "y"
    listed = tuple(d for d in ("pc-testdev", "pci-testdev") if f'"{d}"' in devices)
    return Target("qemu", [path], accel, listed, env)


def environ_file(target):
    """The lines of the file the suite passes with -initrd (env_params, env_errata)."""
    release = platform.release()
    version, _, rest = release.partition(".")
    patchlevel, _, rest = rest.partition(".")
    sublevel = re.match(r"\d*", rest).group()
    lines = {"TARGET": "", **target.env, "KERNEL_VERSION_STRING": release,
             "KERNEL_VERSION": version, "KERNEL_PATCHLEVEL": patchlevel,
             "KERNEL_SUBLEVEL": sublevel}
    return "".join(f"{k}={v}\n" for k, v in lines.items())


def command(target, test, kernel, env_path):
    """The shell text x86/run and get_cmdline make for ``test`` (``eval``\\ ed by bash, so
    test_args and qemu_params keep their quotes and backticks)."""
    words = [shlex.quote(w) for w in target.argv + target.base_opts()]
    words += ["-kernel", shlex.quote(kernel), "-smp", test.smp]
    if test.test_args:
        words += ["-append", test.test_args]
    if test.opts:
        words.append(test.opts)
    words += ["-initrd", shlex.quote(env_path)]
    return " ".join(words)


class Processes:
    """The VMMs running now, so that an interrupted run (Ctrl-C) kills them all and starts
    no more: each runs in a session of its own, out of reach of the terminal's SIGINT."""

    def __init__(self):
        self._running = set()
        self._lock = threading.Lock()
        self.stopped = False

    def start(self, argv, **kw):
        with self._lock:
            if self.stopped:
                raise KeyboardInterrupt
            proc = subprocess.Popen(argv, start_new_session=True, **kw)
            self._running.add(proc)
            return proc

    def done(self, proc):
        with self._lock:
            self._running.discard(proc)

    def kill_all(self):
        with self._lock:
            self.stopped = True
            for proc in self._running:
                _signal_group(proc, signal.SIGKILL)


def execute(shell_text, timeout, cwd, env, processes):
    """(status, stdout, stderr) of the command; on timeout SIGTERM, then SIGKILL after
    :data:`KILL_AFTER`, and status 124, as ``timeout -k 1s`` does."""
    proc = processes.start(["bash", "-c", "exec " + shell_text], cwd=cwd, env=env,
                           stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE)
    try:
        out, err = proc.communicate(timeout=timeout)
        # a shell's status: 128 + n for a VMM that signal n killed
        ret = proc.returncode if proc.returncode >= 0 else 128 - proc.returncode
        err = err.decode(errors="replace")
        if ret == ABORTED_STATUS:                  # qemu_fixup_return_code says so too
            err += "QEMU Aborted\n"
        return ret, out.decode(errors="replace"), err
    except subprocess.TimeoutExpired:
        _signal_group(proc, signal.SIGTERM)
        try:
            out, err = proc.communicate(timeout=KILL_AFTER)
        except subprocess.TimeoutExpired:
            _signal_group(proc, signal.SIGKILL)
            out, err = proc.communicate()
        return rules.TIMEOUT_STATUS, out.decode(errors="replace"), err.decode(errors="replace")
    finally:
        if proc.poll() is None:
            _signal_group(proc, signal.SIGKILL)
            proc.wait()
        processes.done(proc)


def _signal_group(proc, signum):
    try:
        os.killpg(proc.pid, signum)
    except ProcessLookupError:
        pass


class Runner:
    """Runs a build tree's tests on a target: ``run()`` returns the Results in the
    config's order and prints a line per test as it finishes, then a summary."""

    def __init__(self, build_dir, target, *, jobs=1, group="", only=(), run_all=False,
                 timeout=None, log_dir=None, out=None):
        self.build_dir = os.path.abspath(build_dir)
        self.test_dir = os.path.join(self.build_dir, "x86")
        self.target, self.jobs, self.timeout = target, jobs, timeout
        self.only, self.out = set(only), out or sys.stdout
        self.ctx = rules.Context(arch=self._arch(), accel=target.accel, group=group,
                                 run_all=run_all, read_check=target.read_check)
        self.log_dir = log_dir
        self._lock = threading.Lock()
        self._done = 0
        self._processes = Processes()

    def _arch(self):
        """ARCH from the tree's config.mak (x86_64 if it does not say)."""
        try:
            with open(os.path.join(self.build_dir, "config.mak")) as f:
                for line in f:
                    if line.startswith("ARCH="):
                        return line.strip().split("=", 1)[1]
        except OSError:
            pass
        return "x86_64"

    def tests(self):
        tests = parse(os.path.join(self.test_dir, "unittests.cfg"), self.test_dir)
        unknown = self.only - {t.name for t in tests}
        if unknown:
            raise RunnerError(f"no such test in unittests.cfg: {', '.join(sorted(unknown))}")
        return [t for t in tests if rules.selected(t, self.only, self.ctx.group)]

    def run(self):
        tests = self.tests()
        if self.log_dir:
            os.makedirs(self.log_dir, exist_ok=True)
        self._print(f"running {len(tests)} tests of {self.build_dir} on "
                    f"{self.target.describe()}, {self.jobs} at a time")
        start = time.monotonic()
        with tempfile.TemporaryDirectory(prefix="kvmpy-unit-tests-") as tmp:
            env_path = os.path.join(tmp, "environ")
            with open(env_path, "w") as f:
                f.write(environ_file(self.target))
            pool = ThreadPoolExecutor(max_workers=self.jobs)
            try:
                results = list(pool.map(lambda t: self._one(t, env_path, len(tests)), tests))
            except KeyboardInterrupt:
                self._processes.kill_all()
                raise
            finally:
                pool.shutdown(wait=True, cancel_futures=True)
        counts = {s: sum(r.status == s for r in results) for s in (rules.PASS, rules.FAIL,
                                                                   rules.SKIP)}
        self._print(f"SUMMARY: {counts['PASS']} pass, {counts['FAIL']} fail, "
                    f"{counts['SKIP']} skip of {len(results)} "
                    f"({time.monotonic() - start:.0f} s)")
        return results

    def _one(self, test, env_path, total):
        start = time.monotonic()
        result = self._judge(test, env_path)
        result.seconds = time.monotonic() - start
        with self._lock:
            self._done += 1
            self._print(f"[{self._done:{len(str(total))}}/{total}] {result.line()}")
        return result

    def _judge(self, test, env_path):
        reason = rules.skip_reason(test, self.ctx)
        if reason is not None:
            return rules.Result(test.name, rules.SKIP, reason)
        timeout_text = test.timeout or rules.DEFAULT_TIMEOUT
        if self.timeout is not None:
            timeout_text = f"{self.timeout:g}s"
        timeout = rules.timeout_seconds(timeout_text)
        env = dict(os.environ, TESTNAME=test.name, TIMEOUT=timeout_text,
                   MACHINE=test.machine, ACCEL=self.target.accel)
        ret, out, err = execute(command(self.target, test, rules.NO_FILE, env_path),
                                timeout, self.build_dir, env, self._processes)
        reason = rules.premature_failure(out + err)
        if reason is not None:
            self._log(test, out + err)
            return rules.Result(test.name, rules.SKIP, reason)
        ret, out, err = execute(command(self.target, test, test.kernel, env_path),
                                timeout, self.build_dir, env, self._processes)
        self._log(test, out + err)
        result = rules.verdict(test.name, rules.fixup_status(ret, err), out, timeout_text)
        if result.status == rules.FAIL and not result.detail:
            result.detail = rules.failure_hint(out, err)
        return result

    def _log(self, test, text):
        if self.log_dir:
            with open(os.path.join(self.log_dir, f"{test.name}.log"), "w") as f:
                f.write(text)

    def _print(self, line):
        print(line, file=self.out, flush=True)
