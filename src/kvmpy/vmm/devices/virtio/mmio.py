"""The virtio-mmio transport (virtio 1.2, 4.2.2), version 2: the "modern" register layout.

One 4 KiB window per device.  The registers below 0x100 are 32 bits wide and read or
written whole (another access reads 0 and is dropped, as the spec lets a device treat it);
the device's configuration space follows at 0x100, little-endian, any width.  The driver:
resets (Status 0), sets ACKNOWLEDGE and DRIVER, reads the device features 32 bits at a
time (DeviceFeaturesSel), writes those it takes (DriverFeatures), sets FEATURES_OK (kept
only when it took VIRTIO_F_VERSION_1 and nothing the device does not offer: there is no
legacy interface here), sets up each queue (QueueSel, QueueNum up to QueueNumMax, the
three ring addresses, QueueReady) and sets DRIVER_OK.  It then writes a queue's index to
QueueNotify; the device processes that queue there, on the vCPU's MMIO exit.

Interrupts: InterruptStatus bit 0 (used buffers) and bit 1 (configuration change) drive
the device's line *level*, high while a bit is set, until the driver acknowledges them
(InterruptACK).  The lines are ISA IRQs the ACPI MADT declares level-triggered, active
high, and Linux's virtio_mmio requests them shared, which a level line allows.
"""

from kvmpy.api.memory import GuestMemoryError
from kvmpy.vmm.devices.virtio.queue import QueueError, Virtqueue

MAGIC_VALUE = 0x74726976                # "virt"
VERSION = 2
VENDOR_ID = 0x504D564B                  # "KVMP"
WINDOW_SIZE = 0x1000
VIRTIO_F_VERSION_1 = 1 << 32

# registers (offsets in the window)
MAGIC, VERSION_REG, DEVICE_ID, VENDOR = 0x000, 0x004, 0x008, 0x00C
DEVICE_FEATURES, DEVICE_FEATURES_SEL = 0x010, 0x014
DRIVER_FEATURES, DRIVER_FEATURES_SEL = 0x020, 0x024
QUEUE_SEL, QUEUE_NUM_MAX, QUEUE_NUM, QUEUE_READY = 0x030, 0x034, 0x038, 0x044
QUEUE_NOTIFY = 0x050
INTERRUPT_STATUS, INTERRUPT_ACK = 0x060, 0x064
STATUS = 0x070
QUEUE_DESC_LOW, QUEUE_DESC_HIGH = 0x080, 0x084
QUEUE_DRIVER_LOW, QUEUE_DRIVER_HIGH = 0x090, 0x094
QUEUE_DEVICE_LOW, QUEUE_DEVICE_HIGH = 0x0A0, 0x0A4
SHM_SEL, SHM_LEN_LOW, SHM_LEN_HIGH, SHM_BASE_LOW, SHM_BASE_HIGH = 0x0AC, 0x0B0, 0x0B4, 0x0B8, 0x0BC
CONFIG_GENERATION = 0x0FC
CONFIG = 0x100

# device status bits (2.1)
ACKNOWLEDGE, DRIVER, DRIVER_OK, FEATURES_OK = 1, 2, 4, 8
DEVICE_NEEDS_RESET, FAILED = 0x40, 0x80
INT_VRING, INT_CONFIG = 1 << 0, 1 << 1
#: the queue address registers: (attribute of the queue, high half?)
QUEUE_ADDRESSES = {QUEUE_DESC_LOW: ("desc", False), QUEUE_DESC_HIGH: ("desc", True),
                   QUEUE_DRIVER_LOW: ("avail", False), QUEUE_DRIVER_HIGH: ("avail", True),
                   QUEUE_DEVICE_LOW: ("used", False), QUEUE_DEVICE_HIGH: ("used", True)}
NO_SHARED_MEMORY = 0xFFFFFFFF           # SHMLen/SHMBase of a region that does not exist


class VirtioMmio:
    """The transport of one device (a :mod:`.blk`, :mod:`.rng` or :mod:`.console` one).

    The device gives ``device_id``, ``features`` (without VIRTIO_F_VERSION_1, which the
    transport adds), ``queue_sizes`` (the QueueNumMax of each queue), ``config`` (its
    configuration space, bytes), ``notify(index, queue, memory)`` (process a queue;
    True when it used buffers), ``reset()`` and ``close()`` (the machine's end).
    ``set_irq(line, level)`` drives the line.
    """

    def __init__(self, device, memory, irq, set_irq):
        self.device, self.memory, self.irq, self.set_irq = device, memory, irq, set_irq
        self.device_features = device.features | VIRTIO_F_VERSION_1
        self.queues = [Virtqueue(size) for size in device.queue_sizes]
        self._level = False
        self.reset()

    def reset(self):
        """Status 0: everything the driver set up is forgotten."""
        self.status = 0
        self.features_sel = self.driver_features_sel = 0
        self.driver_features = 0
        self.queue_sel = 0
        self.interrupt_status = 0
        for queue in self.queues:
            queue.reset()
        self.device.reset()
        self._update_line()

    @property
    def queue(self):
        return self.queues[self.queue_sel] if self.queue_sel < len(self.queues) else None

    def _update_line(self):
        level = bool(self.interrupt_status)
        if level != self._level:
            self._level = level
            self.set_irq(self.irq, level)

    def read(self, offset, size):
        if offset >= CONFIG:
            config = bytes(self.device.config)
            return int.from_bytes(config[offset - CONFIG:offset - CONFIG + size].ljust(size, b"\0"),
                                  "little")
        if size != 4 or offset % 4:
            return 0
        queue = self.queue
        values = {
            MAGIC: MAGIC_VALUE, VERSION_REG: VERSION, DEVICE_ID: self.device.device_id,
            VENDOR: VENDOR_ID, STATUS: self.status, INTERRUPT_STATUS: self.interrupt_status,
            DEVICE_FEATURES: (self.device_features >> (32 * self.features_sel)
                              if self.features_sel < 2 else 0) & 0xFFFFFFFF,
            QUEUE_NUM_MAX: queue.max_size if queue else 0,
            QUEUE_READY: int(queue.ready) if queue else 0,
            SHM_LEN_LOW: NO_SHARED_MEMORY, SHM_LEN_HIGH: NO_SHARED_MEMORY,
            SHM_BASE_LOW: NO_SHARED_MEMORY, SHM_BASE_HIGH: NO_SHARED_MEMORY,
            CONFIG_GENERATION: 0,
        }
        return values.get(offset, 0)

    def write(self, offset, size, value):
        if offset >= CONFIG or size != 4 or offset % 4:
            return                      # the devices' configuration spaces are read-only
        queue = self.queue
        if offset == DEVICE_FEATURES_SEL:
            self.features_sel = value
        elif offset == DRIVER_FEATURES_SEL:
            self.driver_features_sel = value
        elif offset == DRIVER_FEATURES and self.driver_features_sel < 2:
            shift = 32 * self.driver_features_sel
            self.driver_features = (self.driver_features & ~(0xFFFFFFFF << shift)) | value << shift
        elif offset == QUEUE_SEL:
            self.queue_sel = value
        elif offset == QUEUE_NUM and queue and not queue.ready and 0 < value <= queue.max_size:
            queue.size = value
        elif offset == QUEUE_READY and queue:
            queue.ready = bool(value & 1)
        elif offset in QUEUE_ADDRESSES and queue and not queue.ready:
            name, high = QUEUE_ADDRESSES[offset]
            old = getattr(queue, name)
            setattr(queue, name, (old & 0xFFFFFFFF) | value << 32 if high
                    else (old & ~0xFFFFFFFF) | value)
        elif offset == QUEUE_NOTIFY:
            self.process(value)
        elif offset == INTERRUPT_ACK:
            self.interrupt_status &= ~value
            self._update_line()
        elif offset == STATUS:
            self._set_status(value)

    def _set_status(self, value):
        if value == 0:
            self.reset()
            return
        if value & FEATURES_OK and not self.status & FEATURES_OK:
            wanted = self.driver_features
            if not wanted & VIRTIO_F_VERSION_1 or wanted & ~self.device_features:
                value &= ~FEATURES_OK   # refused: the driver reads the bit back clear
        self.status = value | (self.status & DEVICE_NEEDS_RESET)

    def process(self, index):
        """Let the device serve queue ``index``: on the driver's QueueNotify, or when the
        device has something for it (a virtio-console's input); the interrupt follows if
        buffers were used."""
        if not self.status & DRIVER_OK or self.status & DEVICE_NEEDS_RESET:
            return
        if index >= len(self.queues) or not self.queues[index].ready:
            return
        queue = self.queues[index]
        try:
            if self.device.notify(index, queue, self.memory) and queue.wants_interrupt(self.memory):
                self.interrupt_status |= INT_VRING
        except (QueueError, GuestMemoryError):
            # the driver broke the queue: it must reset the device (2.1.2)
            self.status |= DEVICE_NEEDS_RESET
            self.interrupt_status |= INT_CONFIG
        self._update_line()


def kernel_parameter(base, irq):
    """The Linux command-line parameter that announces a device at ``base`` on ``irq``
    (``virtio_mmio.device=<size>@<base>:<irq>``, as Firecracker announces its devices to
    a guest with no device tree and no ACPI entry for them)."""
    return f"virtio_mmio.device={WINDOW_SIZE // 1024}K@{base:#x}:{irq}"
