"""``kvmpy``: run a guest on kvmpy's soft KVM or on the host's /dev/kvm.

    kvmpy run [IMAGE] [--accel soft|host] [--mmu tdp|shadow] [--vendor vmx|svm] [--cpu MODEL]
              [-m MIB] [--format auto|flat|elf|bzimage|pvh|multiboot] [--trace] [--max-insns N]
              [--timeout S] [--stats]
    kvmpy run -kernel FILE [QEMU options: -initrd -append -smp -m -cpu -machine -device
              -drive -global -serial -rtc -display -nodefaults --no-reboot -enable-kvm]
              [--disk FILE]
    kvmpy unit-tests BUILD_DIR [-j N] [-g GROUP] [--qemu PATH] [TEST...]
    kvmpy version

``kvmpy run`` takes QEMU's spellings (one dash or two) of the options kvm-unit-tests and
scripts use (:mod:`kvmpy.vmm.qemu_options`); whatever kvmpy cannot do is refused with one
line naming it, never ignored.

Exit status of ``kvmpy run``:

* the isa-debug-exit status ``(v << 1) | 1`` when the guest wrote ``v`` to port 0xf4,
  as QEMU reports it — except for the built-in demo guest (no IMAGE), whose convention
  (``src/kvmpy/guests/demo.S``) is "value 0 means success": its status 1 maps to 0;
* 0 when the guest halts with interrupts disabled, or resets the machine (i8042), or the
  user ends the run (C-a x, the monitor's quit, SIGTERM or SIGHUP while the terminal is raw:
  QEMU exits 0 for them too);
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
from kvmpy.vmm import qemu_options
from kvmpy.vmm.arg_types import positive_int
from kvmpy.vmm.console import Console, Escapes
from kvmpy.vmm.devices.serial import stdout_sink
from kvmpy.vmm.loader import LoadError
from kvmpy.vmm.monitor import Monitor
from kvmpy.vmm.run_stats import RunStats
from kvmpy.vmm.terminal import raw_mode, stop_on_signals

DEMO = "demo"
#: --cpu models that mean "what this KVM offers", so fit --accel host too
HOST_CPU_MODELS = ("host", "max")
#: -device values that ask for the list of devices, as QEMU's do
DEVICE_HELP = ("help", "?")
#: -serial backends
SERIAL_BACKENDS = ("stdio", "none", "null")
#: --mmu values and the kernel module parameter ``ept`` (``npt`` on SVM) they set
MMU_MODES = {"tdp": True, "shadow": False}
#: guest RAM (MiB) without -m: kvmpy's for an IMAGE, QEMU's for -kernel (kvm-unit-tests'
#: kernels load at 4 MiB and need more than 16)
DEFAULT_MIB, QEMU_DEFAULT_MIB = 16, 128
#: exit statuses of the runs that a bound (--max-insns, --timeout) ended
BOUND_STATUS = {"insn-limit": 4, "timeout": 124}


RUN_EPILOG = f"""exit status:
  (v << 1) | 1  the guest wrote v to isa-debug-exit (port 0xf4)
  0             the guest halted with interrupts off, or reset the machine; or
                the user quit (C-a x, the monitor's quit, SIGTERM/SIGHUP on a terminal)
  1             the run failed (triple fault, internal error, failed entry...)
  2             bad options or image file
  {BOUND_STATUS['insn-limit']:<13} --max-insns ended the run
  {BOUND_STATUS['timeout']:<13} --timeout ended the run"""


class UsageError(Exception):
    """A bad option combination (exit status 2)."""


class ArgumentParser(argparse.ArgumentParser):
    """argparse with one-line errors: ``kvmpy run: error: ...`` (exit status 2), no usage.

    An option that takes a value takes the next word whatever it looks like, as QEMU's do
    (``-append -pause_filter_test``): such pairs become ``--option=value`` before parsing.
    """

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message}\n")

    def parse_known_args(self, args=None, namespace=None):
        if args is not None:
            args = self._join_values(list(args))
        return super().parse_known_args(args, namespace)

    def _join_values(self, args):
        takes_value = {}
        for action in self._actions:
            if action.option_strings and action.nargs is None:
                long = max(action.option_strings, key=len)
                for spelling in action.option_strings:
                    takes_value[spelling] = long if long.startswith("--") else "-" + long
        out, i = [], 0
        while i < len(args):
            if args[i] in takes_value and i + 1 < len(args):
                out.append(f"{takes_value[args[i]]}={args[i + 1]}")
                i += 2
            elif args[i] == "--":
                out.extend(args[i:])
                break
            else:
                out.append(args[i])
                i += 1
        return out


def positive_seconds(text):
    """--timeout: a finite number of seconds > 0 (not nan, inf or negative)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: not a number of seconds") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"{text}: must be positive and finite")
    return value


def memory_mib(text):
    """-m: guest RAM in MiB (or with QEMU's suffixes), at least 1 and small enough to end
    below the MMIO hole."""
    # local: `kvmpy --help` and option errors answer before the machine loads
    from kvmpy.vmm.machine import MIB, MMIO_HOLE
    value = _qemu_value(qemu_options.memory_size, text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value}: guest memory must be at least 1 MiB")
    if value * MIB > MMIO_HOLE:
        raise argparse.ArgumentTypeError(f"{value}: at most {MMIO_HOLE // MIB} MiB")
    return value


def _qemu_value(parse, text):
    """One QEMU option's value, its OptionError turned into argparse's one-line error."""
    try:
        return parse(text)
    except qemu_options.OptionError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _qemu_type(parse):
    def convert(text):
        return _qemu_value(parse, text)
    convert.__name__ = parse.__name__
    return convert


def _add_qemu_options(run):
    """QEMU's spellings, for kvm-unit-tests' x86/run and unittests.cfg and for people."""
    qemu = run.add_argument_group(
        "QEMU-compatible options", "spelled with one dash or two, as QEMU takes them")
    qemu.add_argument("--kernel", "-kernel", metavar="FILE",
                      help="the guest image (instead of IMAGE); a missing file is reported "
                           "as QEMU does: could not load kernel 'FILE'")
    qemu.add_argument("--initrd", "-initrd", metavar="FILE",
                      help="a bzImage's initial ramdisk, or a multiboot kernel's modules "
                           "(FILE[ ARGS][,FILE...])")
    qemu.add_argument("--append", "-append", metavar="CMDLINE", help="kernel command line")
    qemu.add_argument("--smp", "-smp", type=_qemu_type(qemu_options.smp),
                      metavar="N[,cpus=N][,sockets=N]",
                      help="vCPUs (one socket each; cores and threads of 1)")
    qemu.add_argument("--machine", "-machine", "-M", action="append", default=[],
                      type=_qemu_type(qemu_options.machine), metavar="PROPS",
                      help="accel=kvm (the KVM --accel picks), pit=off, kernel-irqchip=off")
    qemu.add_argument("--device", "-device", action="append", default=[],
                      type=_qemu_type(qemu_options.device), metavar="DRIVER[,PROPS]",
                      help="isa-debug-exit[,iobase=PORT][,iosize=1|2|4]; "
                           "-device help lists the devices")
    qemu.add_argument("--global", "-global", dest="globals", action="append", default=[],
                      type=_qemu_type(qemu_options.global_property), metavar="DRIVER.PROP=V",
                      help="kvm-pit.lost_tick_policy=discard|delay")
    qemu.add_argument("--drive", "-drive", action="append", default=[],
                      type=_qemu_type(qemu_options.drive),
                      metavar="file=FILE,if=virtio|none[,id=ID][,format=raw][,readonly=on]",
                      help="a virtio-blk disk on a raw image (virtio-mmio); with if=none, the "
                           "image of -device virtio-blk-device,drive=ID")
    qemu.add_argument("--serial", "-serial", choices=SERIAL_BACKENDS,
                      help="COM1 to stdout (stdio, the default) or nowhere (none, null)")
    qemu.add_argument("--rtc", "-rtc", type=_qemu_type(qemu_options.rtc),
                      metavar="[base=utc|localtime|DATE][,clock=host|rt|vm]",
                      help="the CMOS clock's start (default: the host's UTC date; DATE as "
                           "2006-06-17T16:01:21) and what advances it (host: the host's "
                           "wall clock, the default; vm: the VM's clock)")
    qemu.add_argument("--display", "-display", choices=("none",),
                      help="kvmpy has no display")
    qemu.add_argument("--nodefaults", "-nodefaults", action="store_true",
                      help="no default serial (COM1 goes nowhere unless -serial stdio)")
    qemu.add_argument("--no-reboot", "-no-reboot", action="store_true",
                      help="end the run when the guest resets (kvmpy always does)")
    qemu.add_argument("--enable-kvm", "-enable-kvm", action="store_true",
                      help="the same as -machine accel=kvm")


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
    run.add_argument("--cpu", "-cpu", type=_qemu_type(qemu_options.cpu),
                     metavar="MODEL[,+feat][,-feat]",
                     help="CPU model and feature edits, QEMU's spelling (Skylake-Server, EPYC, "
                          "qemu64, host, max...; +x2apic, -tsc-deadline, feat=on|off; "
                          "default: the vendor module's model); other models than host and "
                          "max only for --accel soft")
    run.add_argument("--clock", choices=CLOCK_MODES,
                     help="soft KVM's time base: virtual (from retired instructions, reproducible; "
                          "the default) or host (the host's monotonic clock)")
    run.add_argument("-m", "--memory", type=memory_mib, metavar="MIB",
                     help=f"guest RAM in MiB, or with a suffix K, M, G (default {DEFAULT_MIB}; "
                          f"{QEMU_DEFAULT_MIB}, QEMU's default, with -kernel)")
    run.add_argument("--format", choices=("auto", "flat", "elf", "bzimage", "pvh", "multiboot"),
                     default="auto",
                     help="image format (default: a bzImage by its boot protocol header, a "
                          "PVH kernel by its Xen ELF note, a multiboot kernel by its "
                          "multiboot header, ELF by its magic, else flat)")
    run.add_argument("--disk", action="append", default=[], metavar="FILE",
                     help="a virtio-blk disk (virtio-mmio) on the raw image FILE; the same "
                          "as -drive file=FILE,if=virtio,format=raw")
    run.add_argument("--trace", action="store_true",
                     help="print the soft kernel's call chains to stderr")
    run.add_argument("--max-insns", type=positive_int, metavar="N",
                     help="stop the soft processor after N guest instructions, counted "
                          "over the whole run (exit status %d)" % BOUND_STATUS["insn-limit"])
    run.add_argument("--stats", action="store_true",
                     help="print the boot's milestones and timing and the guest's "
                          "instruction rate (soft KVM) to stderr at the end")
    run.add_argument("--timeout", type=positive_seconds, metavar="S",
                     help="stop the guest after S seconds of wall time (exit status %d)"
                          % BOUND_STATUS["timeout"])
    _add_qemu_options(run)
    # local import keeps `kvmpy` light: the runner's modules load only for unit-tests
    from kvmpy.vmm.unit_tests.cli import add_parser as add_unit_tests_parser
    add_unit_tests_parser(sub)
    sub.add_parser("version", help="print kvmpy's version")
    exec_ = sub.add_parser("exec", help="run a C program with kvmpy as its /dev/kvm",
                           description="Run PROGRAM with kvmpy's LD_PRELOAD library: /dev/kvm "
                                       "in its process is kvmpy (e.g. kvmpy exec -- "
                                       "qemu-system-x86_64 -accel kvm -machine "
                                       "kernel-irqchip=off ...). KVMPY_TRACE=1 logs each "
                                       "failing ioctl.")
    exec_.add_argument("program", metavar="PROGRAM")
    exec_.add_argument("args", nargs=argparse.REMAINDER, metavar="ARGS")
    sub.add_parser("build-preload", help="build the LD_PRELOAD library of kvmpy exec",
                   description="Compile libkvmpy_preload.so for this interpreter (gcc and the "
                               "Python headers and shared library; kvmpy exec builds it too "
                               "when it is missing or out of date).")
    return parser


def cmd_exec(args):
    """exec PROGRAM with the library first in LD_PRELOAD (the environment's own after it)."""
    from kvmpy.preload import build     # local: only exec and build-preload need it
    try:
        library = build.ensure_built()
    except build.BuildError as e:
        print(f"kvmpy exec: {e}", file=sys.stderr)
        return 1
    env = dict(os.environ)
    env["LD_PRELOAD"] = " ".join(filter(None, [str(library), env.get("LD_PRELOAD")]))
    try:
        os.execvpe(args.program, [args.program] + args.args, env)
    except OSError as e:
        print(f"kvmpy exec: {args.program}: {e.strerror}", file=sys.stderr)
        return 127


def cmd_build_preload(args):
    from kvmpy.preload import build     # local: only exec and build-preload need it
    try:
        print(build.build())
    except build.BuildError as e:
        print(f"kvmpy build-preload: {e}", file=sys.stderr)
        return 1
    return 0


def _soft_params(args):
    """Module parameters for the soft kernel; errors if soft-only options meet --accel host."""
    host_model = args.cpu is None or args.cpu.model in HOST_CPU_MODELS
    soft_only = {"--mmu": args.mmu, "--vendor": args.vendor, "--trace": args.trace or None,
                 "--max-insns": args.max_insns, "--cpu": None if host_model else args.cpu,
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
        params["cpu"] = _cpu_model(args.cpu.model)
    if args.clock is not None:
        params["clock"] = args.clock
    return params


def _cpu_model(name):
    """``--cpu``'s model name, checked against kvmpy's models."""
    from kvmpy.hw import models     # local: option checking loads no more than it checks
    try:
        models.lookup(name)
    except KeyError as e:
        raise UsageError(f"--cpu {name}: {e.args[0]}") from None
    return name


MACHINE_PROPS = "accel=kvm, pit=on|off and kernel-irqchip=on|off"


def _machine_options(args):
    """The Machine's keyword arguments for the QEMU options given (UsageError for what no
    kvmpy machine has: those a later machine may have are the machine's to refuse)."""
    pit = None
    irqchip = None                      # the machine's default
    for props in args.machine:
        for name, value in props.items():
            if name == "accel":
                # QEMU takes the first accelerator of the list that works: kvm must be it
                first = value.split(":")[0]
                if first != "kvm":
                    raise UsageError(f"-machine accel={value}: kvmpy is a KVM; it has "
                                     f"no {first} (--accel soft|host picks which KVM)")
            elif name == "type":
                raise UsageError(f"-machine {value}: kvmpy has one machine type; "
                                 f"give no type ({MACHINE_PROPS} are supported)")
            elif name == "pit":
                pit = _qemu_value_or_usage(qemu_options.on_off, value, "-machine pit")
            elif name == "kernel-irqchip":
                if value == "split":
                    raise UsageError("-machine kernel-irqchip=split: not supported (on|off are)")
                irqchip = _qemu_value_or_usage(qemu_options.on_off, value, "-machine kernel-irqchip")
            else:
                raise UsageError(f"-machine {name}={value}: not supported ({MACHINE_PROPS} are)")
    pit_policy = None
    for driver, prop, value in args.globals:
        if (driver, prop) != ("kvm-pit", "lost_tick_policy"):
            raise UsageError(f"-global {driver}.{prop}={value}: not supported "
                             f"(kvm-pit.lost_tick_policy is)")
        pit_policy = value
    return dict(smp=args.smp.cpus if args.smp else 1, initrd=args.initrd, cmdline=args.append,
                cpu_features=args.cpu.features if args.cpu else None, devices=args.device,
                disks=[(d.file, d.readonly) for d in args.drive if d.interface == "virtio"]
                + [(f, False) for f in args.disk],
                drives={d.id: (d.file, d.readonly) for d in args.drive if d.id},
                pit=pit, pit_policy=pit_policy, irqchip=irqchip, serial_sink=_serial_sink(args),
                rtc=args.rtc)


def _qemu_value_or_usage(parse, text, what):
    try:
        return parse(text, what)
    except qemu_options.OptionError as e:
        raise UsageError(str(e)) from None


def _serial_sink(args):
    """COM1's output: stdout, unless -serial none/null, or -nodefaults without -serial."""
    backend = args.serial or ("none" if args.nodefaults else "stdio")
    return stdout_sink if backend == "stdio" else _discard


def _input_targets(args, machine):
    """Who hears what is typed: COM1 when it is on stdio, and each virtio-console (its
    output is on stdout too), so the guest's shell gets it on whichever of ttyS0 and hvc0
    Linux's console= chose; a line the guest does not read keeps it unread."""
    targets = []
    if (args.serial or ("none" if args.nodefaults else "stdio")) == "stdio":
        targets.append(machine.serial_input)
    if machine.has_virtio_console:
        targets.append(machine.console_input)
    return targets


def _console(args, machine):
    """The console's input from stdin while the guest runs, when a device takes it: a
    terminal in raw mode, with the C-a keys and the monitor; anything else (a pipe, a
    file) unchanged."""
    targets = _input_targets(args, machine)
    if not targets:
        return contextlib.nullcontext()
    try:
        fd = sys.stdin.fileno()
    except (AttributeError, ValueError, OSError):     # no stdin, or one with no descriptor
        return contextlib.nullcontext()

    def deliver(data):
        for target in targets:
            target(data)

    if not os.isatty(fd):
        return Console(fd, deliver)
    return _terminal_console(fd, machine, deliver)


@contextlib.contextmanager
def _terminal_console(fd, machine, deliver):
    # local: RunResult's module is the machine's, which `kvmpy --help` does not load
    from kvmpy.vmm.machine import RunResult

    def quit_():
        machine.request_stop(RunResult("quit", "terminated (C-a x or the monitor's quit)"))

    def on_signal(signum):
        machine.request_stop(RunResult("signal", f"terminating on signal {signum}"))

    monitor = Monitor(machine, stdout_sink, quit_)
    escapes = Escapes(deliver, monitor, quit_, stdout_sink)
    with stop_on_signals(on_signal), raw_mode(fd), Console(fd, escapes.feed):
        yield


def _discard(data):
    """A serial sink for -serial none: the bytes go nowhere."""


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
    if result.reason in ("reset", "poweroff", "quit", "signal"):
        print(f"kvmpy: {result.message}", file=sys.stderr)
        return 0
    if result.reason in BOUND_STATUS:
        print(f"kvmpy: {result.message}", file=sys.stderr)
        return BOUND_STATUS[result.reason]
    print(f"kvmpy: {result.reason}: {result.message}", file=sys.stderr)
    return 1


def cmd_run(args):
    # local: `kvmpy version` and bad options answer before the machine loads
    from kvmpy.vmm.cpu_setup import FeatureUnsupported
    from kvmpy.vmm.devices.virtio.blk import DiskError
    from kvmpy.vmm.machine import DEVICE_DRIVERS, Machine, Unsupported

    if any(driver in DEVICE_HELP for driver, _ in args.device):
        for driver in DEVICE_DRIVERS:        # QEMU's format, which scripts grep
            print(f'name "{driver}"')
        return 0
    params = _soft_params(args)
    if args.kernel is not None and args.image is not None:
        raise UsageError(f"both IMAGE ({args.image}) and -kernel ({args.kernel}) given")
    demo = args.image is None and args.kernel is None
    options = _machine_options(args)
    stats = None
    if args.stats:
        stats = RunStats()
        options["serial_sink"] = stats.wrap_sink(options["serial_sink"])
    if demo:
        from kvmpy import guests     # local: the demo's image is read only when it runs
        try:
            image = guests.image_path(DEMO)
        except FileNotFoundError as e:
            raise LoadError(str(e)) from None
    else:
        image = args.image or args.kernel
    with _tracing(args.trace):
        try:
            memory = args.memory
            if memory is None:
                memory = QEMU_DEFAULT_MIB if args.kernel is not None else DEFAULT_MIB
            machine = Machine(image, accel=args.accel, memory_mib=memory,
                              fmt=args.format, params=params, max_insns=args.max_insns,
                              **options)
        except LoadError as e:
            if args.kernel is None:
                raise
            reason = str(e)
            if reason.startswith(f"{args.kernel}: "):
                reason = reason[len(args.kernel) + 2:]
            raise LoadError(f"could not load kernel '{args.kernel}': {reason}") from None
        except FeatureUnsupported as e:
            raise UsageError(f"-cpu {args.cpu.text}: {e}") from None
        except (Unsupported, qemu_options.OptionError) as e:
            raise UsageError(str(e)) from None
        except DiskError as e:
            raise UsageError(f"could not open disk image {e}") from None
        except OSError as e:
            print(f"kvmpy: cannot create the VM ({args.accel}): {e}", file=sys.stderr)
            return 1
        with machine:
            if stats:
                stats.attach(machine)
            with _console(args, machine):
                if stats:
                    stats.began()
                result = machine.run(timeout=args.timeout)
            if stats:
                print(stats.report(result), file=sys.stderr)
    return _exit_status(result, demo)


def main(argv=None):
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if args.command == "unit-tests":
        args.argv = list(sys.argv[1:] if argv is None else argv)
        # test names may follow the options: argparse leaves them over
        args.tests += [word for word in extra if not word.startswith("-")]
        extra = [word for word in extra if word.startswith("-")]
    if extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        if args.command == "run":
            return cmd_run(args)
        if args.command == "unit-tests":
            # local: the runner's modules load only for unit-tests
            from kvmpy.vmm.unit_tests import RunnerError
            from kvmpy.vmm.unit_tests.cli import cmd_unit_tests
            try:
                return cmd_unit_tests(args)
            except RunnerError as e:
                parser.exit(2, f"kvmpy unit-tests: error: {e}\n")
        if args.command == "exec":
            return cmd_exec(args)
        if args.command == "build-preload":
            return cmd_build_preload(args)
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
