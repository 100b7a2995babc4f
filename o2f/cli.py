"""The ``o2f`` command. Each sub-command lives in its own module with a ``register`` function
that adds its parser to the sub-parsers and sets ``func(args) -> int``."""

from __future__ import annotations

import argparse
import importlib
import os
import sys

# libgomp (torch's OpenMP on Linux) reads OMP_WAIT_POLICY once, when torch is first imported.
# Its default spin-waiting made a small training step up to 8x slower whenever another process
# (a data-loader worker, another job) held a core; PASSIVE threads sleep instead. Set before
# anything imports torch (the sub-command modules are imported in build_parser), and only when
# the user has not chosen.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

# module paths of the sub-commands, in the order ``o2f --help`` lists them
COMMANDS = [
    "o2f.engine.commands",
    "o2f.engine.demo",
    "o2f.deploy.commands",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="o2f", description="End-to-end (NMS-free) dense object detection with o2f.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    # key=value overrides may come before or after options, which argparse's positional
    # matching does not allow on its own: collect the stray ones here.
    args, extra = parser.parse_known_args(argv)
    stray = [a for a in extra if a.startswith("-") or "=" not in a]
    if stray or (extra and not hasattr(args, "overrides")):
        parser.error(f"unrecognized arguments: {' '.join(stray or extra)}")
    if extra:
        args.overrides = [*args.overrides, *extra]
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
