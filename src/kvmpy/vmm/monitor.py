"""A small monitor on the console, as QEMU's (``C-a c`` switches to it and back).

Commands: ``help``, ``info status``, ``info cpus``, ``info registers``, ``stop``,
``cont`` (``c``), ``quit`` (``q``).  The registers come from KVM_GET_REGS/SREGS, which KVM
answers only for a vCPU outside KVM_RUN, so the monitor pauses the machine for the time of
the look (``Machine.paused``), as QEMU synchronises each vCPU's state first; ``stop`` keeps
it paused until ``cont``.  The terminal is raw, so the monitor edits its own line: printable
keys are echoed, backspace erases, Enter runs the line.  Its output ends lines with "\n"
alone: the raw terminal keeps output processing (terminal.py).
"""

from __future__ import annotations

from kvmpy.uapi import kvm as uapi

PROMPT = b"(kvmpy) "
BANNER = b"kvmpy monitor - type 'help' for more information\n"
HELP = ("cont|c -- resume emulation\n"
        "help -- show this help\n"
        "info cpus -- show infos for each CPU\n"
        "info registers -- show the cpu registers\n"
        "info status -- show the current VM status (running|paused)\n"
        "quit|q -- quit kvmpy\n"
        "stop -- stop emulation\n"
        "C-a c goes back to the console\n")
ERASE = (0x08, 0x7F)
MP_STATES = {uapi.KVM_MP_STATE_RUNNABLE: "running", uapi.KVM_MP_STATE_HALTED: "halted",
             uapi.KVM_MP_STATE_UNINITIALIZED: "waiting for INIT/SIPI",
             uapi.KVM_MP_STATE_INIT_RECEIVED: "INIT received",
             uapi.KVM_MP_STATE_SIPI_RECEIVED: "SIPI received"}


class Monitor:
    """The monitor of one ``machine``: output through ``write(bytes)``, ``quit()`` ends
    the run."""

    def __init__(self, machine, write, quit):
        self.machine = machine
        self.write = write
        self.quit = quit
        self.stopped = False
        self._line = bytearray()

    def enter(self):
        self.write(b"\n" + BANNER + PROMPT)

    def feed(self, data):
        for byte in data:
            if byte in (0x0D, 0x0A):
                line = self._line.decode("ascii", "replace")
                self._line.clear()
                self.write(b"\n")
                self._say(self.execute(line))
                self.write(PROMPT)
            elif byte in ERASE:
                if self._line:
                    self._line.pop()
                    self.write(b"\b \b")
            elif 0x20 <= byte < 0x7F:
                self._line.append(byte)
                self.write(bytes([byte]))

    def _say(self, text):
        if text:
            self.write(text.encode())

    def execute(self, line):
        """The output of one command line (text, "\\n" line ends)."""
        words = line.split()
        if not words:
            return ""
        command, args = words[0], words[1:]
        if command == "help" or command == "?":
            return HELP
        if command in ("quit", "q"):
            self.quit()
            return ""
        if command == "stop":
            if not self.stopped:
                self.machine.pause()
                self.stopped = True
            return ""
        if command in ("cont", "c"):
            if self.stopped:
                self.stopped = False
                self.machine.resume()
            return ""
        if command == "info" and len(args) == 1:
            what = {"status": self._status, "cpus": self._cpus,
                    "registers": self._registers}.get(args[0])
            if what:
                return what()
        return f"unknown command: '{line.strip()}'\n"

    def _status(self):
        return f"VM status: {'paused' if self.stopped else 'running'}\n"

    def _cpus(self):
        lines = []
        with self.machine.paused():
            for vcpu in self.machine.vcpus:
                state = MP_STATES.get(vcpu.get_mp_state(), "other")
                mark = "*" if vcpu is self.machine.vcpu else " "
                lines.append(f"{mark} CPU #{vcpu.id}: pc={_pc(vcpu):#018x} ({state})\n")
        return "".join(lines)

    def _registers(self):
        with self.machine.paused():
            return "".join(format_registers(vcpu.id, vcpu.get_regs(), vcpu.get_sregs())
                           for vcpu in self.machine.vcpus)


def _pc(vcpu):
    """The linear address of the next instruction: CS base + RIP."""
    return (vcpu.get_sregs().cs.base + vcpu.get_regs().rip) & (1 << 64) - 1


def format_registers(cpu, regs, sregs):
    """One vCPU's state in the layout of QEMU's ``info registers``."""
    def row(names):
        return " ".join(f"{n.upper():<3}={getattr(regs, n):016x}" for n in names) + "\n"
    out = [f"CPU#{cpu}\n", row(("rax", "rbx", "rcx", "rdx")), row(("rsi", "rdi", "rbp", "rsp")),
           row(("r8", "r9", "r10", "r11")), row(("r12", "r13", "r14", "r15")),
           f"RIP={regs.rip:016x} RFL={regs.rflags:08x} CPL={sregs.cs.dpl}\n"]
    for name in ("es", "cs", "ss", "ds", "fs", "gs", "ldt", "tr"):
        seg = getattr(sregs, name)
        attrs = (seg.type | seg.s << 4 | seg.dpl << 5 | seg.present << 7 | seg.avl << 12
                 | seg.l << 13 | seg.db << 14 | seg.g << 15) << 8
        out.append(f"{name.upper():<3}={seg.selector:04x} {seg.base:016x} {seg.limit:08x} "
                   f"{attrs:08x}\n")
    for name in ("gdt", "idt"):
        table = getattr(sregs, name)
        out.append(f"{name.upper()}=     {table.base:016x} {table.limit:08x}\n")
    out.append(f"CR0={sregs.cr0:08x} CR2={sregs.cr2:016x} CR3={sregs.cr3:016x} "
               f"CR4={sregs.cr4:08x}\n")
    out.append(f"EFER={sregs.efer:016x}\n")
    return "".join(out)
