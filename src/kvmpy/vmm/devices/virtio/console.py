"""virtio-console (virtio 1.2, 5.3) with one port and no features: Linux's hvc0.

Two queues: receiveq0 (0), where the driver leaves buffers for input, and transmitq0 (1),
whose buffers hold output.  Output goes to the machine's console sink (stdout) as it
comes.  Input (what is typed on the terminal: :meth:`enqueue_input`) waits in the device
until the driver has receive buffers; each takes as much as fits and comes back with the
byte count, so Linux's hvc0 reads exactly what was typed, in order.  Bytes typed before
the driver is ready (or while it resets) wait for it, as they do in the 8250's FIFO.
Without VIRTIO_CONSOLE_F_SIZE, F_MULTIPORT or F_EMERG_WRITE the configuration space has
nothing valid: it is empty.
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
        self.input = bytearray()        # typed, and not yet in a receive buffer

    def reset(self):
        pass                            # output is written as it comes; input waits

    def close(self):
        pass

    def enqueue_input(self, data):
        """Bytes typed for the guest; the transport then processes :data:`RECEIVEQ`."""
        self.input.extend(data)

    def notify(self, index, queue, memory):
        if index == TRANSMITQ:
            return queue.serve(memory, lambda chain: self._transmit(chain, memory))
        return self._receive(queue, memory)

    def _receive(self, queue, memory):
        """Fill the driver's receive buffers with waiting input; True when any was used."""
        used = False
        while self.input:
            chain = queue.pop(memory)
            if chain is None:
                break                   # the rest waits for the next buffers
            written = chain.write(memory, bytes(self.input))
            queue.push(memory, chain, written)
            del self.input[:written]
            used = True
        return used

    def _transmit(self, chain, memory):
        self.sink(chain.read(memory))
        return 0                        # nothing written into an output buffer
