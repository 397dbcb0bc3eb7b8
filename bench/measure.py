"""One measured run: loads against servers, with the servers' CPU and memory around it."""

from __future__ import annotations

import resource
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field

from .loads import LoadRun
from .procs import Server, cpu_seconds, machine_busy_seconds


@dataclass
class Sample:
    """What one run measured. CPU percentages: 100 = one core busy."""

    rps: float
    p50_ms: float
    p99_ms: float
    server_cpu_pct: float
    rss_mb: float
    peak_rss_mb: float
    load_cpu_pct: float
    other_cpu_pct: float  # everything else on the machine: > 20 means a disturbed run
    ok: int
    bad: int
    avg_peers: float
    extra: dict[str, float] = field(default_factory=dict)

    @property
    def rps_per_core(self) -> float:
        """Announces per CPU-second of the server: its capacity on one core when it is
        CPU-bound, and a figure that survives a machine shared with other work."""
        return self.rps * 100 / self.server_cpu_pct if self.server_cpu_pct else 0.0

    def as_dict(self) -> dict[str, object]:
        return {**asdict(self), "rps_per_core": self.rps_per_core}


def measure(
    servers: Sequence[Server],
    load: Callable[[], LoadRun],
    parts: Mapping[str, Sequence[int]] | None = None,
) -> Sample:
    return measure_together(servers, {"": load}, parts)[""]


def measure_together(
    servers: Sequence[Server],
    loads: Mapping[str, Callable[[], LoadRun]],
    parts: Mapping[str, Sequence[int]] | None = None,
) -> dict[str, Sample]:
    """Run the loads at once; the servers' CPU is shared by all of them.

    Load CPU comes from the children's rusage around the whole run, so with
    several loads it is their total. ``parts``: name -> pids whose CPU is also
    reported on its own (``cpu_pct[name]`` in each sample's extra), e.g. serve's
    worker and sidecar.
    """
    parts = parts or {}
    part0 = {name: sum(cpu_seconds(p) for p in pids) for name, pids in parts.items()}
    cpu0 = sum(s.cpu_seconds() for s in servers)
    busy0, wall0 = machine_busy_seconds(), time.monotonic()
    ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    with ThreadPoolExecutor(len(loads)) as pool:
        futures = {name: pool.submit(load) for name, load in loads.items()}
        runs = {name: f.result() for name, f in futures.items()}
    ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    wall = time.monotonic() - wall0
    server_cpu = sum(s.cpu_seconds() for s in servers) - cpu0
    part_pct = {
        f"cpu_pct[{name}]": 100 * (sum(cpu_seconds(p) for p in pids) - part0[name]) / wall
        for name, pids in parts.items()
    }
    busy = machine_busy_seconds() - busy0
    for s in servers:
        if not s.alive():
            raise RuntimeError(f"{s.name} died during the run; see {s.log}")
    load_cpu = (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)
    server_pct, load_pct = 100 * server_cpu / wall, 100 * load_cpu / wall
    other = max(0.0, 100 * busy / wall - server_pct - load_pct)
    rss = sum(s.rss_kb() for s in servers) / 1024
    peak = max(s.hwm_kb() for s in servers) / 1024
    samples = {
        name: _sample(run, server_pct, rss, peak, load_pct, other) for name, run in runs.items()
    }
    for sample in samples.values():
        sample.extra.update(part_pct)
    return samples


def _sample(
    run: LoadRun, server_pct: float, rss: float, peak: float, load_pct: float, other: float
) -> Sample:
    r = run.result
    return Sample(
        rps=r["rps"],
        p50_ms=r["p50_us"] / 1000,
        p99_ms=r["p99_us"] / 1000,
        server_cpu_pct=server_pct,
        rss_mb=rss,
        peak_rss_mb=peak,
        load_cpu_pct=load_pct,
        other_cpu_pct=other,
        ok=int(r.get("ok", r.get("responses", 0))),
        bad=int(r.get("fail", 0) + r.get("malformed", 0) + r.get("bad_tid", 0)),
        avg_peers=r.get("avg_peers", 0.0),
        extra={
            k: v
            for k, v in r.items()
            if k.startswith("err_") or k in ("errors", "timeouts", "connects")
        },
    )
