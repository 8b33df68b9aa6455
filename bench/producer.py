"""The overhead benchmark's producer: a separate process that publishes N no-op tasks.

``python -m bench.producer MODE QUEUE N``; MODE is ``plain`` (plain Celery), ``tracked``
(``signals.install``: a pending row and a ``task.pending`` event per task, as a tracked
project's web process pays) or ``flower`` (plain Celery; the workers send events). It imports
and connects first, prints ``ready``, then waits for a line on stdin so that start-up is not
timed; it prints ``start <epoch>`` just before its first publish, ``published`` after the last
one, and ``cpu <seconds>`` (its own CPU from the go line until its tracking buffers are
flushed) before it exits.
"""

from __future__ import annotations

import os
import sys
import time

from bench.apps import make_app

__all__ = ["main"]


def _cpu() -> float:
    t = os.times()
    return t.user + t.system


def main(argv: list[str]) -> int:
    mode, queue, n = argv[0], argv[1], int(argv[2])
    app = make_app(f"bench_{mode}_producer")
    runtime = None
    if mode == "tracked":
        import signals
        from signals.runtime import runtime_for

        signals.install(app)
        config = signals.hooks.config_for(app)
        assert config is not None
        runtime = runtime_for(config)  # writer threads and their connections, before timing
    task = app.tasks["bench.noop"]
    with app.producer_or_acquire() as producer:
        producer.connection.ensure_connection()
        print("ready", flush=True)
        sys.stdin.readline()
        cpu0 = _cpu()
        print(f"start {time.time():.6f}", flush=True)
        for i in range(n):
            task.apply_async((i,), queue=queue, producer=producer)
    print("published", flush=True)
    if runtime is not None:
        runtime.flush(60)  # the pending rows and events are part of what this producer costs
    print(f"cpu {_cpu() - cpu0:.6f}", flush=True)
    if mode == "tracked":
        import signals

        signals.uninstall(app)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
