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
    "o2f.data.commands",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="o2f", description="End-to-end (NMS-free) dense object detection with o2f.")
    parser.add_argument("--debug", action="store_true",
                        help="show the traceback of a config, data or checkpoint error (also: "
                        "O2F_DEBUG=1); anywhere on the command line")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(name).register(sub)
    return parser


def _user_error_types() -> tuple[type[Exception], ...]:
    """The errors that are the user's to fix, named in their message: printed as one line."""
    from o2f.config import ConfigError
    from o2f.data.errors import DataError
    from o2f.engine.checkpoint import CheckpointError

    return ConfigError, DataError, CheckpointError, FileNotFoundError


def error_line(err: BaseException) -> str:
    """``err``'s message on one line. An error re-raised from a DataLoader worker carries the
    worker's traceback in its message: only its last line (the original message) is kept."""
    text = str(err)
    if "Original Traceback" in text:
        last = [line for line in text.splitlines() if line.strip()][-1]
        text = last.split(": ", 1)[1] if ": " in last else last
    return " ".join(text.split())


def main(argv: list[str] | None = None) -> int:
    """Run the ``o2f`` command. A config, data or checkpoint error (a missing file included)
    prints ``o2f: error: MESSAGE`` and returns 2; with ``--debug`` or ``O2F_DEBUG=1`` it is
    raised with its traceback. Any other error is raised as it is."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv or os.environ.get("O2F_DEBUG", "").strip() not in ("", "0")
    argv = [a for a in argv if a != "--debug"]
    try:
        return _run(argv)
    except Exception as err:
        if debug or not isinstance(err, _user_error_types()):
            raise
        print(f"o2f: error: {error_line(err)}", file=sys.stderr)
        return 2


def _run(argv: list[str]) -> int:
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
