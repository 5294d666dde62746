"""Record this machine's silicon answers to the vendor-specific cases (``vendor_cases``).

    python -m tests.oracle.record [--model NAME] [--out FILE]

writes ``tests/data/silicon/<vendor>-<model>.json``: the machine it ran on (CPU name,
family/model/stepping, microcode, kernel), the kvmpy CPU model it is to be checked against
(default: the model of this machine's vendor) and each case's observations.  Those files are
checked on every host by ``tests/diff/test_silicon_records.py``.
"""

import argparse
import json
import pathlib
import sys

from kvmpy.hw import models
from tests.support import hostinfo
from tests.oracle import native, vendor_cases

DATA_DIR = pathlib.Path(__file__).resolve().parent.parent / "data" / "silicon"


def record(model_name: str) -> dict:
    model = models.lookup(model_name)
    return {"source": "silicon", "model": model.name, "machine": hostinfo.describe(),
            "results": vendor_cases.run_all(native.run_native)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="host", help="kvmpy CPU model to check the record against")
    parser.add_argument("--out", help="output file (default: tests/data/silicon/<vendor>-<model>.json)")
    args = parser.parse_args(argv)
    reason = native.unavailable_reason()
    if reason:
        print(f"record: the native oracle is unavailable: {reason}", file=sys.stderr)
        return 1
    try:
        data = record(args.model)
    except KeyError as e:
        print(f"record: {e.args[0]}", file=sys.stderr)
        return 2
    vendor = "amd" if models.lookup(args.model).is_amd else "intel"
    out = pathlib.Path(args.out) if args.out else DATA_DIR / f"{vendor}-{data['model']}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(data, indent=1) + "\n")
    print(f"recorded {len(data['results'])} cases on {data['machine']['cpu']} to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
