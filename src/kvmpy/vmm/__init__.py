"""The VMM: devices, image loaders, the machine and its run loop, and the ``kvmpy`` CLI.

It talks to KVM only through :mod:`kvmpy.api`, so the same machine runs on kvmpy's soft
KVM and on the host's /dev/kvm.
"""

from kvmpy.vmm.loader import LoadError, LoadedImage, load
from kvmpy.vmm.machine import Machine, RunResult

__all__ = ["LoadError", "LoadedImage", "Machine", "RunResult", "load"]
