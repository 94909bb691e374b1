"""``python -m benchmarks [CASE ...] [--broker amqp|redis|memory|all] [--n N] [--rounds R] [--quick]``.

Measures aiocelev (A) and Celery 5's own events code (B) on the same broker in
the same run.  Each measurement runs in a fresh interpreter; A and B alternate
(A first in even rounds, B first in odd ones) and the result of a case is the
median over rounds of the pairwise ratio:

* throughput: A events/s / B events/s -- above 1 means aiocelev is faster;
* latency and memory: B / A -- above 1 means aiocelev is better (lower).

See docs/benchmarks.md for the methodology and the latest results.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import time
from dataclasses import dataclass, field
from typing import Any

from aiocelev._url import mask_url

from ._common import URLS, delete_exchange, median, run_child
from ._patches import ENV as PATCH_ENV, PATCHES, missing_requirements


@dataclass
class Variant:
    """One side of a comparison: a label and the child spec fields."""

    label: str
    spec: dict[str, Any]
    #: Only on these brokers (``None``: all).
    only: tuple[str, ...] | None = None


@dataclass
class Case:
    """A benchmark case: A, one or more Bs, the metric and the targets."""

    name: str
    module: str
    a: Variant
    bs: list[Variant]
    metric: str
    higher_is_better: bool
    #: Target ratio per (B label, broker); ``"*"`` matches any broker.
    targets: dict[tuple[str, str], float] = field(default_factory=dict)
    brokers: tuple[str, ...] = ("amqp", "redis")
    rounds: int | None = None
    timeout: float = 120.0
    unit: str = "ev/s"
    extra_metrics: tuple[str, ...] = ()
    #: A-only cases (no Celery counterpart): each "B" is another A configuration.
    a_only: bool = False
    #: Extra metrics where lower is better (their ratio is B/A) in a throughput case.
    lower_extras: tuple[str, ...] = ()

    def target(self, b_label: str, broker: str) -> float | None:
        return self.targets.get((b_label, broker), self.targets.get((b_label, "*")))


def build_cases(n: int | None, quick: bool) -> list[Case]:
    """The cases, sized for a full run, for ``--quick``, or with ``--n``."""

    def size(full: int, tiny: int) -> int:
        return n if n is not None else (tiny if quick else full)

    dur = 0.3 if quick else 1.0
    cases = [
        Case(
            "publish_batched",
            "publish",
            Variant(
                "aiocelev (defaults)",
                {"impl": "aiocelev", "batched": True, "n": size(60_000, 300)},
            ),
            [
                Variant(
                    "celery buffer_limit=24",
                    {
                        "impl": "celery",
                        "batched": True,
                        "buffer_limit": 24,
                        "n": size(60_000, 300),
                    },
                ),
                Variant(
                    "celery buffer_limit=100",
                    {
                        "impl": "celery",
                        "batched": True,
                        "buffer_limit": 100,
                        "n": size(60_000, 300),
                    },
                ),
            ],
            "rate",
            True,
            {("celery buffer_limit=24", "*"): 2.0, ("celery buffer_limit=100", "*"): 2.0},
            brokers=("amqp", "redis", "memory"),
        ),
        Case(
            "publish_single",
            "publish",
            Variant(
                "aiocelev batch_groups=()",
                {"impl": "aiocelev", "batched": False, "n": size(12_000, 300)},
            ),
            [
                Variant(
                    "celery unbatched", {"impl": "celery", "batched": False, "n": size(12_000, 300)}
                )
            ],
            "rate",
            True,
            {("celery unbatched", "*"): 2.0},
            brokers=("amqp", "redis", "memory"),
        ),
        Case(
            "receive_batched",
            "receive",
            Variant("aiocelev", {"impl": "aiocelev", "stream": "batched", "n": size(40_000, 600)}),
            [Variant("celery", {"impl": "celery", "stream": "batched", "n": size(40_000, 600)})],
            "rate",
            True,
            {("celery", "*"): 2.5},
            extra_metrics=("cpu_rate",),
        ),
        Case(
            "receive_single",
            "receive",
            Variant("aiocelev", {"impl": "aiocelev", "stream": "single", "n": size(12_000, 600)}),
            [Variant("celery", {"impl": "celery", "stream": "single", "n": size(12_000, 600)})],
            "rate",
            True,
            {("celery", "*"): 1.5},
            extra_metrics=("cpu_rate",),
        ),
        Case(
            "monitor",
            "receive",
            Variant(
                "aiocelev batches(dicts=True) + ClusterState.apply_many",
                {
                    "impl": "aiocelev",
                    "stream": "batched",
                    "state": True,
                    "batches": True,
                    "dicts": True,
                    "n": size(40_000, 600),
                },
            ),
            [
                Variant(
                    "celery + State",
                    {"impl": "celery", "stream": "batched", "state": True, "n": size(40_000, 600)},
                )
            ],
            "rate",
            True,
            {("celery + State", "*"): 5.0},
            extra_metrics=("cpu_rate",),
        ),
    ]
    # A p99 needs enough samples to be more than the machine's noise: at 200/s,
    # 8 s give 1,600 latencies (the p99 is the 16th worst) and the case runs
    # the requested rounds; 5,000/s fills 6,000 samples in 1.2 s.
    for rate, duration, latency_rounds in ((200, 8.0 * dur, None), (5000, 1.2 * dur, 3)):
        cases.append(
            Case(
                f"latency_{rate}",
                "latency",
                Variant(
                    "aiocelev (default batching)",
                    {"impl": "aiocelev", "rate": rate, "duration": duration},
                ),
                [
                    Variant(
                        "celery batched (worker)",
                        {"impl": "celery", "batched": True, "rate": rate, "duration": duration},
                    ),
                    Variant(
                        "celery unbatched",
                        {"impl": "celery", "batched": False, "rate": rate, "duration": duration},
                    ),
                ],
                "p99_ms",
                False,
                {("celery unbatched", "*"): 1.0},
                rounds=latency_rounds,
                unit="ms",
                extra_metrics=("p50_ms",),
            )
        )
    # Which side a p99 comes from: each receiver fed by each sender, at 200/s.
    sides_duration = 8.0 * dur
    cases.append(
        Case(
            "latency_sides",
            "latency",
            Variant(
                "aiocelev -> aiocelev",
                {"impl": "aiocelev", "rate": 200, "duration": sides_duration},
            ),
            [
                Variant(
                    f"{sender} -> {receiver}",
                    {
                        "impl": receiver,
                        "sender": "aiocelev" if sender == "aiocelev" else "celery-single",
                        "rate": 200,
                        "duration": sides_duration,
                    },
                )
                for sender, receiver in (
                    ("celery", "celery"),
                    ("celery", "aiocelev"),
                    ("aiocelev", "celery"),
                )
            ],
            "p99_ms",
            False,
            rounds=3,
            unit="ms",
            extra_metrics=("p50_ms",),
        )
    )
    layers_n = 60 if quick else 400
    cases.append(
        Case(
            "latency_layers",
            "layers",
            Variant("adapter publish -> subscribe", {"path": "raw", "rate": 200, "n": layers_n}),
            [
                Variant(
                    "EventDispatcher -> EventReceiver",
                    {"path": "full", "rate": 200, "n": layers_n},
                )
            ],
            "p50_ms",
            False,
            rounds=3,
            unit="ms",
            extra_metrics=("p99_ms",),
            a_only=True,
        )
    )
    tasks = size(1_000_000, 2_000)
    cases.append(
        Case(
            "memory_state",
            "memory",
            Variant("aiocelev ClusterState", {"kind": "state", "impl": "aiocelev", "tasks": tasks}),
            [Variant("celery State", {"kind": "state", "impl": "celery", "tasks": tasks})],
            "peak_rss_mib",
            False,
            brokers=("none",),
            rounds=1,
            timeout=600.0,
            unit="MiB",
            extra_metrics=("base_rss_mib", "elapsed"),
        )
    )
    duration = 0.5 if quick else 4.0
    consume = 1_000 if quick else 2_000
    buffer = 1_000 if quick else 10_000
    policies = [
        Variant(
            f"overflow={p}",
            {
                "kind": "overload",
                "overflow": p,
                "consume_rate": consume,
                "duration": duration,
                "buffer_size": buffer,
            },
        )
        for p in ("pause", "drop_oldest", "drop_newest")
    ]
    policies.append(
        Variant(
            "overflow=pause, acks+prefetch",
            {
                "kind": "overload",
                "overflow": "pause",
                "consume_rate": consume,
                "duration": duration,
                "buffer_size": buffer,
                "broker_options": {"no_ack": False, "prefetch_count": 100},
            },
            only=("amqp",),
        )
    )
    cases.append(
        Case(
            "memory_overload",
            "memory",
            policies[0],
            policies[1:],
            "peak_rss_mib",
            False,
            rounds=1,
            unit="MiB",
            extra_metrics=("published", "received", "dropped", "buffered_at_end", "rss_at_end_mib"),
            a_only=True,
        )
    )
    dash_tasks = size(100_000, 300)
    dash_common = {
        "tasks": dash_tasks,
        "max_tasks": max(dash_tasks, 1_000),
        "latency_rates": [2_000, 20_000],
        "latency_seconds": 0.5 if quick else 5.0,
    }
    cases.append(
        Case(
            "dashboard",
            "dashboard",
            Variant("aiocelev dashboard", dict(dash_common, impl="aiocelev")),
            [Variant("flower 2.2", dict(dash_common, impl="flower"))],
            "rate",
            True,
            {("flower 2.2", "*"): 10.0},
            rounds=3,
            timeout=900.0,
            extra_metrics=(
                "cpu_rate",
                "server_peak_rss_mib",
                "server_rss_mib",
                "server_base_rss_mib",
                "publish_rate",
                "p50_ms_2000",
                "p99_ms_2000",
                "p50_ms_20000",
                "p99_ms_20000",
                "achieved_rate_20000",
            ),
            lower_extras=(
                "server_peak_rss_mib",
                "server_rss_mib",
                "server_base_rss_mib",
                "p50_ms_2000",
                "p99_ms_2000",
                "p50_ms_20000",
                "p99_ms_20000",
            ),
        )
    )
    return cases


def _fmt(value: float | None, unit: str = "") -> str:
    if value is None or value != value:  # None or NaN
        return "-"
    if unit == "ev/s" or abs(value) >= 1000 or float(value).is_integer():
        return f"{value:,.0f}"
    return f"{value:.3g}" if abs(value) < 10 else f"{value:.1f}"


def _pair_ratio(
    a_results: list[dict[str, Any]], b_results: list[dict[str, Any]], metric: str, higher: bool
) -> float | None:
    """Median over rounds of A/B (``higher``) or B/A of *metric*."""
    ratios = []
    for a_res, b_res in zip(a_results, b_results, strict=False):
        if "error" in a_res or "error" in b_res:
            continue
        a, b = a_res.get(metric), b_res.get(metric)
        if a and b:
            ratios.append(a / b if higher else b / a)
    return median(ratios) if ratios else None


def run_case(case: Case, broker: str, rounds: int, log: Any) -> dict[str, Any]:
    """Run one case on one broker; return its raw and summarised results."""
    rounds = min(rounds, case.rounds) if case.rounds else rounds
    variants = [case.a, *case.bs]
    if broker == "memory":
        # Celery shares no in-process broker with aiocelev: A only.
        variants = [case.a]
    variants = [v for v in variants if v.only is None or broker in v.only]
    raw: dict[str, list[dict[str, Any]]] = {v.label: [] for v in variants}
    for r in range(rounds):
        order = variants if r % 2 == 0 else [*variants[1:], variants[0]]
        for v in order:
            spec = dict(v.spec, module=case.module, broker=broker)
            t0 = time.monotonic()
            result = run_child(spec, case.timeout)
            if "publisher_error" in result:
                # The stream was cut short (e.g. the broker restarted): not a measurement.
                result["error"] = "publisher failed: " + result["publisher_error"][-300:]
            raw[v.label].append(result)
            shown = (
                result.get("error") or _fmt(result.get(case.metric), case.unit) + " " + case.unit
            )
            print(
                f"  {case.name} [{broker}] round {r + 1}/{rounds} {v.label}: {shown}"
                f" ({time.monotonic() - t0:.1f}s)",
                file=log,
                flush=True,
            )
    summary: dict[str, Any] = {"case": case.name, "broker": broker, "unit": case.unit, "rows": []}

    def value(res: dict[str, Any], metric: str) -> Any:
        return None if "error" in res else res.get(metric)

    a_values = [value(res, case.metric) for res in raw[case.a.label]]
    for v in variants[1:] if not case.a_only else []:
        b_values = [value(res, case.metric) for res in raw[v.label]]
        ratios = []
        for a, b in zip(a_values, b_values, strict=False):
            if a and b:
                ratios.append(a / b if case.higher_is_better else b / a)
        ratio = median(ratios) if ratios else None
        target = case.target(v.label, broker)
        summary["rows"].append(
            {
                "a": case.a.label,
                "b": v.label,
                "metric": case.metric,
                "a_median": median([x for x in a_values if x]),
                "b_median": median([x for x in b_values if x]),
                "ratio": ratio,
                "ratios": ratios,
                "target": target,
                "met": None if target is None or ratio is None else ratio >= target,
                "extra": {
                    m: (
                        median([res[m] for res in raw[case.a.label] if value(res, m) is not None]),
                        median([res[m] for res in raw[v.label] if value(res, m) is not None]),
                        _pair_ratio(
                            raw[case.a.label],
                            raw[v.label],
                            m,
                            case.higher_is_better and m not in case.lower_extras,
                        ),
                    )
                    for m in case.extra_metrics
                },
            }
        )
    if case.a_only or broker == "memory":
        for v in variants:
            values = [value(res, case.metric) for res in raw[v.label]]
            summary["rows"].append(
                {
                    "a": v.label,
                    "b": None,
                    "metric": case.metric,
                    "a_median": median([x for x in values if x]),
                    "extra": {
                        m: median([res[m] for res in raw[v.label] if value(res, m) is not None])
                        for m in case.extra_metrics
                    },
                }
            )
    summary["raw"] = raw
    return summary


_NOISE_NAMES = frozenset(
    {
        "<method 'poll' of 'select.epoll' objects>",
        "<built-in method marshal.loads>",
        "<built-in method builtins.compile>",
        "<built-in method _imp.create_dynamic>",
        "<built-in method _imp.exec_dynamic>",
        "<built-in method posix.stat>",
        "<built-in method io.open_code>",
        "<method 'read' of '_io.BufferedReader' objects>",
    }
)


def _profile_noise(key: tuple[str, int, str]) -> bool:
    filename, _line, name = key
    return name in _NOISE_NAMES or filename.startswith("<frozen")


def profile_case(case: Case, broker: str, top: int = 15) -> str:
    """Run aiocelev's side of *case* once under cProfile; the top functions by own time."""
    import io
    import pstats
    import subprocess
    import tempfile

    from ._common import _child_env

    spec = dict(case.a.spec, module=case.module, broker=broker)
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "profile")
        subprocess.run(
            [
                sys.executable,
                "-m",
                "cProfile",
                "-o",
                out,
                "-m",
                "benchmarks._child",
                json.dumps(spec),
            ],
            capture_output=True,
            text=True,
            timeout=case.timeout,
            env=_child_env(),
            check=False,
        )
        stats = pstats.Stats(out)
    # Time blocked in the selector is waiting, not work; imports are set-up.
    # Both are left out of the total and of the table.
    entries = {
        k: v
        for k, v in stats.stats.items()  # type: ignore[attr-defined]
        if not _profile_noise(k)
    }
    total = sum(v[2] for v in entries.values())
    rows = sorted(entries.items(), key=lambda kv: kv[1][2], reverse=True)
    buf = io.StringIO()
    print(
        f"{case.name} [{broker}] {case.a.label}: {total:.2f}s of CPU under the profiler", file=buf
    )
    print(f"{'own %':>6} {'cum %':>6} {'calls':>9}  function", file=buf)
    for (filename, line, name), (_cc, calls, tottime, cumtime, _callers) in rows[:top]:
        where = filename.split("site-packages/")[-1].split("/work/main/")[-1]
        print(
            f"{100 * tottime / total:6.1f} {100 * cumtime / total:6.1f} {calls:9d}  {where}:{line}({name})",
            file=buf,
        )
    return buf.getvalue()


def print_table(summaries: list[dict[str, Any]], out: Any) -> None:
    """A plain-text results table."""
    head = f"{'case':<16} {'broker':<6} {'aiocelev (A)':>26} {'vs':>3} {'celery (B)':>28} {'ratio':>7} {'target':>7}"
    print(head, file=out)
    print("-" * len(head), file=out)
    for s in summaries:
        unit = s["unit"]
        for row in s["rows"]:
            a = f"{_fmt(row['a_median'], unit)} {unit}"
            if row.get("b") is None:
                extra = ", ".join(f"{k}={_fmt(v)}" for k, v in row["extra"].items())
                print(f"{s['case']:<16} {s['broker']:<6} {row['a']:>26}: {a}  {extra}", file=out)
                continue
            b = f"{_fmt(row['b_median'], unit)} {unit}"
            ratio = "-" if row["ratio"] is None else f"{row['ratio']:.2f}x"
            target = "" if row["target"] is None else f">={row['target']:g}x"
            mark = "" if row["met"] is None else (" ok" if row["met"] else " MISS")
            print(
                f"{s['case']:<16} {s['broker']:<6} {a:>26} {'vs':>3} {b:>19} ({row['b'][:16]})"
                f" {ratio:>7} {target:>7}{mark}",
                file=out,
            )
            for k, (ea, eb, er) in row["extra"].items():
                shown = "" if er is None else f"  ({er:.2f}x)"
                print(f"{'':<24}{k}: {_fmt(ea, unit)} vs {_fmt(eb, unit)}{shown}", file=out)


def markdown_table(summaries: list[dict[str, Any]]) -> str:
    """The results as a Markdown table (as pasted into docs/benchmarks.md)."""
    lines = [
        "| case | broker | aiocelev (A) | Celery (B) | median ratio | target | met |",
        "|---|---|---|---|---|---|---|",
    ]
    for s in summaries:
        unit = s["unit"]
        for row in s["rows"]:
            if row.get("b") is None:
                extra = ", ".join(f"{k} {_fmt(v)}" for k, v in row["extra"].items())
                lines.append(
                    f"| {s['case']} | {s['broker']} | {row['a']}: {_fmt(row['a_median'], unit)} {unit}"
                    f" ({extra}) | - | - | - | - |"
                )
                continue
            extra = "".join(
                f"<br>{k}: {_fmt(a, unit)} vs {_fmt(b, unit)}"
                + ("" if r is None else f" ({r:.2f}x)")
                for k, (a, b, r) in row["extra"].items()
            )
            ratio = "-" if row["ratio"] is None else f"{row['ratio']:.2f}x"
            target = "-" if row["target"] is None else f">= {row['target']:g}x"
            met = "-" if row["met"] is None else ("yes" if row["met"] else "**no**")
            lines.append(
                f"| {s['case']} | {s['broker']} | {row['a']}: {_fmt(row['a_median'], unit)} {unit}"
                f" | {row['b']}: {_fmt(row['b_median'], unit)} {unit}{extra} | {ratio} | {target} | {met} |"
            )
    return "\n".join(lines)


def machine_info() -> dict[str, Any]:
    """Date, machine and versions, for the results header."""
    from importlib.metadata import PackageNotFoundError, version

    cpu = "?"
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    versions: dict[str, str | None] = {}
    for dist in (
        "aiocelev",
        "celery",
        "kombu",
        "aio-pika",
        "aiormq",
        "redis",
        "hiredis",
        "msgspec",
        "orjson",
        "anyio",
    ):
        try:
            versions[dist] = version(dist)
        except PackageNotFoundError:
            versions[dist] = None
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "python": platform.python_version(),
        "loadavg": [round(x, 2) for x in os.getloadavg()],
        "versions": versions,
    }


def main(argv: list[str] | None = None) -> int:
    """Parse the command line, run the cases, print the table."""
    cases_all = build_cases(None, False)
    names = [c.name for c in cases_all]
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks", description=__doc__.split("\n\n")[1]
    )
    parser.add_argument(
        "cases", nargs="*", metavar="CASE", help=f"cases to run (default: all): {', '.join(names)}"
    )
    parser.add_argument("--broker", choices=("amqp", "redis", "memory", "all"), default="all")
    parser.add_argument(
        "--n", type=int, default=None, help="events per measurement (tasks for memory_state)"
    )
    parser.add_argument(
        "--rounds", type=int, default=None, help="A/B rounds per case (default 5; 1 with --quick)"
    )
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run")
    parser.add_argument("--json", metavar="FILE", help="write every raw result to FILE")
    parser.add_argument("--markdown", action="store_true", help="also print the table as Markdown")
    parser.add_argument(
        "--live",
        action="store_true",
        help="receive cases: time from the start of the publisher's burst, not the drain "
        "of the backlog it leaves (the method before 2026-12-05)",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="instead of measuring, run aiocelev's side of each case once under cProfile",
    )
    parser.add_argument(
        "--patch",
        action="append",
        default=[],
        choices=sorted(PATCHES),
        help="what-if: apply a candidate hot-path fix to aiocelev in the child processes",
    )
    args = parser.parse_args(argv)

    unknown = [c for c in args.cases if c not in names]
    if unknown:
        parser.error(f"unknown case(s): {', '.join(unknown)} (choose from {', '.join(names)})")
    if args.patch:
        missing = missing_requirements(args.patch)
        if missing:
            parser.error("; ".join(missing))
        os.environ[PATCH_ENV] = ",".join(args.patch)
        print(f"what-if patches applied to aiocelev: {', '.join(args.patch)}", flush=True)
    rounds = args.rounds if args.rounds is not None else (1 if args.quick else 5)
    brokers = ["amqp", "redis"] if args.broker == "all" else [args.broker]
    cases = [c for c in build_cases(args.n, args.quick) if not args.cases or c.name in args.cases]
    if args.live:
        for case in cases:
            if case.module == "receive":
                for variant in (case.a, *case.bs):
                    variant.spec["backlog"] = False

    info = machine_info()
    print(
        f"{info['date']}  nproc={info['nproc']}  {info['cpu']}  Python {info['python']}  "
        f"load {info['loadavg'][0]}  "
        + "  ".join(f"{k} {v}" for k, v in info["versions"].items() if v),
        flush=True,
    )
    for kind in brokers:
        if kind != "memory":
            print(f"{kind}: {mask_url(URLS[kind])}", flush=True)
    if args.profile:
        for case in cases:
            targets = (
                ["none"] if case.brokers == ("none",) else [b for b in brokers if b in case.brokers]
            )
            for broker in targets:
                print(profile_case(case, broker), flush=True)
        for kind in brokers:
            delete_exchange(kind)
        return 0
    started = time.monotonic()
    summaries = []
    for case in cases:
        if case.brokers == ("none",):
            targets = ["none"]
        else:
            targets = [b for b in brokers if b in case.brokers]
        for broker in targets:
            summaries.append(run_case(case, broker, rounds, sys.stderr))
    for kind in brokers:
        delete_exchange(kind)
    info["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    print(file=sys.stdout)
    print_table(summaries, sys.stdout)
    print(
        f"\n{time.monotonic() - started:.0f}s in all; ratios are medians of per-round pairs, "
        "throughput A/B, latency and memory B/A (>1: aiocelev better)."
    )
    if args.markdown:
        print()
        print(markdown_table(summaries))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"info": info, "rounds": rounds, "results": summaries}, fh, indent=1)
    errors = [
        (s["case"], s["broker"], label, res["error"])
        for s in summaries
        for label, results in s["raw"].items()
        for res in results
        if "error" in res
    ]
    for case_name, broker, label, error in errors:
        print(f"ERROR {case_name} [{broker}] {label}: {error}", file=sys.stderr)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
