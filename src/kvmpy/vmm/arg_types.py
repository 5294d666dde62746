"""argparse value types the ``kvmpy`` subcommands share."""

import argparse


def positive_int(text):
    """A whole number > 0 (--max-insns, -j)."""
    try:
        value = int(text, 10)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: not a whole number") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text}: must be positive")
    return value
