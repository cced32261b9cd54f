"""The `neuralign` command: one entry point whose sub-commands call the library functions.

Each package's commands live in their own small module (`cli_models`, `cli_train`, `cli_data`, `cli_pipeline`,
`cli_flows`), each exposing `add_commands(subparsers)`; handlers are set with `set_defaults(handler=...)`
and return an exit code (or None for 0).
"""
from __future__ import annotations

import argparse
import importlib
import sys

COMMAND_MODULES = (
    "flows.cli_models",
    "flows.cli_train",
    "flows.cli_data",
    "flows.cli_pipeline",
    "flows.cli_flows",
)

# User mistakes (bad names, bad files, bad values) surface as these; anything else is a bug and keeps
# its traceback.
USER_ERRORS = (ValueError, LookupError, OSError)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="neuralign",
        description="Train networks under credit-assignment rules and score how well they predict V4 and IT.",
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module_name in COMMAND_MODULES:
        importlib.import_module(module_name).add_commands(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.handler(args) or 0)
    except USER_ERRORS as error:
        print(f"neuralign {args.command}: error: {message(error)}", file=sys.stderr)
        return 2


def message(error: BaseException) -> str:
    """The error's text, without the quotes KeyError puts around it."""
    from flows.workspace import error_text

    return error_text(error)


if __name__ == "__main__":
    sys.exit(main())
