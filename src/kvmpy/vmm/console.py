"""The host side of COM1: the bytes a user types (or a pipe holds) reach the guest's UART.

A reader thread waits on the input file descriptor (stdin) and on a wake-up pipe, so that
:meth:`Console.stop` ends it at once, and hands what it reads to ``deliver`` (the machine's
:meth:`~kvmpy.vmm.machine.Machine.serial_input`, which raises the UART's receive interrupt).
When the input is a terminal, what it reads goes through :class:`Escapes` first -- QEMU's
``Ctrl-A`` keys: ``x`` quits, ``c`` switches between the guest's console and the monitor,
``Ctrl-A`` sends a Ctrl-A, ``h`` lists them.  Input that is not a terminal (a test's pipe, a
file) goes to the guest unchanged, every byte of it; at its end (EOF) the reader simply
stops, and the guest runs on, as with QEMU's ``-serial stdio``.
"""

from __future__ import annotations

import os
import select
import threading

CTRL_A = 0x01
READ_SIZE = 4096

HELP = (b"\nC-a h    print this help\n"
        b"C-a x    exit kvmpy\n"
        b"C-a c    switch between console and monitor\n"
        b"C-a C-a  sends C-a\n")


class Escapes:
    """QEMU's mux keys on a terminal's byte stream: bytes for the focused side -- the guest
    (``deliver``) or the ``monitor`` (its ``feed``) -- and the ``Ctrl-A`` commands.  An
    unknown key after Ctrl-A is dropped with it, as QEMU drops it."""

    def __init__(self, deliver, monitor, on_quit, write):
        self.deliver = deliver
        self.monitor = monitor
        self.on_quit = on_quit
        self.write = write
        self.in_monitor = False
        self._escape = False

    def feed(self, data):
        chunk = bytearray()
        for byte in data:
            if self._escape:
                self._escape = False
                if byte == CTRL_A:
                    chunk.append(byte)
                    continue
                self._flush(chunk)
                self._command(byte)
            elif byte == CTRL_A:
                self._escape = True
            else:
                chunk.append(byte)
        self._flush(chunk)

    def _flush(self, chunk):
        if chunk:
            if self.in_monitor:
                self.monitor.feed(bytes(chunk))
            else:
                self.deliver(bytes(chunk))
            chunk.clear()

    def _command(self, key):
        if key == ord("x"):
            self.on_quit()
        elif key == ord("c"):
            self.in_monitor = not self.in_monitor
            if self.in_monitor:
                self.monitor.enter()
            else:
                self.write(b"\n")
        elif key in (ord("h"), ord("?")):
            self.write(HELP)


class Console:
    """The reader thread of one input descriptor, delivering to ``sink(bytes)``."""

    def __init__(self, fd, sink):
        self.fd = fd
        self.sink = sink
        self._wake_r, self._wake_w = os.pipe()
        self._thread = threading.Thread(target=self._loop, name="console", daemon=True)

    def start(self):
        self._thread.start()

    def stop(self):
        os.write(self._wake_w, b"x")
        self._thread.join()
        for fd in (self._wake_r, self._wake_w):
            os.close(fd)

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.stop()

    def _loop(self):
        while True:
            try:
                ready, _, _ = select.select([self.fd, self._wake_r], [], [])
            except InterruptedError:
                continue
            except OSError:
                return              # not a descriptor (stdin closed): no input
            if self._wake_r in ready:
                return
            try:
                data = os.read(self.fd, READ_SIZE)
            except InterruptedError:
                continue
            except OSError:
                return              # the descriptor went away: no more input
            if not data:
                return              # EOF: the guest runs on without input
            self.sink(data)
