"""A kvm-unit-tests runner: the x86 tests of a build tree the user gives, run through
``kvmpy run``'s QEMU-compatible command line (or through a real QEMU, to compare), and
judged by the rules of the suite's own ``run_tests.sh`` and ``scripts/runtime.bash``.

* :mod:`.config` reads ``x86/unittests.cfg``;
* :mod:`.rules` decides SKIP before a run and PASS/FAIL/SKIP from its exit status;
* :mod:`.runner` builds the command line as ``x86/run`` does and runs the tests, in
  parallel, with progress;
* :mod:`.table` writes the results table (``docs/kvm-unit-tests.md``);
* :mod:`.cli` is ``kvmpy unit-tests``.

None of kvm-unit-tests is in kvmpy: the user builds the suite and points the runner at it.
"""


class RunnerError(Exception):
    """A tree, option or VMM the runner cannot use; the message says which (exit 2)."""
