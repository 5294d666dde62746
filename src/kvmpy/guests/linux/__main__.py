"""``python -m kvmpy.guests.linux build|initramfs|check`` (see the package docstring)."""

import argparse
import json
import sys

from kvmpy.guests.linux import build as recipe
from kvmpy.guests.linux.initramfs import BUSYBOX, build_initramfs


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m kvmpy.guests.linux")
    p.add_argument("step", choices=("build", "initramfs", "check"))
    p.add_argument("--source", default=recipe.SOURCE_TARBALL, help="linux-source tarball")
    p.add_argument("--work-dir", default=recipe.WORK_DIR, help="where to unpack and build")
    p.add_argument("-j", "--jobs", type=int, default=2)
    p.add_argument("--busybox", default=BUSYBOX, help="a static busybox (initramfs)")
    p.add_argument("-o", "--output", default="initramfs.cpio.gz", help="the initramfs file")
    args = p.parse_args(argv)
    try:
        if args.step == "build":
            print(json.dumps(recipe.build(args.source, args.work_dir, args.jobs), indent=2))
        elif args.step == "initramfs":
            with open(args.output, "wb") as f:
                f.write(build_initramfs(args.busybox))
            print(f"wrote {args.output}")
        else:
            problems = recipe.check()
            for line in problems:
                print(line, file=sys.stderr)
            return 1 if problems else 0
    except recipe.BuildError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
