"""User-space API of KVM (linux/kvm.h, asm/kvm.h) as Python constants and ctypes structures."""

from .kvm import *  # noqa: F401,F403
from .kvm import __all__  # noqa: F401
