"""virtio-console (virtio 1.2, 5.3) with one port and no features: Linux's hvc0.

Two queues: receiveq0 (0), where the driver leaves buffers for input, and transmitq0 (1),
whose buffers hold output.  Output goes to the machine's console sink (stdout) as it
comes; this console has no input (stdin is not wired), so the receive buffers wait, as on
a terminal nobody types on.  Without VIRTIO_CONSOLE_F_SIZE, F_MULTIPORT or F_EMERG_WRITE
the configuration space has nothing valid: it is empty.
"""

VIRTIO_ID_CONSOLE = 3
QUEUE_SIZE = 64
RECEIVEQ, TRANSMITQ = 0, 1


class VirtioConsole:
    """The device; ``sink(bytes)`` takes its output."""

    device_id = VIRTIO_ID_CONSOLE
    queue_sizes = (QUEUE_SIZE, QUEUE_SIZE)
    features = 0
    config = b""

    def __init__(self, sink):
        self.sink = sink

    def reset(self):
        pass                            # output is written as it comes; nothing is held

    def close(self):
        pass

    def notify(self, index, queue, memory):
        if index != TRANSMITQ:
            return False                # receive buffers wait for input that never comes
        return queue.serve(memory, lambda chain: self._transmit(chain, memory))

    def _transmit(self, chain, memory):
        self.sink(chain.read(memory))
        return 0                        # nothing written into an output buffer
