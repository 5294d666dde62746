"""isa-debug-exit: the guest ends the run with a status of its choice.

Like QEMU's ``-device isa-debug-exit,iobase=0xf4``: writing ``v`` ends the VM with exit
status ``(v << 1) | 1``, so a guest can report success or failure to a test harness
(the status is always odd, so it can never be mistaken for a clean 0).
"""

DEBUG_EXIT_PORT = 0xF4


class DebugExit:
    """One write-only port; ``on_exit(status)`` is called with the exit status."""

    def __init__(self, on_exit=None):
        self.on_exit = on_exit
        self.status = None

    def read(self, offset, size):
        return (1 << (8 * size)) - 1

    def write(self, offset, size, value):
        self.status = ((value & ((1 << (8 * size)) - 1)) << 1) | 1
        if self.on_exit:
            self.on_exit(self.status)
