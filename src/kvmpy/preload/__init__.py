"""kvmpy for unmodified C programs: an LD_PRELOAD library that makes ``/dev/kvm`` in the
program's process be kvmpy.

QEMU, kvmtool and KVM's selftests keep guest RAM in private anonymous mappings of their own
address space, so the kernel must run inside their process: the library (built from the C
source beside this file by ``build``) embeds CPython and forwards the KVM calls it catches to
``shim``, which hands them to kvmpy's system-call layer -- the same kernel Python VMMs use.
``kvmpy exec -- PROGRAM ARGS...`` runs a program with it.
"""
