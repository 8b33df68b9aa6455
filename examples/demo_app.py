"""The example project behind ``tracker demo``, importable from a checkout as ``examples.demo_app``.

The tasks themselves live in :mod:`tracker.demo.app`, which ships inside the installed package so
that ``tracker demo`` works from any directory; this module is the name the example's README uses
(``celery -A examples.demo_app worker``). Read :mod:`tracker.demo.app` for the code.
"""

from tracker.demo.app import EXPECTED_FAILURES, QUEUE, Submission, app, broker_url, submit_workload

__all__ = ["app", "broker_url", "submit_workload", "Submission", "QUEUE", "EXPECTED_FAILURES"]
