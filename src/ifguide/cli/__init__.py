"""The ``ifguide`` command line.

Each verb lives in its own module in this package and exposes ``register(subparsers)``,
which adds its parser and sets ``func`` (a thin wrapper over a library function). Verbs
are discovered automatically, so adding a verb means adding a module. Bad input
(:class:`ifguide.errors.InputError`) becomes a one-line message and exit code 2.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import pkgutil
import sys

from ifguide.errors import EXIT_INPUT_ERROR, InputError, TrainingDiverged

logger = logging.getLogger("ifguide")


def build_parser() -> argparse.ArgumentParser:
    from ifguide import __version__

    parser = argparse.ArgumentParser(
        prog="ifguide",
        description="IF-Guide: find the training tokens that teach toxicity with influence functions "
        "and suppress them while the model trains.",
    )
    parser.add_argument("--version", action="version", version=f"ifguide {__version__}")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    sub = parser.add_subparsers(dest="verb", metavar="VERB")
    # Verbs are listed in the order data flows through them; unknown modules come last.
    order = ["foundation", "attribution", "selection", "evaluation", "baselines", "pipeline"]
    rank = {name: k for k, name in enumerate(order)}
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: (rank.get(m.name, len(order)), m.name)):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        if hasattr(module, "register"):
            module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=getattr(logging, args.log_level),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_INPUT_ERROR
    try:
        rc = args.func(args)
    except InputError as e:
        print(f"ifguide {args.verb}: error: {e}", file=sys.stderr)
        return EXIT_INPUT_ERROR
    except TrainingDiverged as e:
        print(f"ifguide {args.verb}: training stopped: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"ifguide {args.verb}: interrupted", file=sys.stderr)
        return 130
    return int(rc or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
