"""``python -m bench ryw``: what read-your-writes costs (issue 16 target 3), on and off in one run.

One hub (udp-sidecar) and two gunicorns of ``full_workers`` TrackerWorkers joined
to it, all on the server core: one with the ``read_your_writes`` setting on (an
announce's reply waits for the hub's ack of its change, docs/SYNC.md), one with
it off. They are measured in turn, the order swapped every repetition, at each
of ``ryw_conns`` wrk connections. Both are joined the whole time, so whichever
one is idle applies the measured one's changes in both halves alike.

Two kinds of announces: known peers re-announcing (a pure refresh, which needs no
ack, so RYW should cost nothing there) and peers new to the tracker (every reply
waits for its ack).

* With one connection the figure is latency: what waiting for the ack adds to a
  reply (p50 and p99, on minus off).
* With many connections a closed loop is paced by the tracker's CPU, not by any
  one reply's latency (Little's law: connections / rate is the mean latency), so
  the rate, and the servers' CPU per announce, say whether the waits cost
  throughput. A gap at a few connections that closes at many is latency; one that
  stays, with more CPU per announce, is CPU.
"""

from __future__ import annotations

import itertools
from contextlib import ExitStack

from . import loads
from .measure import measure
from .report import Results
from .scenarios import Knobs, prefill, start_hub, start_joined_workers
from .workload import make_workload

SETTING = "WSGI_TRACKER_READ_YOUR_WRITES"
# What the announces are: "refresh", known peers re-announcing as they were (most of a real
# tracker's announces; nothing a reader sees changes, so no reply waits for an ack), and
# "new", a peer new to the tracker each time (every reply waits).
KINDS = ("refresh", "new")


def ryw(kn: Knobs, results: Results) -> None:
    wl = make_workload(kn.outdir, kn.k, kn.clients, kn.tpc)
    with ExitStack() as stack:
        sidecar, udp_port, sock = start_hub(stack, kn)
        gunicorns = {
            mode: start_joined_workers(stack, kn, wl, sock, env={SETTING: value})
            for mode, value in (("on", "true"), ("off", "false"))
        }
        print(
            f"started sidecar pid={sidecar.proc.pid}, "
            + ", ".join(f"{m}: workers {g.pids} port {p}" for m, (g, p) in gunicorns.items()),
            flush=True,
        )
        prefill(kn, "ours-ryw", udp_port, wl, over_udp=True)  # reaches every process
        servers = [sidecar, *(g for g, _ in gunicorns.values())]
        parts = {"sidecar": sidecar.pids, **{m: g.pids for m, (g, _) in gunicorns.items()}}
        if kn.warmup:
            for _g, port in gunicorns.values():
                loads.wrk(port, wl, kn.warmup, cpus=kn.load_cpu, conns=kn.conns)
        order = list(gunicorns)
        for _rep in range(kn.reps):
            for kind, conns in itertools.product(KINDS, kn.ryw_conns):
                for mode in order:
                    port = gunicorns[mode][1]
                    sample = measure(
                        servers,
                        lambda port=port, conns=conns, kind=kind: loads.wrk(
                            port, wl, kn.dur, cpus=kn.load_cpu, conns=conns, new_peers=kind == "new"
                        ),
                        parts,
                    )
                    results.add("ryw", f"{kind}-c{conns}-{mode}", "ours", sample)
            order.reverse()
    results.print_summaries("ryw")
    _figures(kn, results)


def _figures(kn: Knobs, results: Results) -> None:
    """Per kind and connection count: the rate on/off, CPU per announce on/off, latency
    added."""
    for kind, conns in itertools.product(KINDS, kn.ryw_conns):
        name = f"{kind}-c{conns}"
        on, off = (results.summary("ryw", f"{name}-{m}", "ours") for m in ("on", "off"))
        if not (on and off):
            continue
        fig = {
            "kind": kind,
            "conns": conns,
            "rps_on": _f(on, "rps"),
            "rps_off": _f(off, "rps"),
            "rps_ratio": _f(on, "rps") / _f(off, "rps") if _f(off, "rps") else 0.0,
            "us_per_announce_on": _us(on),
            "us_per_announce_off": _us(off),
            "added_p50_ms": _f(on, "p50_ms") - _f(off, "p50_ms"),
            "added_p99_ms": _f(on, "p99_ms") - _f(off, "p99_ms"),
        }
        results.figures[f"ryw/{name}"] = fig
        print(
            f"RYW {name}: on {fig['rps_on']:.0f}/s, off {fig['rps_off']:.0f}/s "
            f"(ratio {fig['rps_ratio']:.2f}); servers' CPU per announce on "
            f"{fig['us_per_announce_on']:.0f} us, off {fig['us_per_announce_off']:.0f} us; "
            f"p50 on {on['p50_ms']:.2f} / off {off['p50_ms']:.2f} ms, p99 on "
            f"{on['p99_ms']:.2f} / off {off['p99_ms']:.2f} ms (added p50 "
            f"{fig['added_p50_ms']:+.2f} ms, p99 {fig['added_p99_ms']:+.2f} ms)",
            flush=True,
        )


def _f(summary: dict[str, object], key: str) -> float:
    value = summary[key]
    assert isinstance(value, int | float)
    return float(value)


def _us(summary: dict[str, object]) -> float:
    """The servers' CPU (hub and both gunicorns) per announce answered, in microseconds."""
    per_core = _f(summary, "rps_per_core")
    return 1e6 / per_core if per_core else 0.0
