"""Instruction semantics, one module per group; importing registers the emitters."""

from . import alu, control, io, mov, system  # noqa: F401
from . import shift  # noqa: F401
from . import bits  # noqa: F401
from . import string  # noqa: F401
from . import atomic  # noqa: F401
from . import sse  # noqa: F401
from . import x87  # noqa: F401
from . import mmx  # noqa: F401
from . import movbe_crc32  # noqa: F401
