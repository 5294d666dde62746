"""The user's terminal while a guest owns it: raw mode, and the old mode back afterwards.

With ``-serial stdio`` on a terminal the guest's serial console is the terminal, as with
QEMU: every key goes to the guest as typed (no line editing, no echo, Ctrl-C and Ctrl-Z are
the guest's to interpret), so the line discipline must be out of the way -- the input side
of ``cfmakeraw``.  Output processing (OPOST, so a bare "\\n" still starts a new line) is kept,
as QEMU keeps it.  The saved attributes are restored however the run ends: normally, by an
exception, or by SIGTERM/SIGHUP, which end the run (:func:`stop_on_signals`) instead of
killing the process with the terminal left raw.
"""

from __future__ import annotations

import contextlib
import signal
import termios

#: the signals that end the run cleanly while the terminal is raw
ENDING_SIGNALS = (signal.SIGTERM, signal.SIGHUP)


def raw_attributes(attrs):
    """``attrs`` (tcgetattr's list) with the input side made raw: bytes as they come."""
    iflag, oflag, cflag, lflag, ispeed, ospeed, cc = attrs
    iflag &= ~(termios.IGNBRK | termios.BRKINT | termios.PARMRK | termios.ISTRIP
               | termios.INLCR | termios.IGNCR | termios.ICRNL | termios.IXON)
    lflag &= ~(termios.ECHO | termios.ECHONL | termios.ICANON | termios.ISIG | termios.IEXTEN)
    cflag = (cflag & ~(termios.CSIZE | termios.PARENB)) | termios.CS8
    cc = list(cc)
    cc[termios.VMIN] = 1
    cc[termios.VTIME] = 0
    return [iflag, oflag, cflag, lflag, ispeed, ospeed, cc]


@contextlib.contextmanager
def raw_mode(fd):
    """The terminal ``fd`` in raw mode for the time of the block."""
    saved = termios.tcgetattr(fd)
    termios.tcsetattr(fd, termios.TCSANOW, raw_attributes(saved))
    try:
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSANOW, saved)


@contextlib.contextmanager
def stop_on_signals(on_signal):
    """``on_signal(signum)`` for SIGTERM and SIGHUP during the block (main thread only)."""
    previous = {s: signal.signal(s, lambda signum, frame: on_signal(signum))
                for s in ENDING_SIGNALS}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
