"""``kvmpy``: run a guest on kvmpy's soft KVM or on the host's /dev/kvm.

    kvmpy run [IMAGE] [--accel soft|host] [--mmu tdp|shadow] [--vendor vmx|svm] [--cpu MODEL]
              [-m MIB] [--format auto|flat|elf] [--trace] [--max-insns N] [--timeout S]
    kvmpy version

Exit status of ``kvmpy run``:

* the isa-debug-exit status ``(v << 1) | 1`` when the guest wrote ``v`` to port 0xf4,
  as QEMU reports it — except for the built-in demo guest (no IMAGE), whose convention
  (``src/kvmpy/guests/demo.S``) is "value 0 means success": its status 1 maps to 0;
* 0 when the guest halts with interrupts disabled, or resets the machine (i8042);
* 1 with a message on stderr when the run fails: triple fault, internal error, failed
  entry, HLT with interrupts enabled (nothing could wake it), a backend error;
* 2 with a message on stderr for bad options and unusable image files;
* 4 ("stopped after N instructions") when ``--max-insns N`` ended the run;
* 124 ("timed out after S s") when ``--timeout S`` ended the run, as timeout(1) reports it.

(Both bounds' statuses are even, so no isa-debug-exit value can be mistaken for them.)

Errors are one line on stderr, never a traceback (``KVMPY_DEBUG=1`` shows the traceback of
an unexpected error, which would be a bug in kvmpy).
"""

import argparse
import contextlib
import math
import os
import sys

from kvmpy.kernel.hrtimer import CLOCK_MODES
from kvmpy.vmm.loader import LoadError

DEMO = "demo"
#: --mmu values and the kernel module parameter ``ept`` (``npt`` on SVM) they set
MMU_MODES = {"tdp": True, "shadow": False}
#: exit statuses of the runs that a bound (--max-insns, --timeout) ended
BOUND_STATUS = {"insn-limit": 4, "timeout": 124}


RUN_EPILOG = f"""exit status:
  (v << 1) | 1  the guest wrote v to isa-debug-exit (port 0xf4)
  0             the guest halted with interrupts off, or reset the machine
  1             the run failed (triple fault, internal error, failed entry...)
  2             bad options or image file
  {BOUND_STATUS['insn-limit']:<13} --max-insns ended the run
  {BOUND_STATUS['timeout']:<13} --timeout ended the run"""


class UsageError(Exception):
    """A bad option combination (exit status 2)."""


class ArgumentParser(argparse.ArgumentParser):
    """argparse with one-line errors: ``kvmpy run: error: ...`` (exit status 2), no usage."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message}\n")


def positive_seconds(text):
    """--timeout: a finite number of seconds > 0 (not nan, inf or negative)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: not a number of seconds") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"{text}: must be positive and finite")
    return value


def positive_int(text):
    """--max-insns: a whole number > 0."""
    try:
        value = int(text, 10)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: not a whole number") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text}: must be positive")
    return value


def memory_mib(text):
    """-m: guest RAM in MiB, at least 1 and small enough to end below the MMIO hole."""
    # local: `kvmpy --help` and option errors answer before the machine loads
    from kvmpy.vmm.machine import MIB, MMIO_HOLE
    try:
        value = int(text, 10)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid int value: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value}: guest memory must be at least 1 MiB")
    if value * MIB > MMIO_HOLE:
        raise argparse.ArgumentTypeError(f"{value}: at most {MMIO_HOLE // MIB} MiB")
    return value


def build_parser():
    parser = ArgumentParser(
        prog="kvmpy", description="The Linux KVM hypervisor re-implemented in Python.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    run = sub.add_parser("run", help="boot a guest image",
                         description="Boot a guest image (the demo guest if none is given).",
                         epilog=RUN_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    run.add_argument("image", nargs="?", metavar="IMAGE",
                     help="flat binary (loaded at 0x7c00, real mode) or ELF executable")
    run.add_argument("--accel", choices=("soft", "host"), default="soft",
                     help="soft: kvmpy's own KVM (default); host: the machine's /dev/kvm")
    run.add_argument("--mmu", choices=tuple(MMU_MODES),
                     help="soft KVM's MMU: two-dimensional paging or shadow paging")
    run.add_argument("--vendor", choices=("vmx", "svm"),
                     help="soft KVM's vendor module")
    run.add_argument("--cpu", metavar="MODEL",
                     help="soft KVM's CPU model, QEMU's spelling (Skylake-Server, EPYC, host, max...; "
                          "default: the vendor module's)")
    run.add_argument("--clock", choices=CLOCK_MODES,
                     help="soft KVM's time base: virtual (from retired instructions, reproducible; "
                          "the default) or host (the host's monotonic clock)")
    run.add_argument("-m", "--memory", type=memory_mib, default=16, metavar="MIB",
                     help="guest RAM in MiB (default 16)")
    run.add_argument("--format", choices=("auto", "flat", "elf"), default="auto",
                     help="image format (default: ELF if the file starts with its magic)")
    run.add_argument("--trace", action="store_true",
                     help="print the soft kernel's call chains to stderr")
    run.add_argument("--max-insns", type=positive_int, metavar="N",
                     help="stop the soft processor after N guest instructions, counted "
                          "over the whole run (exit status %d)" % BOUND_STATUS["insn-limit"])
    run.add_argument("--timeout", type=positive_seconds, metavar="S",
                     help="stop the guest after S seconds of wall time (exit status %d)"
                          % BOUND_STATUS["timeout"])
    sub.add_parser("version", help="print kvmpy's version")
    return parser


def _soft_params(args):
    """Module parameters for the soft kernel; errors if soft-only options meet --accel host."""
    soft_only = {"--mmu": args.mmu, "--vendor": args.vendor, "--trace": args.trace or None,
                 "--max-insns": args.max_insns, "--cpu": args.cpu,
                 "--clock": args.clock}
    if args.accel == "host":
        given = [name for name, value in soft_only.items() if value is not None]
        if given:
            raise UsageError(f"{', '.join(given)}: only for --accel soft")
        return None
    params = {}
    if args.mmu is not None:
        params["ept"] = MMU_MODES[args.mmu]
    if args.vendor is not None:
        params["vendor"] = args.vendor
    if args.cpu is not None:
        params["cpu"] = _cpu_model(args.cpu)
    if args.clock is not None:
        params["clock"] = args.clock
    return params


def _cpu_model(text):
    """The model name of ``--cpu MODEL[,+feat,-feat...]`` (feature edits: not yet)."""
    from kvmpy.hw import models     # local: option checking loads no more than it checks
    try:
        name, edits = models.parse_cpu_option(text)
        models.lookup(name)
    except KeyError as e:
        raise UsageError(f"--cpu {text}: {e.args[0]}") from None
    if edits:
        raise UsageError(f"--cpu {text}: feature edits ({', '.join(edits)}) are not supported yet")
    return name


@contextlib.contextmanager
def _tracing(enabled):
    """Record the soft kernel's call chains for the run and print them to stderr."""
    if not enabled:
        yield
        return
    from kvmpy.kernel import trace     # local: the kernel's tracer loads only with --trace
    trace.start()
    try:
        yield
    finally:
        text = trace.format_records(trace.stop())
        if text:
            print(text, file=sys.stderr)


def _exit_status(result, demo):
    if result.reason == "debug-exit":
        if demo and result.status == 1:
            return 0
        return result.status
    if result.reason == "hlt":
        return 0
    if result.reason == "reset":
        print(f"kvmpy: {result.message}", file=sys.stderr)
        return 0
    if result.reason in BOUND_STATUS:
        print(f"kvmpy: {result.message}", file=sys.stderr)
        return BOUND_STATUS[result.reason]
    print(f"kvmpy: {result.reason}: {result.message}", file=sys.stderr)
    return 1


def cmd_run(args):
    # local: `kvmpy version` and bad options answer before the machine loads
    from kvmpy.vmm.machine import Machine

    params = _soft_params(args)
    demo = args.image is None
    if demo:
        from kvmpy import guests     # local: the demo's image is read only when it runs
        try:
            image = guests.image_path(DEMO)
        except FileNotFoundError as e:
            raise LoadError(str(e)) from None
    else:
        image = args.image
    with _tracing(args.trace):
        try:
            machine = Machine(image, accel=args.accel, memory_mib=args.memory,
                              fmt=args.format, params=params, max_insns=args.max_insns)
        except OSError as e:
            print(f"kvmpy: cannot create the VM ({args.accel}): {e}", file=sys.stderr)
            return 1
        with machine:
            result = machine.run(timeout=args.timeout)
    return _exit_status(result, demo)


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "run":
            return cmd_run(args)
        if args.command == "version":
            # local: only `kvmpy version` needs the package metadata
            from importlib.metadata import PackageNotFoundError, version
            try:
                print(f"kvmpy {version('kvmpy')}")
            except PackageNotFoundError:
                print("kvmpy (not installed: version unknown)")
            return 0
        parser.print_help(sys.stderr)
        return 2
    except (UsageError, LoadError) as e:
        parser.exit(2, f"kvmpy: error: {e}\n")
    except OSError as e:
        print(f"kvmpy: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("kvmpy: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # a bug in kvmpy: one line, unless asked for the traceback
        if os.environ.get("KVMPY_DEBUG"):
            raise
        print(f"kvmpy: internal error: {type(e).__name__}: {e} "
              f"(set KVMPY_DEBUG=1 for the traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
