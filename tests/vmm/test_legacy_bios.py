"""The BIOS interrupt state the VMM leaves for a multiboot kernel (kvmpy.vmm.legacy_bios),
seen by a guest that goes back to real mode (guests/biosboot.S), on kvmpy under each
vendor module and MMU mode and on the host's /dev/kvm."""

from kvmpy import guests, syscalls
from kvmpy.vmm.machine import Machine
from tests.support.vendors import scenario_tests

RESULT = 0x6000


def biosboot(sc):
    """The guest's findings (its docstring lists them) and how the run ended."""
    accel = "soft" if sc is syscalls else "host"
    with Machine(guests.image_path("biosboot"), accel=accel, devices=[("isa-debug-exit", {})]) as m:
        result = m.run(timeout=120)
        found = m.memory.read(RESULT, 7)
    return {"end": [result.reason, result.status], "pic_masks": [found[0], found[1]],
            "isr_after_tick": found[2], "woke": found[3], "ticks": int.from_bytes(found[4:6], "little"),
            "pit_status": found[6]}


SCENARIOS = {"biosboot": biosboot}
EXPECTED = {"biosboot": {"end": ["debug-exit", 1],
                         "pic_masks": [0xFA, 0xFF],     # only the timer and the cascade
                         "isr_after_tick": 0,           # the IVT's handler sent the EOI
                         "woke": 1, "ticks": 2,         # IRQ 0 is vector 0x08 and keeps ticking
                         "pit_status": 0x36}}           # mode 3, lobyte/hibyte
test_biosboot_on_the_host, test_biosboot_on_kvmpy = scenario_tests("tests.vmm.test_legacy_bios", SCENARIOS,
                                                                   EXPECTED)


def test_flat_images_get_no_bios_state(soft_kvm):
    """A flat image starts as on a bare machine, as before: an empty IVT, the 8259s at reset."""
    with Machine(guests.image_path("demo"), irqchip=True) as m:
        assert m.memory.read(0, 0x400) == bytes(0x400)
        assert m.vm.get_irqchip(0).chip.pic.imr == 0
