"""``kvmpy run`` on a pseudo-terminal, as a person runs it: stdin and stdout are the pty's
slave side, so kvmpy sees a terminal (raw mode, the C-a keys, the monitor); the test types
on the master side and reads what the terminal would show.  stderr stays a pipe, for the
exit message."""

from __future__ import annotations

import os
import select
import subprocess
import termios
import time

from tests.support.cli import kvmpy_argv


class PtyRun:
    def __init__(self, *argv):
        self.master, self.slave = os.openpty()
        self.saved = termios.tcgetattr(self.slave)
        self.proc = subprocess.Popen(kvmpy_argv(*argv), stdin=self.slave, stdout=self.slave,
                                     stderr=subprocess.PIPE, close_fds=True)
        self.output = b""

    def read_until(self, token, timeout=60, since=0):
        """Everything the terminal showed so far, once it shows ``token`` (bytes) after
        offset ``since`` of it; an AssertionError naming what came if it does not within
        ``timeout`` s."""
        end = time.monotonic() + timeout
        while token not in self.output[since:]:
            left = end - time.monotonic()
            ready, _, _ = select.select([self.master], [], [], max(left, 0))
            if not ready:
                raise AssertionError(f"no {token!r} in {self.output!r}")
            self.output += os.read(self.master, 4096)
        return self.output

    def type(self, data):
        os.write(self.master, data)

    def attrs(self):
        """The terminal's attributes now (tcgetattr's list)."""
        return termios.tcgetattr(self.slave)

    def wait(self, timeout=60):
        """(exit status, stderr)."""
        err = self.proc.communicate(timeout=timeout)[1]
        return self.proc.returncode, err.decode()

    def close(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        for fd in (self.master, self.slave):
            os.close(fd)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
