"""One VM with vCPUs through raw ioctls on either kernel, for the vCPU state tests."""

import os

import pytest

from kvmpy import compat
from kvmpy import uapi as K


class Vcpu:
    def __init__(self, open_, ioctl, close, vcpu_id=0, ids=(0,)):
        self.ioctl, self.close_ = ioctl, close
        self.kvm = open_("/dev/kvm", os.O_RDWR)
        self.vm = ioctl(self.kvm, K.KVM_CREATE_VM, 0)
        self.fds = [ioctl(self.vm, K.KVM_CREATE_VCPU, i) for i in ids]
        self.fd = self.fds[ids.index(vcpu_id)]

    def get(self, req, ctype):
        buf = ctype()
        self.ioctl(self.fd, req, buf)
        return buf

    def close(self):
        for fd in self.fds + [self.vm, self.kvm]:
            self.close_(fd)


def host_vcpu(**kw):
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        pytest.skip("needs the host's /dev/kvm")
    return Vcpu(os.open, compat.ioctl, os.close, **kw)
