"""QEMU's spellings of ``kvmpy run``'s options, parsed into plain values.

kvm-unit-tests, CI scripts and people start guests with QEMU's command line
(``-kernel F -smp 2 -m 64 -cpu qemu64,+x2apic -device isa-debug-exit,iobase=0xf4``), so
``kvmpy run`` takes it beside its own. This module only *parses*: each function turns one
option's text into a value or raises :class:`OptionError` with a one-line message naming
what is wrong. Whether the machine can do what was asked is the machine's to say
(:class:`kvmpy.vmm.machine.Unsupported`), so a feature that lands later is accepted there,
without touching the parsing.
"""

from __future__ import annotations

import datetime
import re
from dataclasses import dataclass, field

MIB = 1 << 20
#: QEMU's size suffixes (qemu_strtosz: a bare number is MiB for -m)
SIZE_SUFFIXES = {"b": 1, "k": 1 << 10, "m": MIB, "g": 1 << 30, "t": 1 << 40}
#: QEMU's feature names that differ from kvmpy's (kvmpy.hw.features, /proc/cpuinfo's)
#: after QEMU's own folding of '-' and '.' to '_'
FEATURE_ALIASES = {"tsc_deadline": "tsc_deadline_timer", "xd": "nx", "i64": "lm",
                   "pclmuldq": "pclmulqdq"}


class OptionError(ValueError):
    """A malformed option value (exit status 2, one line)."""


def split_props(text):
    """QEMU's ``a=b,c=d,flag`` list: (name or None, value) pairs in order; ``,,`` is a comma."""
    parts, cur = [], ""
    i = 0
    while i < len(text):
        if text[i] == ",":
            if text[i + 1:i + 2] == ",":
                cur += ","
                i += 2
                continue
            parts.append(cur)
            cur = ""
        else:
            cur += text[i]
        i += 1
    parts.append(cur)
    out = []
    for part in parts:
        name, sep, value = part.partition("=")
        out.append((name, value) if sep else (None, part))
    return out


def memory_size(text):
    """``-m``: ``SIZE`` or ``size=SIZE``, a bare number in MiB or with QEMU's suffixes
    (K, M, G, T; B for bytes), to a whole number of MiB."""
    if text.startswith("size="):
        text = text[len("size="):]
    m = re.fullmatch(r"(\d+(?:\.\d+)?)([bBkKmMgGtT]?)", text.strip())
    if not m:
        raise OptionError(f"invalid int value: {text!r} (MiB, or a size with K, M, G or T)")
    number, suffix = m.groups()
    scale = SIZE_SUFFIXES[suffix.lower()] if suffix else MIB
    size = float(number) * scale if "." in number else int(number) * scale
    if size % MIB:
        raise OptionError(f"{text}: not a whole number of MiB")
    return int(size) // MIB


@dataclass
class SmpOption:
    """``-smp``: the vCPU count and the topology it was given as (QEMU's pc default:
    one socket per CPU, one core, one thread)."""

    cpus: int
    sockets: int
    cores: int = 1
    threads: int = 1


def smp(text):
    """``-smp N[,cpus=N][,sockets=S][,cores=C][,threads=T][,maxcpus=M]``."""
    values = {}
    for name, value in split_props(text):
        key = name or "cpus"
        if key not in ("cpus", "sockets", "cores", "threads", "maxcpus", "dies"):
            raise OptionError(f"-smp {text}: unknown property {key!r}")
        if not value.isdigit() or int(value) < 1:
            raise OptionError(f"-smp {text}: {key}={value}: not a positive whole number")
        values[key] = int(value)
    cores, threads, dies = values.get("cores", 1), values.get("threads", 1), values.get("dies", 1)
    per_socket = cores * threads * dies
    cpus = values.get("cpus") or values.get("sockets", 1) * per_socket
    sockets = values.get("sockets", -(-cpus // per_socket))
    if sockets * per_socket != cpus:
        raise OptionError(f"-smp {text}: sockets ({sockets}) * dies ({dies}) * cores ({cores}) "
                          f"* threads ({threads}) != cpus ({cpus})")
    if values.get("maxcpus", cpus) != cpus:
        raise OptionError(f"-smp {text}: maxcpus other than cpus (CPU hotplug) is not supported")
    if per_socket != 1:
        raise OptionError(f"-smp {text}: only one core of one thread per socket is supported "
                          f"(kvmpy's CPU models describe that topology)")
    return SmpOption(cpus, sockets)


@dataclass
class CpuOption:
    """``-cpu``: the model name and feature edits, ``{kvmpy feature name: on}``; ``text``
    is the option as given, for messages."""

    text: str
    model: str
    features: dict = field(default_factory=dict)


def feature_name(qemu_name):
    """kvmpy's name (kvmpy.hw.features) of a QEMU CPU feature name, or None if unknown."""
    from kvmpy.hw.features import FEATURES    # local: parsing loads no more than it needs
    name = re.sub(r"[-.]", "_", qemu_name.lower())
    name = FEATURE_ALIASES.get(name, name)
    return name if name in FEATURES else None


def cpu(text):
    """``-cpu MODEL[,+feat][,-feat][,feat=on|off]``: QEMU's model and feature names."""
    props = split_props(text)
    model = props[0][1] if props[0][0] is None else ""
    if not model:
        raise OptionError(f"-cpu {text}: no CPU model name")
    option = CpuOption(text, model)
    for name, value in props[1:]:
        if name is None and value[:1] in ("+", "-"):
            feat, on = value[1:], value[0] == "+"
        elif name is None:
            feat, on = value, True        # QEMU: a bare name is name=on
        elif value in ("on", "off", "true", "false"):
            feat, on = name, value in ("on", "true")
        else:
            raise OptionError(f"-cpu {text}: CPU property {name}={value} is not supported")
        kvmpy_name = feature_name(feat)
        if kvmpy_name is None:
            raise OptionError(f"-cpu {text}: {feat!r} is not a CPU feature or property "
                              f"kvmpy supports")
        option.features[kvmpy_name] = on
    return option


def device(text):
    """``-device DRIVER[,prop=value...]``: (driver, {prop: value})."""
    props = split_props(text)
    driver = props[0][1] if props[0][0] is None else ""
    if not driver:
        raise OptionError(f"-device {text}: no device driver name")
    values = {}
    for name, value in props[1:]:
        if name is None:
            raise OptionError(f"-device {text}: {value!r}: expected prop=value")
        values[name] = value
    return driver, values


@dataclass
class DriveOption:
    """``-drive``'s disk: the raw image file, read-only or not; ``id`` names it for a
    ``-device virtio-blk-device,drive=ID`` when ``interface`` is "none"."""

    file: str
    readonly: bool = False
    interface: str = "virtio"
    id: str = ""


#: the -drive properties kvmpy takes (its disks are virtio-blk on raw images)
DRIVE_PROPS = "file=, if=virtio|none, id=, format=raw, readonly=on|off"


def drive(text):
    """``-drive file=FILE,if=virtio[,format=raw][,readonly=on|off]``: a virtio disk, or
    with ``if=none,id=ID`` the image a ``-device virtio-blk-device,drive=ID`` uses (QEMU's
    microvm spelling).  QEMU's default interface (IDE) and image formats other than raw
    are refused by name."""
    option, given = DriveOption(""), {}
    for name, value in split_props(text):
        if name is None:
            raise OptionError(f"-drive {text}: {value!r}: expected prop=value")
        given[name] = value
    for name, value in given.items():
        if name == "file":
            option.file = value
        elif name == "id":
            option.id = value
        elif name == "if":
            if value not in ("virtio", "none"):
                raise OptionError(f"-drive {text}: if={value}: kvmpy's disks are virtio "
                                  f"(if=virtio, or if=none for -device virtio-blk-device)")
            option.interface = value
        elif name == "format" and value != "raw":
            raise OptionError(f"-drive {text}: format={value}: only raw images are supported")
        elif name == "readonly":
            option.readonly = on_off(value, "readonly")
        elif name != "format":
            raise OptionError(f"-drive {text}: {name}={value}: not supported ({DRIVE_PROPS} are)")
    if not option.file:
        raise OptionError(f"-drive {text}: no file=")
    if "if" not in given:
        raise OptionError(f"-drive {text}: give if=virtio (QEMU's default interface is IDE, "
                          f"which kvmpy does not have)")
    if option.interface == "none" and not option.id:
        raise OptionError(f"-drive {text}: if=none needs an id= for -device virtio-blk-device")
    return option


def machine(text):
    """``-machine [TYPE][,prop=value...]``: {prop: value}, the type as "type"."""
    values = {}
    for name, value in split_props(text):
        if name is None:
            if not value:
                continue
            if "type" in values:
                raise OptionError(f"-machine {text}: {value!r}: expected prop=value")
            name = "type"
        values[name] = value
    return values


#: -rtc clock= values: what advances the RTC (QEMU's host, rt, vm)
RTC_CLOCKS = ("host", "rt", "vm")


@dataclass
class RtcOption:
    """``-rtc``: the RTC's start (``base``: "utc", "localtime" or a naive datetime) and the
    clock that advances it (host: the host's wall clock; rt: its monotonic clock; vm: the
    VM's own, KVM_GET_CLOCK)."""

    base: object = "utc"
    clock: str = "host"


def rtc(text):
    """``-rtc [base=utc|localtime|DATE][,clock=host|rt|vm][,driftfix=none]``, DATE as
    QEMU takes it: ``2006-06-17T16:01:21`` or ``2006-06-17``."""
    option = RtcOption()
    for name, value in split_props(text):
        if name == "base":
            option.base = value if value in ("utc", "localtime") else _rtc_date(value)
        elif name == "clock":
            if value not in RTC_CLOCKS:
                raise OptionError(f"-rtc clock={value}: expected one of {', '.join(RTC_CLOCKS)}")
            option.clock = value
        elif name == "driftfix":
            if value != "none":
                raise OptionError(f"-rtc driftfix={value}: only none (kvmpy's RTC does not "
                                  f"re-inject lost interrupts)")
        else:
            raise OptionError(f"-rtc {text}: {name or value!r}: expected base=, clock= or "
                              f"driftfix=")
    return option


def _rtc_date(text):
    for layout in ("%Y-%m-%dT%H:%M:%S", "%Y-%m-%d"):
        try:
            return datetime.datetime.strptime(text, layout)
        except ValueError:
            continue
    raise OptionError(f"-rtc base={text}: expected utc, localtime, YYYY-MM-DDTHH:MM:SS or "
                      f"YYYY-MM-DD")


def global_property(text):
    """``-global DRIVER.PROP=VALUE``: (driver, prop, value)."""
    m = re.fullmatch(r"([^.=]+)\.([^=]+)=(.*)", text)
    if not m:
        raise OptionError(f"-global {text}: expected DRIVER.PROP=VALUE")
    return m.groups()


def port_number(text, what):
    """A device property's number, in C notation (0xf4, 244)."""
    try:
        return int(text, 0)
    except ValueError:
        raise OptionError(f"{what}={text}: not a number") from None


def on_off(text, what):
    """QEMU's boolean property spellings."""
    if text in ("on", "yes", "true", "y"):
        return True
    if text in ("off", "no", "false", "n"):
        return False
    raise OptionError(f"{what}={text}: expected on or off")
