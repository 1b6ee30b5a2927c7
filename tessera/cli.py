"""The ``tessera`` console command. Each subcommand lives beside the code it drives and
registers itself through a ``register(subparsers)`` function."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from tessera.errors import TesseraError

# Modules that contribute subcommands, in the order they are listed in --help.
COMMAND_MODULES = [
    "tessera.training.cli",  # train
    "tessera.eval.cli",  # eval
    "tessera.index.cli",  # index, bench search
    "tessera.service.cli",  # serve, search
    "tessera.loadtest.run",  # bench load
    "tessera.demo",  # demo
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tessera", description="Multi-vector retrieval: train, evaluate, index, serve."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name and (exc.name == name or name.startswith(exc.name + ".")):
                continue  # that part of Tessera is not present
            raise
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        return int(args.func(args) or 0)
    except TesseraError as exc:
        print(f"tessera {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"tessera {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
