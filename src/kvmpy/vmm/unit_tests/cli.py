"""``kvmpy unit-tests BUILD_DIR [-j N] [-g GROUP] [--qemu PATH] [TEST...]``."""

import os
import shlex

from kvmpy.vmm.arg_types import positive_int


def add_parser(sub):
    """The subcommand's options, on the ``kvmpy`` parser's subparsers."""
    p = sub.add_parser(
        "unit-tests", help="run a kvm-unit-tests x86 build tree",
        description="Run the tests of a kvm-unit-tests x86 build tree (./configure && make "
                    "done) through kvmpy run's QEMU-compatible command line, or through a "
                    "QEMU binary with --qemu, judged PASS/FAIL/SKIP by the rules of the "
                    "suite's own run_tests.sh.")
    p.add_argument("build_dir", metavar="BUILD_DIR", help="the kvm-unit-tests tree")
    p.add_argument("tests", nargs="*", metavar="TEST", help="only these tests")
    p.add_argument("-j", "--jobs", type=positive_int, default=1, metavar="N",
                   help="run N tests at once (default 1)")
    p.add_argument("-g", "--group", default="", help="only the tests of this group "
                   "(nodefault tests of it included, as run_tests.sh -g does)")
    p.add_argument("-a", "--all", action="store_true",
                   help="also the nodefault tests (run_tests.sh -a)")
    p.add_argument("--qemu", metavar="PATH", help="run on this QEMU binary instead of kvmpy")
    p.add_argument("--accel", choices=("kvm", "tcg"),
                   help="QEMU's accelerator with --qemu (default: kvm if /dev/kvm exists)")
    p.add_argument("--kvmpy-args", default="", metavar="ARGS",
                   help="kvmpy run's own options for every test, e.g. '--vendor svm "
                        "--mmu shadow' (not with --qemu)")
    p.add_argument("--timeout", type=float, metavar="S",
                   help="every test's timeout in seconds, instead of unittests.cfg's "
                        "(the suite's TIMEOUT)")
    p.add_argument("--log-dir", metavar="DIR",
                   help="write each test's output to DIR/TEST.log")
    p.add_argument("--table", metavar="FILE.json",
                   help="record the results in this data file and rewrite FILE.md")
    p.add_argument("--readme", metavar="FILE",
                   help="with --table: also rewrite the copy of the table in FILE (between "
                        "its kvm-unit-tests table marker lines)")
    p.add_argument("--record", metavar="COLUMN",
                   help="the table column to replace (default: kvmpy, or qemu-ACCEL)")


def cmd_unit_tests(args):
    """Run the tree's tests; exit status 0 if none failed, 1 if one did, 2 for errors."""
    # local: `kvmpy`'s parser imports this module for add_parser; the runner loads only here
    from kvmpy.vmm.unit_tests import RunnerError, runner, table
    if not os.path.isfile(os.path.join(args.build_dir, "x86", "unittests.cfg")):
        raise RunnerError(f"{args.build_dir}: no x86/unittests.cfg (a kvm-unit-tests tree "
                         f"configured for x86 and built?)")
    if args.readme and not args.table:
        raise RunnerError("--readme: only with --table")
    if args.qemu:
        if args.kvmpy_args:
            raise RunnerError("--kvmpy-args: not with --qemu")
        accel = args.accel or ("kvm" if os.path.exists("/dev/kvm") else "tcg")
        target = runner.qemu_target(args.qemu, accel)
    else:
        if args.accel:
            raise RunnerError("--accel: only with --qemu (kvmpy is a KVM: see --kvmpy-args)")
        target = runner.kvmpy_target(shlex.split(args.kvmpy_args))
    run = runner.Runner(args.build_dir, target, jobs=args.jobs, group=args.group,
                        only=args.tests, run_all=args.all, timeout=args.timeout,
                        log_dir=args.log_dir)
    results = run.run()
    if args.table:
        column = args.record or ("kvmpy" if not args.qemu else f"qemu-{target.accel}")
        about = {"target": target.describe(),
                 "version": target.env.get("QEMU_VERSION_STRING", _kvmpy_version()),
                 "kvm-unit-tests": table.suite_commit(args.build_dir),
                 "machine": table.machine_description(),
                 "command": "kvmpy " + " ".join(shlex.quote(a) for a in args.argv)}
        table.record(args.table, column, results, about, args.readme)
    return 1 if any(r.status == "FAIL" for r in results) else 0


def _kvmpy_version():
    # local: only a recorded table needs the package metadata
    from importlib.metadata import PackageNotFoundError, version
    try:
        return f"kvmpy {version('kvmpy')}"
    except PackageNotFoundError:
        return "kvmpy (version unknown)"
