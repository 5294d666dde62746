"""virtio devices behind the virtio-mmio transport, as Firecracker and QEMU's microvm give
them to a Linux guest that boots without PCI.

- :mod:`.mmio`: the transport (virtio 1.x, 4.2.2: the "modern" register layout, version
  2), one 4 KiB window and one interrupt line per device;
- :mod:`.queue`: the split virtqueue (2.7) the driver and device share in guest memory;
- :mod:`.blk`, :mod:`.rng`, :mod:`.console`: the devices (5.2, 5.4, 5.3).

Facts come from the virtio specification (OASIS virtio v1.2); the code is kvmpy's.
"""
