"""Which modules the build compiles with mypyc, and the guard that keeps a stale build from running.

``setup.py`` compiles ``MODULES`` into C extensions when it can (mypyc and a C compiler
present, ``WSGI_TRACKER_PURE`` unset) and records each one's source hash in
``_compiled.json`` beside this file. Python imports an extension before a ``.py`` of the
same name, and an editable install (``pip install -e .``) builds the extensions in
place, next to their sources: so a developer who edits ``core/swarm.py`` and runs
pytest would otherwise run the swarm as it was at the last build, silently.
``check()``, called first thing by the package, refuses that: a compiled module whose
source no longer hashes to what was compiled is an ``ImportError`` naming it and how to
rebuild. ``WSGI_TRACKER_PURE=1`` in the environment of a run loads every one of
``MODULES`` from its ``.py`` instead (all or none: compiled code calls the compiled
classes of its group directly and would refuse a pure instance of them).

Imports only the standard library's import machinery, so ``udp_sidecar`` may call it
before gevent patches anything.
"""

from __future__ import annotations

import hashlib
import importlib.machinery
import importlib.util
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

# On the announce and sync-apply paths, and measured faster compiled (docs/BENCHMARKS.md,
# "Compiled hot paths"). None subclasses a gevent, gunicorn or Flask class.
MODULES = (
    "wsgi_tracker.core.swarm",
    "wsgi_tracker.core.tracker",
    "wsgi_tracker.core.pending",
    "wsgi_tracker.core.types",
    "wsgi_tracker.access.policy",
    "wsgi_tracker.sync.replica",
    "wsgi_tracker.sync.frames",
    "wsgi_tracker.http.codec",
    "wsgi_tracker.http.http11",
    "udp_sidecar.protocol",
    "udp_sidecar.server",
    "udp_sidecar.connection_ids",
    "wsgi_tracker.core.addresses",
)

MANIFEST = "_compiled.json"
PURE_ENV = "WSGI_TRACKER_PURE"
REBUILD = "pip install -e . (or run with WSGI_TRACKER_PURE=1 for pure Python)"

_ROOT = Path(__file__).resolve().parent.parent
_checked = False


def source_path(module: str, root: Path = _ROOT) -> Path:
    """The ``.py`` a dotted module name is compiled from, under ``root``."""
    return root.joinpath(*module.split(".")).with_suffix(".py")


def source_hash(path: Path) -> str:
    """What the manifest records per module: the sha256 of its source's bytes."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def extension_of(module: str, root: Path = _ROOT) -> Path | None:
    """The compiled file that would shadow ``module``'s ``.py``, if there is one."""
    stem = source_path(module, root).with_suffix("")
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        candidate = stem.with_name(stem.name + suffix)
        if candidate.exists():
            return candidate
    return None


def compiled() -> list[str]:
    """The modules of ``MODULES`` running as C extensions in this process (for tests, /stats)."""
    return [
        name
        for name in MODULES
        if (module := sys.modules.get(name)) is not None
        and not (getattr(module, "__file__", None) or "").endswith(".py")
    ]


def stale(root: Path = _ROOT, modules: Sequence[str] = MODULES) -> list[str]:
    """The compiled modules under ``root`` whose source differs from what was compiled."""
    try:
        recorded: dict[str, str] = json.loads((root / "wsgi_tracker" / MANIFEST).read_text())
    except (OSError, ValueError):
        recorded = {}
    return [
        name
        for name in modules
        if extension_of(name, root) is not None
        and recorded.get(name) != source_hash(source_path(name, root))
    ]


class _SourceFirst:
    """A meta path finder that loads ``MODULES`` from their ``.py`` (``WSGI_TRACKER_PURE=1``)."""

    @staticmethod
    def find_spec(
        name: str, path: Sequence[str] | None = None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if name not in MODULES:
            return None
        return importlib.util.spec_from_file_location(name, source_path(name))


def check() -> None:
    """Refuse a stale compiled build, or load the pure sources if ``WSGI_TRACKER_PURE=1``."""
    global _checked
    if _checked:
        return
    if os.environ.get(PURE_ENV) == "1":
        sys.meta_path.insert(0, _SourceFirst())
    elif behind := stale():
        raise ImportError(
            f"{', '.join(behind)}: the compiled build is older than the source; rebuild: {REBUILD}"
        )
    _checked = True
