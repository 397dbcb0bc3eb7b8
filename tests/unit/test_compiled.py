"""The compiled build (setup.py, wsgi_tracker/compiled.py): used, never stale, pure on demand."""

from __future__ import annotations

import ast
import importlib
import importlib.machinery
import json
import os
import shlex
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from wsgi_tracker import compiled

ROOT = Path(compiled.__file__).resolve().parent.parent


def _can_compile() -> bool:
    cc = shlex.split(sysconfig.get_config_var("CC") or "cc")[:1]
    headers = Path(sysconfig.get_paths()["include"], "Python.h")
    return bool(cc) and shutil.which(cc[0]) is not None and headers.exists()


@pytest.mark.skipif(
    os.environ.get(compiled.PURE_ENV) == "1" or not _can_compile(),
    reason="a pure build: WSGI_TRACKER_PURE=1, or no C compiler / Python headers",
)
def test_the_hot_modules_run_compiled_where_a_compiler_is_present():
    for name in compiled.MODULES:
        importlib.import_module(name)
    assert compiled.compiled() == list(compiled.MODULES)


def _fake_build(root: Path, source: bytes, recorded: bytes) -> None:
    """A tree holding core/swarm.py, an extension beside it, and a manifest hashing ``recorded``."""
    package = root / "wsgi_tracker"
    (package / "core").mkdir(parents=True)
    (package / "core" / "swarm.py").write_bytes(source)
    suffix = importlib.machinery.EXTENSION_SUFFIXES[0]
    (package / "core" / f"swarm{suffix}").write_bytes(b"")
    (package / "recorded.py").write_bytes(recorded)
    digest = compiled.source_hash(package / "recorded.py")
    (package / compiled.MANIFEST).write_text(json.dumps({"wsgi_tracker.core.swarm": digest}))


def test_a_compiled_module_whose_source_changed_is_stale(tmp_path):
    _fake_build(tmp_path, b"x = 2\n", recorded=b"x = 1\n")
    assert compiled.stale(tmp_path, ["wsgi_tracker.core.swarm"]) == ["wsgi_tracker.core.swarm"]


def test_a_compiled_module_built_from_its_source_is_not_stale(tmp_path):
    _fake_build(tmp_path, b"x = 1\n", recorded=b"x = 1\n")
    assert compiled.stale(tmp_path, ["wsgi_tracker.core.swarm"]) == []


def test_an_extension_without_a_manifest_is_stale(tmp_path):
    _fake_build(tmp_path, b"x = 1\n", recorded=b"x = 1\n")
    (tmp_path / "wsgi_tracker" / compiled.MANIFEST).unlink()
    assert compiled.stale(tmp_path, ["wsgi_tracker.core.swarm"]) == ["wsgi_tracker.core.swarm"]


def test_a_source_without_an_extension_is_never_stale(tmp_path):
    (tmp_path / "wsgi_tracker" / "core").mkdir(parents=True)
    (tmp_path / "wsgi_tracker" / "core" / "swarm.py").write_bytes(b"x = 1\n")
    assert compiled.stale(tmp_path, ["wsgi_tracker.core.swarm"]) == []


PURE_ANNOUNCE = """
import wsgi_tracker, udp_sidecar.server
from wsgi_tracker import compiled
from wsgi_tracker.core.tracker import TrackerCore
from wsgi_tracker.core.types import Announce
core = TrackerCore()
req = Announce(info_hash=b"i" * 20, peer_id=b"p" * 20, port=6881)
with core.lock:
    result = core.announce(req, b"\\x7f\\0\\0\\1")
assert result.complete + result.incomplete == 1, result
assert compiled.compiled() == [], compiled.compiled()
print("pure ok")
"""


def test_the_pure_fallback_imports_and_answers():
    env = {**os.environ, compiled.PURE_ENV: "1"}
    done = subprocess.run(
        [sys.executable, "-c", PURE_ANNOUNCE],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "pure ok"


def _written_out_inits(
    module: str,
) -> list[tuple[str, list[tuple[str, str | None]], ast.FunctionDef]]:
    """Per @dataclass class of ``module`` that writes its ``__init__`` out: its fields
    (name, its default's source) and that ``__init__``."""
    found = []
    for cls in ast.parse(compiled.source_path(module).read_text()).body:
        if not isinstance(cls, ast.ClassDef) or not any(
            "dataclass" in ast.unparse(d) for d in cls.decorator_list
        ):
            continue
        for init in cls.body:
            if isinstance(init, ast.FunctionDef) and init.name == "__init__":
                fields = [
                    (n.target.id, None if n.value is None else ast.unparse(n.value))
                    for n in cls.body
                    if isinstance(n, ast.AnnAssign) and isinstance(n.target, ast.Name)
                ]
                found.append((cls.name, fields, init))
    return found


def test_a_written_out_dataclass_init_takes_and_sets_exactly_its_fields():
    """The compiled modules' per-request dataclasses write ``__init__`` out (mypyc compiles
    that, not the one @dataclass generates; core/types.py): it must stay the one @dataclass
    would write, every field in order with its default, each set as given and nothing else."""
    seen = 0
    for module in compiled.MODULES:
        for name, fields, init in _written_out_inits(module):
            args = init.args.args[1:]
            given = [ast.unparse(d) for d in init.args.defaults]
            defaults: list[str | None] = [None] * (len(args) - len(given)) + list(given)
            assert [(a.arg, d) for a, d in zip(args, defaults, strict=True)] == fields, name
            sets = [
                (s.targets[0].attr, s.value.id)
                for s in init.body
                if isinstance(s, ast.Assign)
                and isinstance(s.targets[0], ast.Attribute)
                and isinstance(s.value, ast.Name)
            ]
            assert sets == [(f, f) for f, _ in fields] and len(sets) == len(init.body), name
            seen += 1
    assert seen >= 7  # Announce, AnnounceResult, three requests, two HTTP heads
