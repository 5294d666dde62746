"""What a PC BIOS leaves behind when it hands the machine to a kernel it boots.

QEMU boots kvm-unit-tests (a multiboot kernel) and Linux through SeaBIOS, which programs the
legacy interrupt hardware before it jumps to the kernel.  A kernel that goes back to real
mode with interrupts on, as kvm-unit-tests' ``realmode`` does ("sti; hlt", woken by the
BIOS's timer tick), depends on that state; kvmpy has no BIOS, so the VMM sets the same
up through KVM's state ioctls before the first entry:

- the 8259 pair initialized (ICW1-4: edge-triggered, cascade on IRQ 2, 8086 mode) at the
  BIOS's vectors, 0x08 for IRQ 0-7 and 0x70 for IRQ 8-15, every line masked but the timer
  (IRQ 0) and the cascade -- the devices it has a handler for;
- the PIT's channel 0 in mode 3 with the largest count (65536: 18.2 ticks a second), the
  BIOS's time-of-day tick;
- the real-mode interrupt vector table at 0: the hardware interrupts' vectors lead to
  handlers that send the 8259s their EOI, every other vector to an IRET (the handlers are
  ``guests/bios.S``, copied to :data:`kvmpy.vmm.layout.BIOS_STUBS`).

Protected-mode kernels mask the 8259s and set up their own IDT, as kvm-unit-tests'
start-up does, so the rest of the suite sees no difference.
"""

from __future__ import annotations

import struct

from kvmpy import guests
from kvmpy.uapi import kvm as uapi
from kvmpy.vmm import layout

MASTER_VECTORS = 0x08                   # IRQ 0-7, as the IBM PC BIOS put them
SLAVE_VECTORS = 0x70                    # IRQ 8-15, the PC/AT BIOS's
CASCADE_IRQ = 2
TIMER_IRQ = 0
ICW4_8086 = 1                           # init4: the chip was told to expect ICW4 (8086 mode)
PIT_MODE_SQUARE_WAVE = 3
PIT_RW_LOW_HIGH = 3                     # the count is written low byte, then high byte
PIT_LARGEST_COUNT = 0                   # 0 loads 65536
# the handlers' offsets in guests/bios.S
STUB_IRET, STUB_IRQ_MASTER, STUB_IRQ_SLAVE = 0x10, 0x20, 0x30
IVT_VECTORS = 256


def ivt():
    """The 1 KiB interrupt vector table: a segment:offset per vector into the stubs."""
    segment = layout.BIOS_STUBS >> 4 & 0xF000
    base = layout.BIOS_STUBS - (segment << 4)
    entries = []
    for vector in range(IVT_VECTORS):
        stub = STUB_IRET
        if MASTER_VECTORS <= vector < MASTER_VECTORS + 8:
            stub = STUB_IRQ_MASTER
        elif SLAVE_VECTORS <= vector < SLAVE_VECTORS + 8:
            stub = STUB_IRQ_SLAVE
        entries.append(struct.pack("<HH", base + stub, segment))
    return b"".join(entries)


def _program_pic(vm, chip_id, vectors, unmasked):
    chip = vm.get_irqchip(chip_id)
    pic = chip.chip.pic
    pic.irq_base = vectors
    pic.imr = 0xFF & ~sum(1 << irq for irq in unmasked)
    pic.init4 = ICW4_8086
    pic.init_state = 0                  # the ICW sequence is over
    vm.set_irqchip(chip)


def install(memory, vm, pit: bool) -> None:
    """Leave the BIOS's interrupt state in ``memory`` and the in-kernel irqchip (and the PIT,
    if the machine has one)."""
    memory.write(layout.BIOS_STUBS, guests.load_image("bios"))
    memory.write(0, ivt())
    _program_pic(vm, uapi.KVM_IRQCHIP_PIC_MASTER, MASTER_VECTORS, (TIMER_IRQ, CASCADE_IRQ))
    _program_pic(vm, uapi.KVM_IRQCHIP_PIC_SLAVE, SLAVE_VECTORS, ())
    if pit:
        state = vm.get_pit2()
        channel = state.channels[0]
        channel.mode = PIT_MODE_SQUARE_WAVE
        channel.rw_mode = PIT_RW_LOW_HIGH
        channel.read_state = channel.write_state = PIT_RW_LOW_HIGH
        channel.gate = 1
        channel.count = PIT_LARGEST_COUNT
        vm.set_pit2(state)
