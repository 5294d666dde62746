"""kvm-ioctls-style Python API over either backend ("soft": kvmpy's kernel, "host": the
machine's /dev/kvm): :class:`Kvm`, :class:`Vm`, :class:`Vcpu`, typed :class:`VcpuExit`
values, and :class:`GuestMemory` for guest RAM."""

from kvmpy.api.backend import Backend, get_backend, host_backend, soft_backend
from kvmpy.api.exits import IoDirection, VcpuExit
from kvmpy.api.kvm import Kvm, Vcpu, Vm
from kvmpy.api.memory import GuestMemory, GuestMemoryError

__all__ = ["Backend", "GuestMemory", "GuestMemoryError", "IoDirection", "Kvm", "Vcpu",
           "VcpuExit", "Vm", "get_backend", "host_backend", "soft_backend"]
