"""The compiled build: the hot modules (``wsgi_tracker/compiled.py``) as mypyc C extensions.

Everything else about the package is in pyproject.toml. The build stays pure Python,
saying so in one line on stderr, when ``WSGI_TRACKER_PURE=1``, when mypyc is missing
(a build without isolation), when there is no C compiler or no Python headers, or when
compiling fails; the package then runs the same ``.py`` files. Each compiled module's
source hash goes into ``wsgi_tracker/_compiled.json``, which ``compiled.check()`` holds
the sources to at import (an edited ``.py`` never runs as its stale extension).
"""

from __future__ import annotations

import json
import os
import runpy
import shlex
import shutil
import sys
import sysconfig
from pathlib import Path

from setuptools import setup
from setuptools.command.build_ext import build_ext
from setuptools.errors import CCompilerError, CompileError, ExecError, LinkError, PlatformError

HERE = Path(__file__).resolve().parent
_guard = runpy.run_path(str(HERE / "wsgi_tracker" / "compiled.py"))
MODULES: tuple[str, ...] = _guard["MODULES"]


def pure(reason: str) -> None:
    print(f"wsgi-tracker: building pure Python ({reason})", file=sys.stderr)


def why_not_compiled() -> str | None:
    """Why this build cannot compile, or None when it can."""
    if os.environ.get("WSGI_TRACKER_PURE") == "1":
        return "WSGI_TRACKER_PURE=1"
    try:
        import mypyc.build  # noqa: F401
    except ImportError:
        return "mypyc is not installed"
    cc = shlex.split(sysconfig.get_config_var("CC") or "cc")[:1]
    if not cc or shutil.which(cc[0]) is None:
        return f"no C compiler ({' '.join(cc) or 'CC unset'})"
    if not Path(sysconfig.get_paths()["include"], "Python.h").exists():
        return "no Python headers (Debian: python3-dev)"
    return None


class BuildCompiled(build_ext):
    """build_ext that falls back to pure Python on a failed compile and writes the manifest."""

    def run(self) -> None:
        try:
            super().run()
        except (CCompilerError, CompileError, ExecError, LinkError, PlatformError) as exc:
            pure(f"compiling failed: {exc}")
            self._remove_outputs()
            return
        self._write_manifest()

    def _package_dir(self) -> Path:
        return HERE / "wsgi_tracker" if self.inplace else Path(self.build_lib, "wsgi_tracker")

    def _remove_outputs(self) -> None:
        for output in super().get_outputs():
            Path(output).unlink(missing_ok=True)
        self.extensions = []

    def _write_manifest(self) -> None:
        hashes = {
            name: _guard["source_hash"](_guard["source_path"](name, HERE)) for name in MODULES
        }
        target = self._package_dir() / _guard["MANIFEST"]
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(json.dumps(hashes, indent=1, sort_keys=True) + "\n")

    def get_outputs(self) -> list[str]:
        outputs = super().get_outputs()
        if self.extensions:
            outputs.append(str(self._package_dir() / _guard["MANIFEST"]))
        return outputs


def remove_in_place_build() -> None:
    """A pure build leaves no extension of an earlier compiled one in the tree to shadow a .py."""
    for name in MODULES:
        while (stale := _guard["extension_of"](name, HERE)) is not None:
            stale.unlink()
    for shared in HERE.glob("wsgi_tracker__mypyc.*"):
        shared.unlink()
    (HERE / "wsgi_tracker" / _guard["MANIFEST"]).unlink(missing_ok=True)


def extensions() -> list:
    reason = why_not_compiled()
    if reason is not None:
        pure(reason)
        remove_in_place_build()
        return []
    from mypyc.build import mypycify

    paths = [str(_guard["source_path"](name, Path("."))) for name in MODULES]
    # pip builds the wheel before it installs the dependencies: mypyc's type check cannot
    # require them (what it cannot see it treats as Any, which compiles to generic calls).
    flags = ["--ignore-missing-imports"]
    return mypycify([*flags, *paths], opt_level="3", group_name="wsgi_tracker")


setup(ext_modules=extensions(), cmdclass={"build_ext": BuildCompiled})
