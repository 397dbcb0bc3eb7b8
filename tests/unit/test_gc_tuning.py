"""The serving processes' collector pace (core/gc_tuning.py), in a process of its own.

What the policy promises a host site: cyclic garbage, as its pages make, is
collected in young collections of about ``YOUNG`` objects each, so no single
collection holds a request for long, however much garbage a run makes; and a
replica built in bulk (a join) is never walked by a collection afterwards.
"""

from __future__ import annotations

import json
import subprocess
import sys

from wsgi_tracker.core.gc_tuning import YOUNG

# Pages of a site that each leave ~26 cyclic objects behind (what the example Flask
# site's /torrents leaves: scopes, closures, compiled templates), with no GC tuning
# but ours, and every collection the interpreter makes recorded.
PAGES = r"""
import gc, json, sys
from wsgi_tracker.core.gc_tuning import tune_gc

tune_gc()
seen = []
gc.callbacks.append(
    lambda phase, info: phase == "stop" and seen.append((info["generation"], info["collected"]))
)

def page():
    scope = {"rows": [[i, str(i)] for i in range(8)]}
    def render():
        return scope
    scope["render"] = render  # a cycle: scope -> render -> its closure cell -> scope
    return render

for _ in range(int(sys.argv[1])):
    page()
gc.callbacks.clear()
print(json.dumps(seen))
"""


def run_pages(pages: int) -> list[tuple[int, int]]:
    done = subprocess.run(
        [sys.executable, "-c", PAGES, str(pages)], capture_output=True, text=True, check=True
    )
    return [tuple(c) for c in json.loads(done.stdout)]


def test_cyclic_garbage_is_collected_in_young_pieces() -> None:
    collections = run_pages(10_000)  # ~120,000 cyclic objects: a few seconds of a busy site
    young = [collected for generation, collected in collections if generation == 0]
    assert sum(collected for _, collected in collections) > 100_000  # it was collected
    assert len(young) >= 10  # in many young collections, not one or two large ones
    # None freed much more than YOUNG (the trigger counts allocations less deallocations,
    # so a young generation can hold a little more than YOUNG objects).
    assert max(young) <= 2 * YOUNG


# A join as the sync client makes one: the collector paused, ~300,000 long-lived
# objects built, the collector resumed; then a stream of allocations that live on
# (new torrents) and of cycles, every collection recorded with its generation and
# what it freed. ``tune`` says whether the process serves (tune_gc ran).
JOIN = r"""
import gc, json, sys
from wsgi_tracker.core import gc_tuning

if sys.argv[1] == "serving":
    gc_tuning.tune_gc()
paused = gc_tuning.pause()
replica = [[i] for i in range(300_000)]
gc_tuning.resume()
after = {"paused": paused, "enabled": gc.isenabled(), "frozen": gc.get_freeze_count()}
young = []
gc.callbacks.append(lambda phase, info: phase == "stop" and young.append(info["generation"]))
more = []
for i in range(100_000):
    more.append([i])
    cycle = []
    cycle.append(cycle)
gc.callbacks.clear()
after["collections"] = len(young)
# The frozen replica is still freed by reference counting.
del replica
after["frozen_after_del"] = gc.get_freeze_count()
print(json.dumps(after))
"""


def run_join(mode: str) -> dict[str, object]:
    done = subprocess.run(
        [sys.executable, "-c", JOIN, mode], capture_output=True, text=True, check=True
    )
    result: dict[str, object] = json.loads(done.stdout)
    return result


def test_a_serving_process_freezes_what_a_join_built() -> None:
    after = run_join("serving")
    assert after["paused"] is True and after["enabled"] is True
    assert isinstance(after["frozen"], int) and after["frozen"] >= 300_000
    assert after["collections"]  # collections go on for what comes after
    assert isinstance(after["frozen_after_del"], int)
    assert after["frozen_after_del"] < after["frozen"] - 290_000


def test_a_process_that_does_not_serve_keeps_its_heap_unfrozen() -> None:
    # A test runner or a site's own server importing the client: resume only re-enables.
    after = run_join("embedded")
    assert after["paused"] is True and after["enabled"] is True
    assert after["frozen"] == 0
