"""The machine: guest RAM, its vCPUs, the in-kernel irqchip and PIT, the PC devices, and
the run loop.

``Machine`` builds a VM on either backend as QEMU does with accel=kvm: the in-kernel irqchip
(8259 pair, IOAPIC, a LAPIC per vCPU) and PIT before the vCPUs (``-machine
kernel-irqchip=off`` and ``pit=off`` leave them out), ``-smp`` vCPUs, loads an image, sets the
boot processor's entry state and every vCPU's CPUID (the others wait for INIT and SIPI), maps
the devices, then :meth:`Machine.run` runs each vCPU on a thread of its own
(``vmm/vcpu.py``), handing port and MMIO exits to the buses until something ends the run.
The layout:

=====================  ============================================================
RAM                    guest-physical 0 .. -m MiB (at most up to the MMIO hole)
COM1 (8250 UART)       ports 0x3f8-0x3ff, IRQ 4; output to the ``serial_sink`` (stdout),
                       input through :meth:`Machine.serial_input` (the console)
i8042                  ports 0x60, 0x64; command 0xfe resets the machine (ends the run)
CMOS/RTC               ports 0x70-0x71, IRQ 8 (:mod:`kvmpy.vmm.devices.cmos`; ``-rtc``)
fw_cfg                 ports 0x510 (selector), 0x511 (data): QEMU's firmware configuration
                       (signature, RAM size, CPUs, the file directory with etc/e820)
isa-debug-exit         port 0xf4 (or where ``-device isa-debug-exit,iobase=,iosize=`` puts
                       it); a write of v ends the run with status (v << 1) | 1
kvmpy test device      MMIO 0xd0000000-0xd0000fff: reads give 0x12345678, writes are
                       recorded (the demo guest checks an MMIO round trip with it)
ACPI tables            in the BIOS area (:mod:`kvmpy.vmm.acpi`): RSDP, RSDT/XSDT, FADT,
                       FACS, DSDT, MADT (one LAPIC per vCPU, the IOAPIC)
BIOS interrupt state   for a multiboot kernel or a bzImage: the 8259s at vectors 0x08/0x70
                       with the timer unmasked, the PIT ticking at 18.2 Hz, an IVT of EOI
                       and IRET handlers (:mod:`kvmpy.vmm.legacy_bios`)
ACPI PM registers      PIIX4's PM base 0xb000, as the FADT says: PM1a event block
                       0xb000-0xb003, PM1a control 0xb004-0xb005 (S5 powers off: ends the
                       run), the PM timer 0xb008-0xb00b
reset control          port 0xcf9: a write with bit 2 (6, the FADT's reset value) resets
                       the machine (ends the run)
PCI                    configuration mechanism #1 at 0xcf8/0xcfc; 00:00.0 the i440FX host
                       bridge; ``-device pci-testdev`` from 00:02.0 on; BARs assigned from
                       0xe0000000 (memory) and port 0xc000 (I/O)
pc-testdev             ``-device pc-testdev``: ports 0xe0, 0xe4, 0xe8, 0x2000-0x2017, MMIO
                       0xff000000-0xff00ffff (:mod:`kvmpy.vmm.devices.pc_testdev`)
virtio-mmio            from 0xd0001000, 4 KiB each, on the level-triggered ISA IRQs 5, 10,
                       11 (the MADT's, but the SCI's 9): the disks (``-drive``, ``--disk``,
                       ``-device virtio-blk-device,drive=ID``), then ``-device
                       virtio-rng-device``, then ``-device virtio-console-device`` (its
                       output to ``console_sink``: stdout, its input through
                       :meth:`Machine.console_input`) (:mod:`kvmpy.vmm.devices.virtio`);
                       a bzImage's or PVH kernel's command line gets
                       ``virtio_mmio.device=4K@<base>:<irq>`` for each
=====================  ============================================================

What the machine cannot do (several vCPUs without the in-kernel irqchip, an initrd or a
command line for an image that has no boot protocol, devices it lacks) it refuses with
:class:`Unsupported`, naming the option, rather than ignoring it.
"""

from __future__ import annotations

import collections
import errno
import signal
import time
import threading
from dataclasses import dataclass

from kvmpy.api import GuestMemory, Kvm, VcpuExit
from kvmpy.api.exits import IoDirection
from kvmpy.uapi import kvm as uapi
from kvmpy.vmm import bzimage, loader, multiboot, pvh
from kvmpy.vmm.cpu_setup import cpuid_for_vcpu, edit_cpu_features, setup_boot_state
from kvmpy.vmm.devices import Cmos, ConstantDevice, DebugExit, FwCfg, I8042, MmioBus, PioBus
from kvmpy.vmm.devices import Serial, cmos, debug_exit, fw_cfg, i8042, serial, testdev
from kvmpy.vmm.devices.serial import stdout_sink
from kvmpy.vmm import acpi, layout, legacy_bios
from kvmpy.vmm.devices import pc_testdev, pci, pm1
from kvmpy.vmm.devices.pci_testdev import PciTestdev
from kvmpy.vmm.devices.pm_timer import PM_TIMER_LEN, PmTimer
from kvmpy.vmm.devices.reset_control import RESET_CONTROL_PORT, ResetControl
from kvmpy.vmm.device_timer import DeviceTimer
from kvmpy.vmm.devices.virtio import console as virtio_console
from kvmpy.vmm.devices.virtio import mmio as virtio_mmio
from kvmpy.vmm.devices.virtio.blk import VirtioBlk
from kvmpy.vmm.devices.virtio.console import VirtioConsole
from kvmpy.vmm.devices.virtio.rng import VirtioRng
from kvmpy.vmm.ioeventfds import Ioeventfds
from kvmpy.vmm.qemu_options import RtcOption, port_number
from kvmpy.vmm import vcpu as vcpu_mod
from kvmpy.vmm.vcpu import PauseGate, VcpuThread, install_kick_handler

MIB = 1 << 20
MMIO_HOLE = 0xD0000000  # RAM must end below the test device
TEST_DEVICE_SIZE = 0x1000
#: the images QEMU boots through its BIOS, whose interrupt set-up they find (legacy_bios)
FIRMWARE_BOOTED = ("multiboot", "bzimage")
TSS_ADDR = 0xFFFBD000  # three pages below the BIOS area, where QEMU puts it too
RFLAGS_IF = 1 << 9
#: the PIT's lost-tick policies (QEMU's kvm-pit.lost_tick_policy)
PIT_POLICIES = ("delay", "discard")
MAX_CPUS = 64
#: the QEMU -device drivers this machine has, and the properties each takes
DEVICE_PROPERTIES = {"isa-debug-exit": ("iobase", "iosize"), "pc-testdev": (),
                     "pci-testdev": (), "virtio-blk-device": ("drive",), "virtio-rng-device": (),
                     "virtio-console-device": ()}
DEVICE_DRIVERS = tuple(DEVICE_PROPERTIES)
#: the first PCI slot of -device pci-testdev (00:01.x is the PIIX south bridge on QEMU's pc)
FIRST_PCI_DEVICE_SLOT = 2
#: the virtio-mmio devices' lines: level-triggered in the MADT, and not the SCI's
VIRTIO_IRQS = tuple(irq for irq in acpi.LEVEL_IRQS if irq != acpi.SCI_IRQ)


class Unsupported(ValueError):
    """Something asked of the machine that it does not have yet; the message names the
    option (``-smp 2``, ``-device pci-testdev``...)."""


@dataclass
class RunResult:
    """Why the run ended.

    ``reason`` is one of "hlt", "hlt-interrupts-on", "debug-exit", "reset", "poweroff",
    "shutdown", "internal-error", "fail-entry", "system-event", "timeout", "insn-limit",
    "unhandled-exit", "stopped" (the run was left by an exception), "quit" (the console's
    C-a x, the monitor's quit), "signal" (SIGTERM or SIGHUP while the terminal was raw).
    ``status`` is the isa-debug-exit status for "debug-exit", else None.
    """

    reason: str
    message: str
    status: int | None = None
    exits: int = 0


class Machine:
    """One-vCPU PC-like machine. Use as a context manager, or call :meth:`close`.

    ``max_insns`` (soft accelerator only) bounds the guest instructions of the vCPU's whole
    life: the soft kernel's ``insn_limit`` module parameter, which signals the vCPU thread
    (SIGXCPU) when they are done; :meth:`run` then ends with "insn-limit".
    """

    def __init__(self, image, *, accel="soft", memory_mib=16, fmt="auto", params=None,
                 serial_sink=stdout_sink, rtc=None, max_insns=None, smp=1, initrd=None,
                 cmdline=None, cpu_features=None, devices=(), pit=None, pit_policy=None,
                 irqchip=None, disks=(), drives=None, console_sink=stdout_sink):
        """``smp``, ``initrd``, ``cmdline``, ``devices`` (QEMU ``-device`` driver and
        properties), ``pit`` (None: the machine's default, on with the irqchip),
        ``pit_policy`` (QEMU's ``kvm-pit.lost_tick_policy``) and ``irqchip``
        (``-machine kernel-irqchip``) are what QEMU's command line asks for; those the
        machine lacks raise :class:`Unsupported` before anything is built.  ``irqchip``
        None: on for what QEMU boots with it (a kernel with a boot protocol -- bzImage,
        PVH, multiboot --, several CPUs, an explicit PIT, virtio devices, whose interrupts
        it carries), off for a bare flat or ELF image, whose HLT with interrupts off then
        ends the run instead of waiting for ever.
        ``rtc`` (:class:`~kvmpy.vmm.qemu_options.RtcOption`, QEMU's ``-rtc``): where the
        CMOS clock starts and what advances it; None: the host's UTC date and wall clock.
        ``cpu_features`` ({kvmpy feature name: on}) edit the supported CPUID the vCPU gets.
        ``disks`` [(raw image file, read-only)] become virtio-blk devices, and so do the
        ``drives`` ({id: (file, read-only)}) a ``-device virtio-blk-device,drive=ID`` names;
        ``console_sink`` takes a virtio-console's output (COM1's goes to ``serial_sink``)."""
        if memory_mib < 1 or memory_mib * MIB > MMIO_HOLE:
            raise ValueError(f"memory size must be 1..{MMIO_HOLE // MIB} MiB")
        self.device_counts = collections.Counter(driver for driver, _ in devices)
        self._check_supported(smp, pit, pit_policy, irqchip is not False)
        self.debug_exit_range = self._debug_exit_range(devices)
        self.smp = smp
        if max_insns is not None:
            if accel != "soft":
                raise ValueError("an instruction limit needs the soft accelerator")
            params = dict(params or {}, insn_limit=max_insns)
        self.max_insns = max_insns
        self.memory = GuestMemory(memory_mib * MIB)
        self.kvm = self.vm = self.vcpu = None
        self.vcpus = []
        self._stop = None
        self._device_lock = threading.Lock()
        self._aps = []
        self._run_thread = None
        self._kick_signals = False          # KICK_SIGNAL's handler is installed (main thread)
        self.pause_gate = PauseGate()
        self.rtc_timer = None
        self.virtio_devices = []            # the devices behind the virtio-mmio transports
        try:
            self._create_virtio_devices(list(disks) + self._device_drives(devices, drives or {}),
                                        console_sink)
            self.image = self._load(image, fmt, cmdline, initrd)
            acpi.install(self.memory, smp)
            self.kvm = Kvm(accel, params)
            self.vm = self.kvm.create_vm()
            if self.vm.check_extension(uapi.KVM_CAP_SET_TSS_ADDR):
                self.vm.set_tss_address(TSS_ADDR)
            self.vm.set_user_memory_region(0, 0, self.memory.size, self.memory.host_addr)
            if irqchip is None:
                irqchip = (self.image.kind not in ("flat", "elf") or smp > 1 or bool(pit)
                           or bool(self.virtio_devices))
            self.irqchip = irqchip
            if irqchip:
                self._create_irqchip(pit is not False, pit_policy)
                if self.image.kind in FIRMWARE_BOOTED:
                    legacy_bios.install(self.memory, self.vm, pit is not False)
            cpuid = edit_cpu_features(self.kvm.get_supported_cpuid(), cpu_features or {})
            for i in range(smp):
                self.vcpus.append(self.vm.create_vcpu(i))
                self.vcpus[-1].set_cpuid2(cpuid_for_vcpu(cpuid, i))     # APIC ID = vCPU index
            self.vcpu = self.vcpus[0]
            setup_boot_state(self.vcpu, self.memory, self.image)
            self._create_devices(serial_sink, rtc or RtcOption())
        except BaseException:
            self.close()
            raise

    @staticmethod
    def _check_supported(smp, pit, pit_policy, irqchip):
        if smp < 1 or smp > MAX_CPUS:
            raise Unsupported(f"-smp {smp}: 1 to {MAX_CPUS} CPUs")
        if not irqchip and smp != 1:
            raise Unsupported(f"-smp {smp}: several CPUs need the in-kernel irqchip "
                              f"(kernel-irqchip=off leaves their LAPICs out)")
        if pit and not irqchip:
            raise Unsupported("-machine pit=on: the in-kernel PIT needs the in-kernel irqchip")
        # Without a PIT a lost-tick policy has nothing to apply to; QEMU likewise leaves
        # -global of an absent device unused.
        if pit_policy is not None and pit_policy not in PIT_POLICIES:
            raise Unsupported(f"kvm-pit.lost_tick_policy={pit_policy}: "
                              f"one of {', '.join(PIT_POLICIES)}")

    def _create_irqchip(self, pit, pit_policy):
        """KVM_CREATE_IRQCHIP, then the PIT with its speaker port in the kernel, as QEMU
        creates them; the "discard" lost-tick policy turns the PIT's reinjection off."""
        self.vm.create_irqchip()
        if pit:
            self.vm.create_pit2(uapi.KVM_PIT_SPEAKER_DUMMY)
            if pit_policy == "discard":
                self.vm._ioctl(uapi.KVM_REINJECT_CONTROL, uapi.kvm_reinject_control(pit_reinject=0))

    @staticmethod
    def _device_drives(devices, drives):
        """[(file, read-only)] of each ``-device virtio-blk-device,drive=ID``, in order."""
        found = []
        for driver, props in devices:
            if driver != "virtio-blk-device":
                continue
            if props.get("drive") not in drives:
                raise Unsupported(f"-device virtio-blk-device,drive={props.get('drive', '')}: "
                                  f"no -drive with that id")
            found.append(drives[props["drive"]])
        return found

    def _create_virtio_devices(self, disks, console_sink):
        """The virtio devices (a disk's file opened), before the kernel's command line
        announces them."""
        count = (len(disks) + self.device_counts["virtio-rng-device"]
                 + self.device_counts["virtio-console-device"])
        if count > len(VIRTIO_IRQS):
            raise Unsupported(f"{count} virtio devices: at most {len(VIRTIO_IRQS)} (one per "
                              f"level-triggered ISA line: IRQs {', '.join(map(str, VIRTIO_IRQS))})")
        for path, readonly in disks:
            self.virtio_devices.append(VirtioBlk(path, readonly))
        for _ in range(self.device_counts["virtio-rng-device"]):
            self.virtio_devices.append(VirtioRng())
        for _ in range(self.device_counts["virtio-console-device"]):
            self.virtio_devices.append(VirtioConsole(console_sink))

    def _virtio_windows(self):
        """[(MMIO base, IRQ)] of each virtio device, in order."""
        return [(layout.VIRTIO_MMIO_BASE + i * virtio_mmio.WINDOW_SIZE, VIRTIO_IRQS[i])
                for i in range(len(self.virtio_devices))]

    def _announced(self, cmdline):
        """``cmdline`` with a ``virtio_mmio.device=`` parameter per virtio device."""
        return " ".join([cmdline or ""] + [virtio_mmio.kernel_parameter(base, irq)
                                           for base, irq in self._virtio_windows()]).strip()

    def _load(self, image, fmt, cmdline, initrd):
        """A bzImage goes through the Linux boot protocol, an ELF with the Xen PVH note
        through the PVH loader (before multiboot, as QEMU tries them) and a multiboot
        kernel through the multiboot loader, each with the command line and initrd; other
        images through
        :func:`loader.load`, which has nowhere to put either."""
        if fmt == "bzimage" or fmt == "auto" and bzimage.is_bzimage_file(image):
            return bzimage.load_bzimage(self.memory, image, self._announced(cmdline), initrd)
        if fmt == "pvh" or fmt == "auto" and pvh.is_pvh_file(image):
            return pvh.load_pvh(self.memory, image, self._announced(cmdline), initrd)
        if fmt == "multiboot" or fmt == "auto" and multiboot.is_multiboot_file(image):
            return multiboot.load_multiboot(self.memory, image, cmdline or "", initrd)
        loaded = loader.load(self.memory, image, fmt)     # a file it cannot load: LoadError first
        for option, given in (("-initrd", initrd), ("-append", cmdline)):
            if given is not None:
                raise Unsupported(f"{option}: {image} is neither a Linux bzImage nor a "
                                  f"PVH or multiboot kernel, the images that take it")
        return loaded

    @staticmethod
    def _debug_exit_range(devices):
        """(port, size) of isa-debug-exit: 0xf4 and one port unless a -device says; every
        -device is checked here: a driver the machine has, with properties it takes."""
        port, size = debug_exit.DEBUG_EXIT_PORT, 1
        for driver, props in devices:
            if driver not in DEVICE_DRIVERS:
                raise Unsupported(f"-device {driver}: not a device this machine has "
                                  f"(it has: {', '.join(DEVICE_DRIVERS)})")
            known = DEVICE_PROPERTIES[driver]
            unknown = set(props) - set(known)
            if unknown:
                takes = f"{', '.join(known)} are" if known else "it takes none"
                raise Unsupported(f"-device {driver}: property {sorted(unknown)[0]!r} "
                                  f"is not supported ({takes})")
            if driver == "pc-testdev" and sum(d == driver for d, _ in devices) > 1:
                raise Unsupported("-device pc-testdev: given twice (its ports are fixed)")
            if driver != "isa-debug-exit":
                continue
            port = port_number(props.get("iobase", str(port)), "iobase")
            size = port_number(props.get("iosize", str(size)), "iosize")
            if size not in (1, 2, 4) or not 0 <= port <= 0x10000 - size:
                raise Unsupported(f"-device {driver},iobase={port:#x},iosize={size:#x}: "
                                  f"iosize must be 1, 2 or 4 ports within 0..0xffff")
        return port, size

    def _create_devices(self, serial_sink, rtc):
        self.pio = PioBus()
        self.mmio = MmioBus()
        # COM1's interrupt goes to ISA IRQ 4 of the in-kernel irqchip (PIC and IOAPIC pin 4,
        # KVM's default routing); with none, the UART is polled, as on a board without a PIC
        self.serial = Serial(sink=serial_sink, irq=self._isa_irq(serial.COM1_IRQ))
        self.pio.register(serial.COM1_PORT, 8, self.serial)
        self.debug_exit = DebugExit(on_exit=lambda status: self._end(
            RunResult("debug-exit", f"guest wrote to isa-debug-exit: status {status}",
                      status)))
        self.pio.register(*self.debug_exit_range, self.debug_exit)
        self.i8042 = I8042(on_reset=lambda: self._end(
            RunResult("reset", "guest asked the i8042 to reset the machine")))
        self.pio.register(i8042.DATA_PORT, 1, self.i8042, offset=i8042.DATA)
        self.pio.register(i8042.COMMAND_PORT, 1, self.i8042, offset=i8042.COMMAND)
        self._create_rtc(rtc)
        self.fw_cfg = FwCfg(self.memory.size, self.smp)
        self.pio.register(fw_cfg.FW_CFG_PORT, fw_cfg.FW_CFG_PORTS, self.fw_cfg)
        self.test_device = ConstantDevice()
        self.mmio.register(testdev.TEST_DEVICE_ADDR, TEST_DEVICE_SIZE, self.test_device)
        self._create_pc_platform()
        self.virtio = []
        for device, (base, irq) in zip(self.virtio_devices, self._virtio_windows()):
            self.virtio.append(virtio_mmio.VirtioMmio(device, self.memory, irq, self._set_isa_irq))
            self.mmio.register(base, virtio_mmio.WINDOW_SIZE, self.virtio[-1])

    def _create_rtc(self, rtc):
        """The CMOS RTC, its time as ``-rtc`` says, its IRQ 8 (and the timer that raises it)
        with the in-kernel irqchip."""
        if rtc.base in ("utc", "localtime"):
            base = cmos.host_base(localtime=rtc.base == "localtime")
        else:
            base = cmos.epoch_seconds(rtc.base)
        clock_ns = {"host": time.time_ns, "rt": time.monotonic_ns, "vm": self._clock_ns()}
        clock = cmos.RtcClock(clock_ns[rtc.clock], base)
        irq = self._isa_irq(cmos.RTC_IRQ)
        if irq is not None:
            self.rtc_timer = DeviceTimer(lambda: self.cmos.tick(), self._device_lock, "rtc")
        self.cmos = Cmos(clock, irq=irq, timer=self.rtc_timer)
        self.pio.register(cmos.CMOS_PORT, 2, self.cmos)

    def _create_pc_platform(self):
        """What the ACPI tables describe (the PM timer, the reset register) and PCI."""
        self.reset_control = ResetControl(on_reset=lambda: self._end(
            RunResult("reset", "guest reset the machine through port 0xcf9")))
        self.pio.register(RESET_CONTROL_PORT, 1, self.reset_control)
        self.pm_timer = PmTimer(self._clock_ns())
        self.pio.register(acpi.PM_TMR_BLK, PM_TIMER_LEN, self.pm_timer)
        self.pm1 = pm1.Pm1(self.pm_timer, on_poweroff=lambda: self._end(
            RunResult("poweroff", "guest powered the machine off (ACPI S5)")))
        pm1.register(self.pio, self.pm1, acpi.PM1A_EVT_BLK, acpi.PM1A_CNT_BLK)
        self.pci = pci.PciBus(self.pio, self.mmio)
        self.pci_host = pci.PciHost(self.pci)
        self.pio.register(pci.CONFIG_ADDRESS_PORT, 1, self.pci_host, offset=pci.ADDRESS)
        self.pio.register(pci.CONFIG_ADDRESS_PORT + 2, 2, self.pci_host, offset=pci.ADDRESS + 2)
        self.pio.register(pci.CONFIG_DATA_PORT, 4, self.pci_host, offset=pci.DATA)
        self.pci.add(pci.devfn(0), pci.i440fx_host_bridge())
        self.pci_testdevs = []
        self.ioeventfds = Ioeventfds(self.vm)
        for i in range(self.device_counts["pci-testdev"]):
            self.pci_testdevs.append(PciTestdev(self.ioeventfds))
            self.pci.add(pci.devfn(FIRST_PCI_DEVICE_SLOT + i), self.pci_testdevs[-1].function)
        self.pci.assign_resources(layout.PCI_MMIO_WINDOW, layout.PCI_IO_WINDOW)
        self.pc_testdev = None
        if self.device_counts["pc-testdev"]:
            self.pc_testdev = pc_testdev.PcTestdev(set_irq=self._set_isa_irq,
                                                   flush_page=self._flush_page)
            pc_testdev.register(self.pio, self.mmio, self.pc_testdev,
                                pc_testdev.PcTestdevMemory())

    def _clock_ns(self):
        """The VM's clock (KVM_GET_CLOCK), or the host's monotonic one on a KVM without it."""
        if self.vm.check_extension(uapi.KVM_CAP_ADJUST_CLOCK):
            return self.vm.get_clock
        return time.monotonic_ns

    def _isa_irq(self, line):
        """A device's ``irq(level)`` callable for ISA line ``line``, or None without an
        in-kernel irqchip."""
        if not self.irqchip:
            return None
        return lambda level: self._set_isa_irq(line, level)

    def serial_input(self, data):
        """Bytes from the console for COM1, as if they had arrived on its line (from any
        thread: the device lock keeps them apart from the vCPUs' accesses)."""
        with self._device_lock:
            self.serial.enqueue_input(data)

    def console_input(self, data):
        """Bytes from the console for each virtio-console (Linux's hvc0), from any thread:
        they fill the receive buffers the driver has left, and the rest waits for more."""
        with self._device_lock:
            for transport in self.virtio:
                if isinstance(transport.device, VirtioConsole):
                    transport.device.enqueue_input(data)
                    transport.process(virtio_console.RECEIVEQ)

    @property
    def has_virtio_console(self):
        return any(isinstance(device, VirtioConsole) for device in self.virtio_devices)

    def _set_isa_irq(self, line, level):
        """An ISA interrupt line to the in-kernel irqchip. KVM answers ENXIO while the VM
        has none: the line then goes nowhere, as on a board with no PIC wired."""
        try:
            self.vm.set_irq_line(line, level)
        except OSError as e:
            if e.errno != errno.ENXIO:
                raise

    def _flush_page(self, gpa):
        if self.memory.contains(gpa, 1):
            self.memory.invalidate(gpa, 1)

    def close(self):
        if self.rtc_timer is not None:
            self.rtc_timer.close()
        if getattr(self, "ioeventfds", None) is not None:
            self.ioeventfds.close()
        for device in self.virtio_devices:
            device.close()
        for obj in (*self.vcpus, self.vm, self.kvm):
            if obj is not None:
                obj.close()
        self.memory.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- the run loop ---------------------------------------------------------

    def _end(self, result):
        """The run ends with ``result`` (the first to come wins); every vCPU is kicked out
        of KVM_RUN."""
        if self._stop is None:
            self._stop = result
        self._kick_all()

    def _kick_all(self):
        """Every vCPU out of KVM_RUN: the APs' threads, and the BSP's when this is not its
        thread (on its own thread the BSP is not in KVM_RUN)."""
        for ap in self._aps:
            ap.kick(self._kick_signals)
        if self._run_thread is not None and threading.current_thread() is not self._run_thread:
            self.vcpu.immediate_exit = True             # the BSP, on the thread of run()
            if self._kick_signals:
                signal.pthread_kill(self._run_thread.ident, vcpu_mod.KICK_SIGNAL)

    def request_stop(self, result):
        """End the run with ``result`` from any thread or a signal handler (the console's
        C-a x, the monitor's quit, SIGTERM)."""
        self._end(result)
        self.vcpu.immediate_exit = True

    def paused(self):
        """Context manager: every vCPU waits outside KVM_RUN meanwhile, so its registers can
        be read (from another thread than the vCPUs')."""
        return self.pause_gate.paused(self._kick_all)

    def pause(self):
        """The monitor's ``stop``: the vCPUs wait outside KVM_RUN until :meth:`resume`."""
        self.pause_gate.pause(self._kick_all)

    def resume(self):
        self.pause_gate.resume()

    def run(self, timeout=None):
        """Run until the guest ends, ``timeout`` seconds pass, or the vCPU has retired the
        machine's ``max_insns``; returns a :class:`RunResult`.

        Both bounds stop the vCPU the way the kernel lets user space stop it: a signal
        (SIGALRM from a timer, SIGXCPU from the soft kernel's instruction limit) ends a
        KVM_RUN in progress with EINTR, and its handler sets ``immediate_exit`` so that a
        signal that arrived between two KVM_RUNs makes the next one return at once.  The
        handlers only record why the run ends; nothing is raised through the vCPU.
        """
        self._stop = None
        self._run_thread = threading.current_thread()
        exits = 0
        with _RunBounds(self, timeout), self.pause_gate.running():
            self._start_aps()
            try:
                while self._stop is None:
                    if self.pause_gate.park(self.vcpu, lambda: self._stop is not None):
                        continue
                    try:
                        exit_ = self.vcpu.run()
                        exits += 1          # the guest's exits (a kick's EINTR is not one)
                    except InterruptedError:
                        exit_ = VcpuExit.Intr()
                    self._locked_dispatch(exit_)
            finally:
                self._stop_aps()
        self._stop.exits = exits
        return self._stop

    def _start_aps(self):
        for vcpu in self.vcpus[1:]:
            vcpu.immediate_exit = False
            self._aps.append(VcpuThread(vcpu, self._locked_dispatch, lambda: self._stop is not None,
                                        self._ap_failed, self.pause_gate))
        for ap in self._aps:
            ap.start()

    def _stop_aps(self):
        if self._stop is None:
            self._stop = RunResult("stopped", "the run was interrupted")
        for ap in self._aps:
            ap.kick(self._kick_signals)
        for ap in self._aps:
            ap.join()
        self._aps = []

    def _ap_failed(self, vcpu, exc):
        with self._device_lock:
            self._end(RunResult("internal-error", f"vCPU {vcpu.id}: {exc!r}"))

    def _locked_dispatch(self, exit_):
        with self._device_lock:
            self._dispatch(exit_)

    def _dispatch(self, exit_):
        if isinstance(exit_, VcpuExit.Io):
            self._handle_io(exit_)
        elif isinstance(exit_, VcpuExit.Mmio):
            self._handle_mmio(exit_)
        elif isinstance(exit_, VcpuExit.Hlt):
            if self.vcpu.get_regs().rflags & RFLAGS_IF:
                self._end(RunResult("hlt-interrupts-on",
                                    "guest halted with interrupts enabled, and this "
                                    "machine has no interrupt source: stopping"))
            else:
                self._end(RunResult("hlt", "guest halted"))
        elif isinstance(exit_, VcpuExit.Shutdown):
            self._end(RunResult("shutdown", "guest shut down (triple fault)"))
        elif isinstance(exit_, VcpuExit.InternalError):
            self._end(RunResult("internal-error", exit_.describe()))
        elif isinstance(exit_, VcpuExit.FailEntry):
            self._end(RunResult(
                "fail-entry", f"VM entry failed: hardware reason "
                f"{exit_.hardware_entry_failure_reason:#x} on cpu {exit_.cpu}"))
        elif isinstance(exit_, VcpuExit.SystemEvent):
            self._end(RunResult("system-event", f"system event type {exit_.type}"))
        elif isinstance(exit_, (VcpuExit.Intr, VcpuExit.IrqWindowOpen)):
            pass                    # a bound's signal handler has said whether to stop
        else:
            self._end(RunResult("unhandled-exit", f"unhandled exit {exit_.name}: {exit_}"))

    def _handle_io(self, exit_):
        size = exit_.size
        if exit_.direction == IoDirection.OUT:
            for i in range(exit_.count):
                chunk = exit_.data[i * size:(i + 1) * size]
                self.pio.write(exit_.port, size, int.from_bytes(chunk, "little"))
        else:
            exit_.set_data(b"".join(
                self.pio.read(exit_.port, size).to_bytes(size, "little")
                for _ in range(exit_.count)))

    def _handle_mmio(self, exit_):
        if exit_.is_write:
            self.mmio.write(exit_.addr, exit_.size, exit_.value)
        else:
            exit_.set_data(self.mmio.read(exit_.addr, exit_.size))


class _RunBounds:
    """Context manager: the signal handlers and the timer of one run's bounds."""

    def __init__(self, machine, timeout):
        self.machine = machine
        self.handlers = {}
        if timeout is not None:
            self.timeout = timeout
            self.handlers[signal.SIGALRM] = lambda signum, frame: self._stop(
                RunResult("timeout", f"timed out after {timeout:g} s"))
        if machine.max_insns is not None:
            self.handlers[signal.SIGXCPU] = lambda signum, frame: self._stop(
                RunResult("insn-limit", f"stopped after {machine.max_insns} instructions"))
        self.previous = {}

    def _stop(self, result):
        self.machine._end(result)
        self.machine.vcpu.immediate_exit = True

    def __enter__(self):
        # the kick gets a vCPU out of a KVM_RUN blocked in the kernel (an AP's, or the
        # BSP's when the console, the monitor or another vCPU ends or pauses the run)
        if threading.current_thread() is threading.main_thread():
            self.previous[vcpu_mod.KICK_SIGNAL] = install_kick_handler()
            self.machine._kick_signals = True
        if not self.handlers:
            return
        if threading.current_thread() is not threading.main_thread():
            raise ValueError("a run bound needs the main thread (signal handlers)")
        for signum, handler in self.handlers.items():
            self.previous[signum] = signal.signal(signum, handler)
        if signal.SIGALRM in self.handlers:
            signal.setitimer(signal.ITIMER_REAL, self.timeout)

    def __exit__(self, *exc):
        self.machine._kick_signals = False
        if not self.handlers:
            for signum, handler in self.previous.items():
                signal.signal(signum, handler)
            return
        if signal.SIGALRM in self.handlers:
            signal.setitimer(signal.ITIMER_REAL, 0)
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)
        self.machine.vcpu.immediate_exit = False
