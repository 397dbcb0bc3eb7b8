"""How a tracker setting is declared, read from text, checked and documented.

gunicorn's ``config.py`` model: each setting is declared once, as a field of
``TrackerConfig`` made by :func:`setting` (default, doc, and optionally its
check and the settings its default follows). Everything
else is derived from that one declaration by the :class:`Setting` view: the
``WSGI_TRACKER_*`` variable, the flag of both commands, the TOML key, the
conversion from text, the error messages and ``docs/CONFIG.md``. Nothing here
knows a particular setting.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

ENV_PREFIX = "WSGI_TRACKER_"


class ConfigError(ValueError):
    """A setting is missing, malformed or out of range; the message names it."""


@dataclass(frozen=True)
class Check:
    """A rule one value must follow; ``rule`` completes "<setting> must ..." in errors and docs."""

    rule: str
    ok: Callable[[Any], bool]


def between(low: int, high: int) -> Check:
    return Check(f"be {low}-{high}", lambda v: low <= v <= high)


def one_of(*choices: str) -> Check:
    return Check(f"be one of {', '.join(choices)}", lambda v: v.lower() in choices)


def _is_url_path(v: str) -> bool:
    """'/x/y': what a client can send as it is and the middleware matches exactly (a path
    ending in '/' would make its passkey paths '//...')."""
    return (
        len(v) > 1
        and v.startswith("/")
        and not v.endswith("/")
        and "//" not in v
        and not any(c in v for c in " ?#%")
        and v.isprintable()
    )


def url_path(optional: bool = False) -> Check:
    """A path the middleware matches on: '/x/y' (``_is_url_path``), or empty if ``optional``."""
    rule = "start and not end with '/', with no '//', spaces, '?', '#' or '%'"
    if optional:
        return Check(f"be empty or {rule}", lambda v: not v or _is_url_path(v))
    return Check(rule, _is_url_path)


@dataclass(frozen=True)
class Follows:
    """A default computed from other settings, so that setting one brings this one with it.

    ``on`` names settings declared earlier; ``compute`` takes their values in
    that order; ``rule`` is how the docs show it (e.g. ``interval / 2``).
    """

    on: tuple[str, ...]
    compute: Callable[..., Any]
    rule: str

    def value(self, values: Any) -> Any:
        return self.compute(*(getattr(values, name) for name in self.on))


class _Following:
    """The default of a setting that follows others, until ``__post_init__`` computes it."""

    def __repr__(self) -> str:
        return "FOLLOWING"


FOLLOWING: Any = _Following()


def setting(
    default: Any,
    doc: str,
    *,
    check: Check | None = None,
    follows: Follows | None = None,
) -> Any:
    """Declare a ``TrackerConfig`` field; for ``follows``, ``default`` is its value at the
    defaults of what it follows (checked), which the docs show."""
    metadata = {"doc": doc, "check": check, "follows": follows, "shown": default}
    return field(default=FOLLOWING if follows else default, metadata=metadata)


@dataclass(frozen=True)
class Setting:
    """Everything derived from one field declaration."""

    name: str
    kind: str  # bool, int, float, str or list (of str)
    default: Any  # for follows: the value at the defaults of what it follows
    doc: str
    check: Check | None
    follows: Follows | None
    flag: str

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.name.upper()

    def from_text(self, raw: str, where: str) -> Any:
        """The value of ``raw`` (an environment variable or a flag's argument)."""
        if self.kind == "bool":
            low = raw.strip().lower()
            if low in ("1", "true", "yes", "on"):
                return True
            if low in ("0", "false", "no", "off", ""):
                return False
            raise ConfigError(f"{where} must be true or false, got {raw!r}")
        if self.kind in ("int", "float"):
            try:
                return int(raw) if self.kind == "int" else float(raw)
            except ValueError:
                article = "an integer" if self.kind == "int" else "a number"
                raise ConfigError(f"{where} must be {article}, got {raw!r}") from None
        if self.kind == "list":
            return tuple(part.strip() for part in raw.split(",") if part.strip())
        return raw

    def to_text(self, value: Any) -> str:
        """The inverse of :meth:`from_text`, to hand a value to a child process."""
        if self.kind == "bool":
            return "true" if value else "false"
        if self.kind == "list":
            return ",".join(value)
        return str(value)

    def to_toml(self, value: Any) -> str:
        if self.kind == "bool":
            return "true" if value else "false"
        if self.kind == "list":
            return "[" + ", ".join(json.dumps(v) for v in value) + "]"
        return json.dumps(value) if self.kind == "str" else repr(value)

    def coerce(self, value: Any) -> Any:
        """``value`` if it has this setting's type (lists become tuples), else ConfigError."""
        ok = {
            "bool": lambda v: isinstance(v, bool),
            "int": lambda v: isinstance(v, int) and not isinstance(v, bool),
            "float": lambda v: isinstance(v, int | float) and not isinstance(v, bool),
            "str": lambda v: isinstance(v, str),
            "list": lambda v: isinstance(v, list | tuple) and all(isinstance(x, str) for x in v),
        }[self.kind]
        if not ok(value):
            raise ConfigError(f"{self.name} must be of type {self.type_name}, got {value!r}")
        if self.kind == "list":
            return tuple(value)
        return float(value) if self.kind == "float" else value

    def validate(self, value: Any) -> None:
        if self.check is not None and not self.check.ok(value):
            raise ConfigError(f"{self.name} must {self.check.rule}, got {value!r}")

    @property
    def type_name(self) -> str:
        return "list of str" if self.kind == "list" else self.kind

    @property
    def shown_default(self) -> str:
        if self.follows is not None:
            return f"{self.follows.rule} ({self.to_toml(self.default)})"
        return self.to_toml(self.default)


def _kind(annotation: Any) -> str:
    text = str(annotation)
    return "list" if text.startswith("tuple") else text


def settings_of(cls: type) -> tuple[Setting, ...]:
    """The settings a config dataclass declares, in declaration order."""
    result = []
    for f in dataclasses.fields(cls):
        meta = f.metadata
        result.append(
            Setting(
                name=f.name,
                kind=_kind(f.type),
                default=meta["shown"],
                doc=meta["doc"],
                check=meta["check"],
                follows=meta["follows"],
                flag="--" + f.name.replace("_", "-"),
            )
        )
    defaults: dict[str, Any] = {}
    for s in result:
        if s.follows is not None:
            if not all(name in defaults for name in s.follows.on):
                raise TypeError(f"{s.name} follows a setting declared after it")
            computed = s.follows.compute(*(defaults[name] for name in s.follows.on))
            if computed != s.default:
                raise TypeError(f"{s.name}: default {s.default!r}, but it follows to {computed!r}")
        defaults[s.name] = s.default
    return tuple(result)


def did_you_mean(word: str, candidates: Iterable[str]) -> str:
    """`` (did you mean x?)`` for the closest candidate, or nothing if none is close."""
    close = difflib.get_close_matches(word, list(candidates), n=1, cutoff=0.6)
    return f" (did you mean {close[0]}?)" if close else ""


def markdown(settings: Sequence[Setting], process_env: dict[str, str]) -> str:
    """docs/CONFIG.md: every setting with its variable, flag, default and meaning."""
    lines = [
        "# Configuration",
        "",
        "<!-- Generated from the declarations in wsgi_tracker/config.py; do not edit.",
        "     Regenerate: .venv/bin/wsgi-tracker config --markdown > docs/CONFIG.md -->",
        "",
        "Every setting is declared once, in `wsgi_tracker/config.py`, and read from, in",
        "rising precedence: its default, the TOML file (`--config FILE` or",
        "`WSGI_TRACKER_CONFIG`; keys at top level or under `[tracker]`), its",
        "`WSGI_TRACKER_*` environment variable, then its command-line flag (the same",
        "flags on `wsgi-tracker serve`, `wsgi-tracker config` and `udp-sidecar`) or the",
        "host application's settings (Flask `TRACKER_*` keys, Django `settings.TRACKER`).",
        "An unknown key in a file, an unknown `WSGI_TRACKER_*` variable or an unknown",
        "application key is an error that names it and suggests the closest setting.",
        "A default written as a formula follows the settings it names unless it is set",
        "itself. `wsgi-tracker config [--config FILE]` prints the effective value of",
        "every setting and where it came from.",
        "",
        "| setting | default | environment / flag | meaning |",
        "|---|---|---|---|",
    ]
    for s in settings:
        meaning = s.doc
        if s.check is not None:
            meaning += f" Must {s.check.rule}."
        lines.append(
            f"| `{s.name}` | `{s.shown_default}` | `{s.env}`<br>`{s.flag}` "
            f"| {meaning} ({s.type_name}) |"
        )
    lines += [
        "",
        "Environment variables that are not settings:",
        "",
        "| variable | meaning |",
        "|---|---|",
        *(f"| `{name}` | {doc} |" for name, doc in process_env.items()),
        "",
    ]
    return "\n".join(lines)
