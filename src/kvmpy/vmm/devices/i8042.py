"""A minimal i8042 keyboard controller: enough for guests to reset the machine.

Guests (Linux's ``reboot=k``, most boot loaders) reset a PC by sending command 0xfe
("pulse output line 0") to port 0x64, or by writing an output-port byte with bit 0 clear.
Either calls ``on_reset()``. The data port (0x60) answers the controller's own queries
(command byte, self-test) and acknowledges keyboard commands; no keys are ever pressed.

Map it with ``bus.register(0x60, 1, dev)`` and ``bus.register(0x64, 1, dev, offset=4)``.
"""

import collections

DATA_PORT = 0x60
COMMAND_PORT = 0x64
DATA, COMMAND = 0, 4  # offsets the device sees
KBD_IRQ = 1           # the keyboard port's ISA IRQ on a PC (never raised: no keys)

STATUS_OBF = 0x01     # output buffer full
STATUS_SYSTEM = 0x04  # system flag: POST passed
STATUS_CMD = 0x08     # last write was to the command port

CMD_READ_CMD_BYTE = 0x20
CMD_WRITE_CMD_BYTE = 0x60
CMD_SELF_TEST = 0xAA
CMD_IFACE_TEST = 0xAB
CMD_READ_OUTPUT = 0xD0
CMD_WRITE_OUTPUT = 0xD1
CMD_PULSE_RESET = 0xFE

KBD_ACK = 0xFA
SELF_TEST_OK = 0x55


class I8042:
    """The controller: a status/command port and a data port."""

    def __init__(self, on_reset=None):
        self.on_reset = on_reset
        self.reset_requested = False
        self.command_byte = 0x45  # translate, system flag, keyboard IRQ on
        self.output_port = 0x03   # A20 on, not in reset
        self.outbuf = collections.deque()
        self.pending = None       # command whose parameter the next data write is
        self.status_cmd = False

    def read(self, offset, size):
        if offset == COMMAND:
            return (STATUS_OBF if self.outbuf else 0) | STATUS_SYSTEM | (
                STATUS_CMD if self.status_cmd else 0)
        if offset == DATA:
            return self.outbuf.popleft() if self.outbuf else 0
        return 0xFF

    def write(self, offset, size, value):
        value &= 0xFF
        if offset == COMMAND:
            self.status_cmd = True
            self._command(value)
        elif offset == DATA:
            self.status_cmd = False
            self._data(value)

    def _command(self, cmd):
        if cmd == CMD_READ_CMD_BYTE:
            self.outbuf.append(self.command_byte)
        elif cmd in (CMD_WRITE_CMD_BYTE, CMD_WRITE_OUTPUT):
            self.pending = cmd
        elif cmd == CMD_SELF_TEST:
            self.outbuf.append(SELF_TEST_OK)
        elif cmd == CMD_IFACE_TEST:
            self.outbuf.append(0x00)
        elif cmd == CMD_READ_OUTPUT:
            self.outbuf.append(self.output_port)
        elif cmd == CMD_PULSE_RESET:
            self._reset()

    def _data(self, value):
        pending, self.pending = self.pending, None
        if pending == CMD_WRITE_CMD_BYTE:
            self.command_byte = value
        elif pending == CMD_WRITE_OUTPUT:
            self.output_port = value
            if not value & 0x01:
                self._reset()
        else:
            # A byte for the keyboard itself: acknowledge it.
            self.outbuf.append(KBD_ACK)

    def _reset(self):
        self.reset_requested = True
        if self.on_reset:
            self.on_reset()
