"""A one-shot timer for a device model, on a thread of its own.

Devices that act on their own (the RTC's periodic, alarm and update interrupts) need to be
called back at a time, not only when the guest touches them.  ``arm(delay)`` (from the
device, already under the machine's device lock) sets when; the thread then calls
``callback()`` holding ``lock``, as the vCPUs' exits do, so the device sees one caller at a
time.  The thread starts at the first ``arm`` and ends with :meth:`close`.
"""

from __future__ import annotations

import threading
import time

#: the shortest delay: an event due sooner is served with the next one (coalesced),
#: rather than have the thread spin
MIN_DELAY_S = 0.001


class DeviceTimer:
    def __init__(self, callback, lock, name="device-timer"):
        self.callback = callback
        self.lock = lock
        self.name = name
        self.cond = threading.Condition()
        self.deadline = None
        self.closed = False
        self._thread = None

    def arm(self, delay_s):
        with self.cond:
            self.deadline = time.monotonic() + max(delay_s, MIN_DELAY_S)
            if self._thread is None and not self.closed:
                self._thread = threading.Thread(target=self._loop, name=self.name, daemon=True)
                self._thread.start()
            self.cond.notify()

    def disarm(self):
        with self.cond:
            self.deadline = None

    def close(self):
        with self.cond:
            self.closed = True
            self.cond.notify()
        if self._thread is not None:
            self._thread.join()

    def _loop(self):
        while True:
            with self.cond:
                while not self.closed and (self.deadline is None
                                           or time.monotonic() < self.deadline):
                    timeout = None if self.deadline is None else self.deadline - time.monotonic()
                    self.cond.wait(timeout)
                if self.closed:
                    return
                self.deadline = None
            with self.lock:
                self.callback()
