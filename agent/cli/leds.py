"""``edge-agent leds``: what each status LED means; ``--test`` shows every pattern."""

from __future__ import annotations

import argparse
import sys

from agent.cli.common import load_config
from agent.errors import UsageError
from agent.field.leds import walk_patterns
from agent.field.patterns import SIGNALS
from agent.field.settings import LED_NAMES

NAME = "leds"
HELP = "list the status LEDs and what they mean; --test shows every pattern on each"
DEFAULT_STEP = 3.0
MAX_STEP = 60.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``--test`` and how long each pattern shows."""
    parser.add_argument(
        "--test", action="store_true", help="walk through every pattern on every fitted LED"
    )
    parser.add_argument(
        "--step",
        type=float,
        default=DEFAULT_STEP,
        metavar="SECONDS",
        help=f"how long each pattern shows during --test (default {DEFAULT_STEP:g})",
    )


def run(args: argparse.Namespace) -> int:
    """List the LEDs, or walk the patterns (LedError exits 1 in main)."""
    config = load_config(args)
    if not 0 < args.step <= MAX_STEP:
        raise UsageError(f"--step: give 0-{MAX_STEP:g} seconds, not {args.step:g}")
    if args.test:
        walk_patterns(config.leds, sys.stdout, step=args.step)
        return 0
    _describe(config.leds.pins())
    return 0


def _describe(pins: dict[str, int]) -> None:
    """Each LED's pin and the patterns it shows."""
    for name in LED_NAMES:
        where = f"GPIO{pins[name]}" if name in pins else "not fitted"
        print(f"{name} ({where})")
        for signal in SIGNALS:
            if signal.led == name:
                print(f"  {signal.pattern.name:<11} {signal.meaning}")
