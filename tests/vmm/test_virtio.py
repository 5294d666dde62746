"""virtio-mmio (kvmpy/vmm/devices/virtio): the transport, the split virtqueue, virtio-blk
and virtio-rng.

First the repo's virtio guest (kvmpy/guests/virtio.S), a PVH kernel with a driver of its
own: it finds the devices in its command line (virtio_mmio.device=), negotiates
VIRTIO_F_VERSION_1, sets up a queue, reads sector 0 of the disk and writes sector 1, reads
random bytes, and waits for each answer's interrupt through the IOAPIC; on kvmpy under
both vendors and MMU modes and on the host's /dev/kvm.  Then the transport and devices
driven from Python as a driver would: the rules of the spec the guest does not reach.
"""

import re
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kvmpy.api import GuestMemory
from kvmpy.guests import image_path
from kvmpy.vmm.devices.virtio import blk, console, mmio, queue, rng
from kvmpy.vmm.machine import Machine
from tests.support.cli import RUN_BACKENDS, kvmpy_run, run_main
from tests.support.elfgen import make_elf

MIB = 1 << 20
GUEST = str(image_path("virtio"))
SECTOR0 = b"kvmpy disk: sector zero"
WRITTEN = b"written by the virtio guest\n"


@pytest.fixture
def disk(tmp_path):
    """A 1 MiB raw image whose sector 0 begins with SECTOR0."""
    (tmp_path / "disk.img").write_bytes(SECTOR0.ljust(MIB, b"\0"))
    return tmp_path / "disk.img"


@pytest.mark.parametrize("backend", RUN_BACKENDS)
def test_guest_drives_blk_rng_and_console(disk, backend):
    status, out, err = kvmpy_run(*backend, "-kernel", GUEST, "--disk", str(disk),
                                 "-device", "virtio-rng-device", "-device", "virtio-console-device",
                                 "--timeout", "100")
    lines = out.splitlines()
    assert status == 1 and len(lines) == 4, (out, err)
    assert lines[0] == (f"virtio-mmio d0001000 irq 5 magic 74726976 version 2 id 2 "
                        f"blk capacity {MIB // 512:x} read 0 sector0 {SECTOR0.decode()} write 0")
    m = re.fullmatch(r"virtio-mmio d0002000 irq a magic 74726976 version 2 id 4 "
                     r"rng used 10 bytes ([0-9a-f]{32})", lines[1])
    assert m and m.group(1) != "0" * 32, lines[1]
    assert lines[2] == ("virtio-mmio d0003000 irq b magic 74726976 version 2 id 3 "
                        "console: hello through virtio-console")
    assert lines[3] == "interrupts 4"                 # one per request, through the IOAPIC
    data = disk.read_bytes()
    assert data[512:512 + len(WRITTEN)] == WRITTEN and data[:len(SECTOR0)] == SECTOR0
    assert len(data) == MIB


def test_drive_option_and_read_only_disk(disk):
    """-drive ...,readonly=on: the write is refused with IOERR (1), the file unchanged."""
    status, out, err = kvmpy_run("-kernel", GUEST, "-drive", f"file={disk},if=virtio,format=raw,"
                                 "readonly=on", "--timeout", "100")
    assert status == 1 and out.endswith(f"sector0 {SECTOR0.decode()} write 1\ninterrupts 2\n"), err
    assert disk.read_bytes()[512:1024] == bytes(512)


def test_console_output_is_not_com1():
    """With COM1 gone (-serial none) the guest's virtio-console line is what is left."""
    status, out, err = kvmpy_run("-kernel", GUEST, "-device", "virtio-console-device",
                                 "-serial", "none", "--timeout", "100")
    assert (status, out) == (1, "hello through virtio-console\n"), err


def test_microvm_spelling(disk):
    """QEMU microvm's -drive if=none,id=ID with -device virtio-blk-device,drive=ID."""
    status, out, err = kvmpy_run("-kernel", GUEST, "-drive", f"id=root,file={disk},if=none,format=raw",
                                 "-device", "virtio-blk-device,drive=root", "--timeout", "100")
    assert status == 1 and out.endswith(f"sector0 {SECTOR0.decode()} write 0\ninterrupts 2\n"), err


def test_kernel_command_line_announces_the_devices(disk):
    """The PVH guest prints its command line: the devices are appended, Firecracker's way."""
    status, out, err = kvmpy_run("-kernel", str(image_path("pvh")), "-append", "console=ttyS0",
                                 "--disk", str(disk), "-device", "virtio-rng-device")
    assert status == 1, err
    assert ("cmdline=console=ttyS0 virtio_mmio.device=4K@0xd0001000:5 "
            "virtio_mmio.device=4K@0xd0002000:10 modules=0") in out


def test_virtio_devices_bring_the_irqchip(tmp_path, disk):
    """A bare image gets no irqchip by default, unless a virtio device needs its line."""
    image = tmp_path / "k.elf"
    image.write_bytes(make_elf(b"\xf4", 0x100000))
    with Machine(str(image)) as machine:
        assert not machine.irqchip
    with Machine(str(image), disks=[(str(disk), False)]) as machine:
        assert machine.irqchip and machine.mmio.find(0xD0001000).device is machine.virtio[0]


@pytest.mark.parametrize("drive,message", [
    ("file=x.img", "give if=virtio"),
    ("file=x.img,if=ide", "if=ide: kvmpy's disks are virtio"),
    ("file=x.img,if=none", "if=none needs an id="),
    ("file=x.img,if=virtio,format=qcow2", "format=qcow2: only raw images"),
    ("file=x.img,if=virtio,cache=none", "cache=none: not supported"),
    ("if=virtio", "no file="),
])
def test_bad_drive_options(capsys, drive, message):
    status, _, err = run_main(capsys, "run", "-kernel", GUEST, "-drive", drive)
    assert status == 2 and message in err and err.count("\n") == 1


def test_device_without_its_drive(capsys, disk):
    status, _, err = run_main(capsys, "run", "-kernel", GUEST, "-drive", f"file={disk},if=none,id=a",
                              "-device", "virtio-blk-device,drive=b")
    assert status == 2 and "-device virtio-blk-device,drive=b: no -drive with that id" in err


def test_disk_errors_name_the_file(capsys, tmp_path):
    status, _, err = run_main(capsys, "run", "-kernel", GUEST, "--disk", str(tmp_path / "none"))
    assert status == 2 and f"could not open disk image {tmp_path}/none: No such file" in err
    status, _, err = run_main(capsys, "run", "-kernel", GUEST, "--disk", str(tmp_path))
    assert status == 2 and "not a regular file" in err


def test_at_most_three_devices(capsys, disk):
    status, _, err = run_main(capsys, "run", "-kernel", GUEST, *["--disk", str(disk)] * 3,
                              "-device", "virtio-rng-device")
    assert status == 2 and "4 virtio devices: at most 3" in err


# -- the transport and devices, driven from Python ------------------------------------------

DESC, AVAIL, USED, DATA = 0x1000, 0x2000, 0x3000, 0x10000
BASE_STATUS = mmio.ACKNOWLEDGE | mmio.DRIVER


class Driver:
    """A device behind its transport in 1 MiB of guest memory, with the IRQ line's history."""

    def __init__(self, device, memory):
        self.memory, self.levels = memory, []
        self.dev = mmio.VirtioMmio(device, memory, 5, lambda line, level: self.levels.append(level))

    def reg(self, offset, value=None):
        if value is None:
            return self.dev.read(offset, 4)
        self.dev.write(offset, 4, value)

    def negotiate(self, features=mmio.VIRTIO_F_VERSION_1):
        self.reg(mmio.STATUS, 0)
        self.reg(mmio.STATUS, BASE_STATUS)
        for sel in (0, 1):
            self.reg(mmio.DRIVER_FEATURES_SEL, sel)
            self.reg(mmio.DRIVER_FEATURES, features >> (32 * sel) & 0xFFFFFFFF)
        self.reg(mmio.STATUS, BASE_STATUS | mmio.FEATURES_OK)
        return bool(self.reg(mmio.STATUS) & mmio.FEATURES_OK)

    def setup(self, size=8, index=0):
        """Features negotiated, then queue ``index`` (the only one) set up, DRIVER_OK."""
        assert self.negotiate()
        self.reg(mmio.QUEUE_SEL, index)
        self.reg(mmio.QUEUE_NUM, size)
        for low, addr in ((mmio.QUEUE_DESC_LOW, DESC), (mmio.QUEUE_DRIVER_LOW, AVAIL),
                          (mmio.QUEUE_DEVICE_LOW, USED)):
            self.reg(low, addr)
            self.reg(low + 4, 0)
        self.reg(mmio.QUEUE_READY, 1)
        self.reg(mmio.STATUS, BASE_STATUS | mmio.FEATURES_OK | mmio.DRIVER_OK)

    def submit(self, descs, head=0, queue_index=0):
        """Descriptors [(index, addr, len, flags, next)], the chain at ``head`` made
        available and queue ``queue_index`` notified; the used element (id, len) or None."""
        for index, addr, length, flags, next_ in descs:
            self.memory.write(DESC + 16 * index, struct.pack("<QIHH", addr, length, flags, next_))
        idx = self.memory.read_int(AVAIL + 2, 2)
        self.memory.write_int(AVAIL + 4 + 2 * (idx % 8), 2, head)
        self.memory.write_int(AVAIL + 2, 2, idx + 1)
        used_before = self.memory.read_int(USED + 2, 2)
        self.reg(mmio.QUEUE_NOTIFY, queue_index)
        if self.memory.read_int(USED + 2, 2) == used_before:
            return None
        return struct.unpack("<II", self.memory.read(USED + 4 + 8 * (used_before % 8), 8))


@pytest.fixture
def memory():
    with GuestMemory(MIB) as mem:
        yield mem


@pytest.fixture
def blk_driver(disk, memory):
    device = blk.VirtioBlk(disk)
    yield Driver(device, memory)
    device.close()


def blk_request(driver, type_, sector, length, writable=True, data=b""):
    """One request: header, ``length`` bytes of data at DATA, status; (used, status)."""
    driver.memory.write(DATA, struct.pack("<IIQ", type_, 0, sector))
    driver.memory.write(DATA + 0x100, data)
    driver.memory.write_int(DATA + 0x80, 1, 0xFF)
    flags = queue.VIRTQ_DESC_F_NEXT | (queue.VIRTQ_DESC_F_WRITE if writable else 0)
    used = driver.submit([(0, DATA, 16, queue.VIRTQ_DESC_F_NEXT, 1),
                          (1, DATA + 0x100, length, flags, 2),
                          (2, DATA + 0x80, 1, queue.VIRTQ_DESC_F_WRITE, 0)])
    return used, driver.memory.read_int(DATA + 0x80, 1)


def test_registers_and_config(blk_driver):
    d = blk_driver
    assert [d.reg(r) for r in (mmio.MAGIC, mmio.VERSION_REG, mmio.DEVICE_ID)] == [0x74726976, 2, 2]
    d.reg(mmio.DEVICE_FEATURES_SEL, 1)
    assert d.reg(mmio.DEVICE_FEATURES) == 1                     # VIRTIO_F_VERSION_1
    d.reg(mmio.DEVICE_FEATURES_SEL, 0)
    assert d.reg(mmio.DEVICE_FEATURES) == blk.VIRTIO_BLK_F_SEG_MAX | blk.VIRTIO_BLK_F_FLUSH
    assert d.reg(mmio.QUEUE_NUM_MAX) == blk.QUEUE_SIZE
    assert d.dev.read(mmio.CONFIG, 8) == MIB // 512                   # capacity, 8 bytes
    assert d.dev.read(mmio.CONFIG + 12, 2) == blk.QUEUE_SIZE - 2      # seg_max, any width
    assert d.reg(mmio.SHM_LEN_LOW) == 0xFFFFFFFF                # no shared memory regions
    assert d.dev.read(mmio.MAGIC, 2) == 0                       # registers are 32-bit
    d.reg(mmio.QUEUE_SEL, 1)
    assert d.reg(mmio.QUEUE_NUM_MAX) == 0                       # one queue only


@pytest.mark.parametrize("features", [0, 1 << 40 | mmio.VIRTIO_F_VERSION_1])
def test_features_ok_refused(blk_driver, features):
    """No legacy interface: without VERSION_1, or with a feature not offered, FEATURES_OK
    reads back clear."""
    assert not blk_driver.negotiate(features)
    assert blk_driver.negotiate()


def test_read_write_and_the_level_interrupt(blk_driver, disk):
    d = blk_driver
    d.setup()
    assert blk_request(d, blk.VIRTIO_BLK_T_IN, 0, 512) == ((0, 513), blk.VIRTIO_BLK_S_OK)
    assert d.memory.read(DATA + 0x100, len(SECTOR0)) == SECTOR0
    assert d.levels == [True] and d.reg(mmio.INTERRUPT_STATUS) == mmio.INT_VRING
    d.reg(mmio.INTERRUPT_ACK, mmio.INT_VRING)
    assert d.levels == [True, False] and d.reg(mmio.INTERRUPT_STATUS) == 0
    used, status = blk_request(d, blk.VIRTIO_BLK_T_OUT, 3, 1024, writable=False, data=b"x" * 1024)
    assert (used, status) == ((0, 1), blk.VIRTIO_BLK_S_OK)
    assert disk.read_bytes()[3 * 512:5 * 512] == b"x" * 1024


@pytest.mark.parametrize("type_,sector,length,status", [
    (blk.VIRTIO_BLK_T_IN, MIB // 512 - 1, 1024, blk.VIRTIO_BLK_S_IOERR),      # past the end
    (blk.VIRTIO_BLK_T_IN, 0, 100, blk.VIRTIO_BLK_S_IOERR),                    # not sectors
    (blk.VIRTIO_BLK_T_FLUSH, 0, 0, blk.VIRTIO_BLK_S_OK),
    (99, 0, 16, blk.VIRTIO_BLK_S_UNSUPP),
])
def test_request_status(blk_driver, type_, sector, length, status):
    blk_driver.setup()
    descs = [(0, DATA, 16, queue.VIRTQ_DESC_F_NEXT, 2 if not length else 1),
             (1, DATA + 0x100, length, queue.VIRTQ_DESC_F_WRITE | queue.VIRTQ_DESC_F_NEXT, 2),
             (2, DATA + 0x80, 1, queue.VIRTQ_DESC_F_WRITE, 0)]
    blk_driver.memory.write(DATA, struct.pack("<IIQ", type_, 0, sector))
    assert blk_driver.submit(descs) is not None
    assert blk_driver.memory.read_int(DATA + 0x80, 1) == status


def test_get_id(blk_driver, disk):
    blk_driver.setup()
    assert blk_request(blk_driver, blk.VIRTIO_BLK_T_GET_ID, 0, 20)[1] == blk.VIRTIO_BLK_S_OK
    assert blk_driver.memory.read(DATA + 0x100, 20) == disk.name.encode().ljust(20, b"\0")


@pytest.mark.parametrize("descs", [
    [(0, DATA, 16, queue.VIRTQ_DESC_F_NEXT, 0)],                                # a loop
    [(0, DATA, 16, queue.VIRTQ_DESC_F_NEXT, 9)],                                # past the queue
    [(0, DATA, 1, queue.VIRTQ_DESC_F_WRITE | queue.VIRTQ_DESC_F_NEXT, 1),
     (1, DATA, 16, 0, 0)],                                                      # read after write
    [(0, 0x7FFFFFF0, 16, queue.VIRTQ_DESC_F_WRITE, 0)],                         # outside RAM
    [(0, DATA, 16, queue.VIRTQ_DESC_F_INDIRECT, 0)],                            # not offered
])
def test_broken_queue_needs_reset(blk_driver, descs):
    """A driver's broken chain never reaches the vCPU: DEVICE_NEEDS_RESET, a config
    interrupt, and the device ignores notifications until the reset."""
    d = blk_driver
    d.setup()
    assert d.submit(descs) is None
    assert d.reg(mmio.STATUS) & mmio.DEVICE_NEEDS_RESET
    assert d.reg(mmio.INTERRUPT_STATUS) == mmio.INT_CONFIG and d.levels == [True]
    d.reg(mmio.STATUS, 0)
    assert d.reg(mmio.STATUS) == 0 and d.levels == [True, False]
    d.memory.fill(AVAIL, 0x2000)
    d.setup()
    assert blk_request(d, blk.VIRTIO_BLK_T_IN, 0, 512)[1] == blk.VIRTIO_BLK_S_OK


def test_no_interrupt_when_the_driver_asks_none(blk_driver):
    blk_driver.setup()
    blk_driver.memory.write_int(AVAIL, 2, queue.VIRTQ_AVAIL_F_NO_INTERRUPT)
    assert blk_request(blk_driver, blk.VIRTIO_BLK_T_IN, 0, 512)[1] == blk.VIRTIO_BLK_S_OK
    assert blk_driver.levels == [] and blk_driver.reg(mmio.INTERRUPT_STATUS) == 0


def test_notify_before_driver_ok_is_ignored(blk_driver):
    d = blk_driver
    d.setup()
    d.reg(mmio.STATUS, BASE_STATUS | mmio.FEATURES_OK)          # DRIVER_OK taken away
    d.memory.write(DATA, struct.pack("<IIQ", blk.VIRTIO_BLK_T_IN, 0, 0))
    assert d.submit([(0, DATA, 16, 0, 0)]) is None


def test_read_only_disk_offers_ro(disk, memory):
    device = blk.VirtioBlk(disk, readonly=True)
    try:
        assert device.features & blk.VIRTIO_BLK_F_RO
    finally:
        device.close()


def test_rng_fills_buffers(memory):
    d = Driver(rng.VirtioRng(), memory)
    d.setup()
    used = d.submit([(0, DATA, 64, queue.VIRTQ_DESC_F_WRITE | queue.VIRTQ_DESC_F_NEXT, 1),
                     (1, DATA + 0x1000, 64, queue.VIRTQ_DESC_F_WRITE, 0)])
    assert used == (0, 128)
    assert memory.read(DATA, 64) != bytes(64) and memory.read(DATA + 0x1000, 64) != bytes(64)
    assert d.reg(mmio.DEVICE_ID) == 4 and d.dev.read(mmio.CONFIG, 4) == 0


@pytest.mark.parametrize("index,out", [(console.RECEIVEQ, []), (console.TRANSMITQ, [b"hello"])])
def test_console_transmits_and_keeps_receive_buffers(memory, index, out):
    """Output buffers are written to the sink and used; input buffers wait (no input)."""
    sink = []
    d = Driver(console.VirtioConsole(sink.append), memory)
    d.setup(index=index)
    memory.write(DATA, b"hello")
    flags = queue.VIRTQ_DESC_F_WRITE if index == console.RECEIVEQ else 0
    used = d.submit([(0, DATA, 5, flags, 0)], queue_index=index)
    assert sink == out and used == ((0, 0) if out else None)


def test_console_input_fills_receive_buffers_in_order(memory):
    """Typed bytes wait for the driver's receive buffers; each buffer takes what fits and
    comes back with its count and the interrupt, and the rest waits for the next one, which
    input arriving later (the console's thread) fills at once."""
    device = console.VirtioConsole(lambda data: None)
    d = Driver(device, memory)
    d.setup(index=console.RECEIVEQ)
    device.enqueue_input(b"echo ")
    d.dev.process(console.RECEIVEQ)                     # no buffer yet: nothing happens
    assert d.reg(mmio.INTERRUPT_STATUS) == 0 and device.input == b"echo "
    write = queue.VIRTQ_DESC_F_WRITE
    assert d.submit([(0, DATA, 8, write, 0)], queue_index=console.RECEIVEQ) == (0, 5)
    assert memory.read(DATA, 5) == b"echo " and d.levels == [True]
    d.reg(mmio.INTERRUPT_ACK, mmio.INT_VRING)
    assert d.submit([(1, DATA + 0x100, 4, write, 0)], head=1,
                    queue_index=console.RECEIVEQ) is None   # a buffer waits for input
    device.enqueue_input(b"kvmpy\n")
    d.dev.process(console.RECEIVEQ)
    assert struct.unpack("<II", memory.read(USED + 4 + 8, 8)) == (1, 4)
    assert memory.read(DATA + 0x100, 4) == b"kvmp" and device.input == b"y\n"
    assert d.levels == [True, False, True]


def test_device_help_lists_the_virtio_devices(capsys):
    status, out, _ = run_main(capsys, "run", "-device", "help")
    assert status == 0 and 'name "virtio-rng-device"' in out and 'name "virtio-console-device"' in out


REGISTER_OFFSETS = st.sampled_from([mmio.DEVICE_FEATURES_SEL, mmio.DRIVER_FEATURES,
                                    mmio.DRIVER_FEATURES_SEL, mmio.QUEUE_SEL, mmio.QUEUE_NUM,
                                    mmio.QUEUE_READY, mmio.QUEUE_NOTIFY, mmio.INTERRUPT_ACK,
                                    mmio.STATUS, *mmio.QUEUE_ADDRESSES, mmio.CONFIG, 0x0FF])
WRITES = st.lists(st.tuples(REGISTER_OFFSETS, st.sampled_from([1, 2, 4]),
                            st.one_of(st.integers(0, 0xFFFFFFFF),
                                      st.sampled_from([0, 1, 0xF, DESC, AVAIL, USED]))),
                  max_size=40)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(writes=WRITES, ring=st.binary(min_size=64, max_size=64), kind=st.sampled_from("brc"))
def test_any_driver_behaviour_is_answered(disk, memory, writes, ring, kind):
    """Whatever a guest writes to the registers and the rings, the transport answers: no
    exception reaches the MMIO exit (and so KVM_RUN)."""
    device = {"b": lambda: blk.VirtioBlk(disk), "r": rng.VirtioRng,
              "c": lambda: console.VirtioConsole(lambda data: None)}[kind]()
    try:
        d = Driver(device, memory)
        for addr in (DESC, AVAIL, USED):
            memory.write(addr, ring)
        d.setup()
        for offset, size, value in writes:
            d.dev.write(offset, size, value)
            d.dev.read(offset, size)
        d.reg(mmio.QUEUE_NOTIFY, 0)
    finally:
        device.close()
