"""kvmpy: the Linux KVM hypervisor re-implemented in Python."""
