"""The kvmpy test device: an MMIO register that always reads the same value.

The demo guest reads it (at 0xd0000000 in the machine) to prove that an MMIO read exit
reaches user space and that the value written back lands in the guest's register.
Writes are kept in ``writes`` so tests can see what the guest stored.
"""

TEST_DEVICE_ADDR = 0xD0000000
TEST_DEVICE_VALUE = 0x12345678


class ConstantDevice:
    """Reads return ``value`` (its low bytes for narrow reads); writes are recorded."""

    def __init__(self, value=TEST_DEVICE_VALUE):
        self.value = value
        self.writes = []

    def read(self, offset, size):
        return self.value & ((1 << (8 * size)) - 1)

    def write(self, offset, size, value):
        self.writes.append((offset, size, value))
