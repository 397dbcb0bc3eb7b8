"""Medians over repetitions, ours/anchor ratios, the results file and the chart.

A figure is never one run: every summary is the median of REPS runs with the
range beside it, and ratios are taken between medians of the same run.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from .measure import Sample

STARVED_OTHER_CPU = 150.0
RESULTS = Path(__file__).resolve().parent / "results.json"
CHART = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.png"


@dataclass
class Results:
    """Samples of one ``python -m bench`` invocation, keyed scenario/mode -> tracker."""

    samples: dict[tuple[str, str, str], list[Sample]] = field(default_factory=dict)
    figures: dict[str, dict[str, object]] = field(default_factory=dict)
    runs_log: Path | None = None  # every run as a JSON line, for later re-analysis

    def add(self, scenario: str, mode: str, tracker: str, sample: Sample) -> None:
        self.samples.setdefault((scenario, mode, tracker), []).append(sample)
        if self.runs_log:
            row = {"scenario": scenario, "mode": mode, "tracker": tracker, **sample.as_dict()}
            with self.runs_log.open("a") as f:
                f.write(json.dumps(row) + "\n")
        print(
            f"  run {scenario}/{mode} {tracker}: rps={sample.rps:.0f} "
            f"per_core={sample.rps_per_core:.0f} p50={sample.p50_ms:.2f}ms "
            f"p99={sample.p99_ms:.2f}ms server_cpu={sample.server_cpu_pct:.0f}% "
            f"rss={sample.rss_mb:.1f}MB load_cpu={sample.load_cpu_pct:.0f}% "
            f"other_cpu={sample.other_cpu_pct:.0f}% ok={sample.ok} bad={sample.bad} "
            f"peers={sample.avg_peers:.1f} {_extra(sample)}",
            flush=True,
        )
        if sample.other_cpu_pct > 20:
            print(f"  WARNING: {sample.other_cpu_pct:.0f}% CPU used by other processes: disturbed")

    @classmethod
    def from_runs(cls, path: Path) -> Results:
        """The samples a run logged (runs.jsonl), to summarise them again."""
        results = cls()
        names = {f.name for f in dataclasses.fields(Sample)}
        for line in path.read_text().splitlines():
            row = json.loads(line)
            sample = Sample(**{k: v for k, v in row.items() if k in names})
            results.samples.setdefault((row["scenario"], row["mode"], row["tracker"]), []).append(
                sample
            )
        return results

    def summary(self, scenario: str, mode: str, tracker: str) -> dict[str, object] | None:
        measured = self.samples.get((scenario, mode, tracker))
        if not measured:
            return None
        # A run in which other work took more than 1.5 of the 2 cores starved the server
        # or the load (seen: 136 announces/s instead of 10k); leave such runs out when
        # there are others.
        runs = [s for s in measured if s.other_cpu_pct <= STARVED_OTHER_CPU] or measured

        def med(name: str) -> float:
            return statistics.median(getattr(s, name) for s in runs)

        return {
            "n": len(runs),
            "runs": len(measured),
            "rps": med("rps"),
            "rps_per_core": med("rps_per_core"),
            "rps_min": min(s.rps for s in runs),
            "rps_max": max(s.rps for s in runs),
            "p50_ms": med("p50_ms"),
            "p99_ms": med("p99_ms"),
            "p99_ms_max": max(s.p99_ms for s in runs),
            "server_cpu_pct": med("server_cpu_pct"),
            "peak_rss_mb": max(s.peak_rss_mb for s in runs),
            "load_cpu_pct": med("load_cpu_pct"),
            "other_cpu_pct_max": max(s.other_cpu_pct for s in runs),
            "avg_peers": med("avg_peers"),
            "bad": sum(s.bad for s in runs),
        }

    def print_summaries(self, scenario: str, anchor: str = "opentracker") -> None:
        """SUMMARY per (mode, tracker) and RATIO of each tracker to the anchor's median."""
        keys = sorted({(m, t) for (sc, m, t) in self.samples if sc == scenario})
        for mode, tracker in keys:
            s = self.summary(scenario, mode, tracker)
            assert s is not None
            print(
                f"SUMMARY scenario={scenario} mode={mode} tracker={tracker} "
                f"n={s['n']}/{s['runs']} "
                f"rps={s['rps']:.0f} [{s['rps_min']:.0f}..{s['rps_max']:.0f}] "
                f"rps_per_core={s['rps_per_core']:.0f} "
                f"p50_ms={s['p50_ms']:.2f} p99_ms={s['p99_ms']:.2f} "
                f"server_cpu_pct={s['server_cpu_pct']:.0f} peak_rss_mb={s['peak_rss_mb']:.1f} "
                f"load_cpu_pct={s['load_cpu_pct']:.0f} avg_peers={s['avg_peers']:.1f} "
                f"invalid={s['bad']} other_cpu_pct_max={s['other_cpu_pct_max']:.0f}"
            )
        for mode, tracker in keys:
            base = self.summary(scenario, mode, anchor)
            if tracker == anchor or base is None:
                continue
            s = self.summary(scenario, mode, tracker)
            assert s is not None
            print(
                f"RATIO scenario={scenario} mode={mode} {tracker}/{anchor}: "
                f"rps={s['rps'] / base['rps']:.2f}x "
                f"rps_per_core={s['rps_per_core'] / base['rps_per_core']:.2f}x "
                f"peak_rss={s['peak_rss_mb'] / max(base['peak_rss_mb'], 0.1):.1f}x"
            )

    def save(self, path: Path = RESULTS) -> dict[str, object]:
        """Merge this run's medians into the results file (older scenarios are kept)."""
        data: dict[str, object] = json.loads(path.read_text()) if path.exists() else {}
        data["machine"] = machine()
        summaries = data.setdefault("summaries", {})
        assert isinstance(summaries, dict)
        stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
        for scenario, mode, tracker in self.samples:
            s = self.summary(scenario, mode, tracker)
            assert s is not None
            summaries[f"{scenario}/{mode}/{tracker}"] = {**s, "when": stamp}
        figures = data.setdefault("figures", {})
        assert isinstance(figures, dict)
        for name, fig in self.figures.items():
            figures[name] = {**fig, "when": stamp}
        path.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
        return data


def _extra(sample: Sample) -> str:
    return " ".join(f"{k}={v:.0f}" for k, v in sample.extra.items() if v)


def machine() -> dict[str, object]:
    model = ""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        # The build changes the figures, not only the version: BENCHMARKS.md, "Interpreter".
        "interpreter": os.path.realpath(sys.executable),
    }


LEGEND = {"ours": "ours[udp-sidecar]"}
CHART_GROUPS = [
    ("http", "keepalive", "HTTP keep-alive"),
    ("http", "close", "HTTP Connection: close"),
    ("udp", "announce", "UDP announce"),
    ("udp", "scrape", "UDP scrape"),
]


def draw_chart(data: dict[str, object], path: Path = CHART) -> Path | None:
    """Announces/s per protocol, ours next to the anchors, from the results file."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("chart skipped: pip install 'wsgi-tracker[bench]' (matplotlib)")
        return None
    summaries = data.get("summaries", {})
    assert isinstance(summaries, dict)
    trackers = sorted(
        {k.split("/", 2)[2] for k in summaries if tuple(k.split("/")[:2]) in _group_keys()}
    )
    if not trackers:
        return None
    fig, ax = plt.subplots(figsize=(10, 5.2))
    colors = {t: f"C{i}" for i, t in enumerate(trackers)}
    labelled: set[str] = set()
    for g, (scenario, mode, _label) in enumerate(CHART_GROUPS):
        present = [t for t in trackers if f"{scenario}/{mode}/{t}" in summaries]
        width = 0.8 / max(len(present), 1)
        for i, tracker in enumerate(present):
            rps = summaries[f"{scenario}/{mode}/{tracker}"]["rps"]
            x = g + (i - (len(present) - 1) / 2) * width
            bar = ax.bar(
                [x], [rps], width, color=colors[tracker],
                label=None if tracker in labelled else LEGEND.get(tracker, tracker),
            )  # fmt: skip
            labelled.add(tracker)
            ax.bar_label(bar, labels=[f"{rps / 1000:.1f}k"], fontsize=7, padding=2)
        target = _target(summaries, scenario, mode)
        if target:
            ax.hlines(target, g - 0.45, g + 0.45, colors="k", linestyles="dashed", linewidth=1)
            ax.annotate("target", (g + 0.45, target), fontsize=7, va="bottom", ha="right")
    ax.set_xticks(range(len(CHART_GROUPS)), [g[2] for g in CHART_GROUPS])
    ax.set_yscale("log")
    ax.set_ylabel("announces (scrapes) per second, log scale")
    m = data.get("machine", {})
    assert isinstance(m, dict)
    ax.set_title(
        f"wsgi-tracker vs anchors, tracker pinned to one core, loopback "
        f"({m.get('cpu', '?')}, {m.get('cores', '?')} cores); medians of repeated runs; "
        "dashed: issue 8's target for ours",
        fontsize=9,
    )
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _target(summaries: dict[str, dict[str, float]], scenario: str, mode: str) -> float | None:
    """Issue 8's throughput target for ours: UDP >= 40k/s, HTTP >= 0.5x opentracker."""
    if scenario == "udp" and mode == "announce":
        return 40_000.0
    anchor = summaries.get(f"{scenario}/{mode}/opentracker")
    if scenario == "http" and anchor:
        return 0.5 * anchor["rps"]
    return None


def _group_keys() -> set[tuple[str, str]]:
    return {(s, m) for s, m, _ in CHART_GROUPS}


def markdown(data: dict[str, object]) -> str:
    """The results file as the tables of docs/BENCHMARKS.md (``python -m bench --table``)."""
    summaries = data.get("summaries", {})
    figures = data.get("figures", {})
    assert isinstance(summaries, dict) and isinstance(figures, dict)
    lines = [
        "| scenario | mode | tracker | runs used | announces/s median [min..max] "
        "| per server core-s | p50 ms | p99 ms | server CPU % | peak RSS MB "
        "| vs opentracker (rps, per core-s) | other CPU % (max) | measured |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for key in sorted(summaries):
        scenario, mode, tracker = key.split("/", 2)
        s = summaries[key]
        base = summaries.get(f"{scenario}/{mode}/opentracker")
        per_core = s.get("rps_per_core", 0.0)
        ratio = ""
        if base and tracker != "opentracker":
            ratio = f"{s['rps'] / base['rps']:.2f}x"
            if per_core and base.get("rps_per_core"):
                ratio += f", {per_core / base['rps_per_core']:.2f}x"
        lines.append(
            f"| {scenario} | {mode} | {tracker} | {s['n']}/{s.get('runs', s['n'])} "
            f"| {s['rps']:,.0f} "
            f"[{s['rps_min']:,.0f}..{s['rps_max']:,.0f}] | {per_core:,.0f} "
            f"| {s['p50_ms']:.2f} | {s['p99_ms']:.2f} "
            f"| {s['server_cpu_pct']:.0f} | {s['peak_rss_mb']:.1f} | {ratio} "
            f"| {s['other_cpu_pct_max']:.0f} | {str(s.get('when', ''))[11:16]} |"
        )
    lines += ["", "| figure | values |", "|---|---|"]
    for key in sorted(figures):
        values = ", ".join(
            f"{k}={v:,.2f}" if isinstance(v, float) else f"{k}={v}"
            for k, v in sorted(figures[key].items())
        )
        lines.append(f"| {key} | {values} |")
    return "\n".join(lines)
