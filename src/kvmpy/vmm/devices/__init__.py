"""Emulated devices for the VMM, in the spirit of rust-vmm's vm-superio.

Each device knows nothing of KVM: it answers ``read(offset, size) -> int`` and
``write(offset, size, value)`` for the offsets of the range a bus maps it at, and tells
the VMM about side effects (output bytes, interrupts, exit/reset requests) through
callables it was given.
"""

from kvmpy.vmm.devices.bus import Bus, BusError, MmioBus, PioBus
from kvmpy.vmm.devices.cmos import Cmos
from kvmpy.vmm.devices.debug_exit import DebugExit
from kvmpy.vmm.devices.fw_cfg import FwCfg
from kvmpy.vmm.devices.i8042 import I8042
from kvmpy.vmm.devices.serial import Serial
from kvmpy.vmm.devices.testdev import ConstantDevice

__all__ = [
    "Bus", "BusError", "MmioBus", "PioBus",
    "Cmos", "ConstantDevice", "DebugExit", "FwCfg", "I8042", "Serial",
]
