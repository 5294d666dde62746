"""virtio-rng, the entropy device (virtio 1.2, 5.4): every buffer the driver offers comes
back filled with the host's randomness (os.urandom), as QEMU's default rng-random does.

One request queue, no features, no configuration space.
"""

import os

VIRTIO_ID_ENTROPY = 4
QUEUE_SIZE = 64
#: the most one buffer gets (a driver's length is not an allocation the VMM must make)
MAX_BYTES = 1 << 16


class VirtioRng:
    """The device; its transport is a :class:`~.mmio.VirtioMmio`."""

    device_id = VIRTIO_ID_ENTROPY
    queue_sizes = (QUEUE_SIZE,)
    features = 0
    config = b""

    def reset(self):
        pass                            # nothing outlives a notify

    def close(self):
        pass                            # nothing held

    def notify(self, index, queue, memory):
        return queue.serve(memory, lambda chain: chain.write(
            memory, os.urandom(min(chain.writable_size, MAX_BYTES))))
