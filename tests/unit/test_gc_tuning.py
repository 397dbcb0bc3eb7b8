"""The serving processes' collector pace (running/gc_tuning.py), in a process of its own.

What the policy promises a host site: cyclic garbage, as its pages make, is
collected in young collections of about ``YOUNG`` objects each, so no single
collection holds a request for long, however much garbage a run makes.
"""

from __future__ import annotations

import json
import subprocess
import sys

from wsgi_tracker.running.gc_tuning import YOUNG

# Pages of a site that each leave ~26 cyclic objects behind (what the example Flask
# site's /torrents leaves: scopes, closures, compiled templates), with no GC tuning
# but ours, and every collection the interpreter makes recorded.
PAGES = r"""
import gc, json, sys
from wsgi_tracker.running.gc_tuning import tune_gc

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
