"""The command-line flags of every setting, generated from its declaration.

``wsgi-tracker serve``, ``wsgi-tracker config`` and ``udp-sidecar`` all call
:func:`add_setting_flags`, so each setting has the same flag everywhere
(``--numwant-max 55``, ``--full-scrape``/``--no-full-scrape``, a list flag
repeated once per item) and no command writes one by hand.
"""

from __future__ import annotations

import argparse
from typing import Any

from wsgi_tracker.config import SETTINGS, Layer

_DEST = "setting:"
_METAVAR = {"int": "N", "float": "SECONDS", "str": "TEXT", "list": "ITEM"}


def add_setting_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "settings",
        "each also read from the TOML file and its WSGI_TRACKER_* variable (docs/CONFIG.md)",
    )
    for s in SETTINGS:
        shown = s.shown_default
        help_text = f"{s.doc} (default: {shown})".replace("%", "%%")
        common: dict[str, Any] = {"dest": _DEST + s.name, "default": argparse.SUPPRESS}
        if s.kind == "bool":
            group.add_argument(
                s.flag, action=argparse.BooleanOptionalAction, help=help_text, **common
            )
        elif s.kind == "list":
            group.add_argument(
                s.flag, action="append", metavar=_METAVAR["list"], help=help_text, **common
            )
        else:
            group.add_argument(s.flag, metavar=_METAVAR[s.kind], help=help_text, **common)


def flag_layer(args: argparse.Namespace) -> Layer:
    """The settings given as flags, as a layer for ``load_with_sources`` (ConfigError if bad)."""
    given = vars(args)
    values: dict[str, tuple[Any, str]] = {}
    for s in SETTINGS:
        raw = given.get(_DEST + s.name)
        if raw is None:
            continue
        if s.kind == "list":
            value: Any = tuple(raw)
        elif s.kind == "bool":
            value = raw
        else:
            value = s.from_text(raw, s.flag)
        values[s.name] = (value, f"flag {s.flag}")
    return ("flag", values)


def layer_env(layer: Layer) -> dict[str, str]:
    """A layer's settings as ``WSGI_TRACKER_*`` variables, to hand them to child processes."""
    by_name = {s.name: s for s in SETTINGS}
    return {by_name[n].env: by_name[n].to_text(v) for n, (v, _) in layer[1].items()}
