"""``python -m bench [name ...]``: run the benchmarks, print a table, write JSON."""

from __future__ import annotations

import importlib
import json
import platform
import signal
import sys
import time
import traceback
from pathlib import Path

from bench.common import Result, servers

#: Benchmark modules in run order; each has ``run(servers) -> list[Result]``.
MODULES = ["bench.overhead", "bench.progress", "bench.ingest", "bench.queries", "bench.feed", "bench.frames"]


def _fmt(v: float | None) -> str:
    if v is None:
        return "-"
    if abs(v) >= 1000:
        return f"{v:,.0f}"
    if abs(v) >= 10:
        return f"{v:.1f}"
    return f"{v:.3g}"


def main(argv: list[str]) -> int:
    # SIGTERM unwinds like Ctrl-C, so the servers, workers and gateways started are stopped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    wanted = [m for m in MODULES if not argv or m.split(".")[-1] in argv]
    results: list[Result] = []
    failed: list[str] = []
    with servers() as srv:
        for name in wanted:
            try:
                module = importlib.import_module(name)
            except ModuleNotFoundError as exc:
                if exc.name == name:
                    continue
                raise
            print(f"== {name}", flush=True)
            try:
                results.extend(module.run(srv))
            except Exception:
                traceback.print_exc()
                failed.append(name)
    print()
    header = f"{'benchmark':44} {'value':>12} {'unit':8} {'baseline':>12} {'ratio':>8}  {'target':16} met"
    print(header)
    print("-" * len(header))
    for r in results:
        met = "-" if r.met is None else ("yes" if r.met else "NO")
        print(f"{r.name:44} {_fmt(r.value):>12} {r.unit:8} {_fmt(r.baseline_value):>12} "
              f"{_fmt(r.ratio):>8}  {(r.target or ''):16} {met}")
        if r.baseline_name:
            print(f"{'':44}   baseline: {r.baseline_name}")
    out = Path(__file__).parent / "results" / time.strftime("%Y%m%dT%H%M%S.json")
    out.write_text(json.dumps({
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "machine": {"cpus": __import__("os").cpu_count(), "python": platform.python_version(),
                    "platform": platform.platform()},
        "results": [r.to_dict() for r in results],
        "failed": failed,
    }, indent=2))
    print(f"\nwritten {out}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
