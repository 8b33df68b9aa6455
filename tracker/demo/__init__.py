"""``tracker demo``: the whole system on one machine, and the throw-away servers it starts.

- :mod:`tracker.demo.command`: the ``demo`` command (a ``tracker.commands`` entry point);
- :mod:`tracker.demo.app`: the example Celery project it runs (``celery -A tracker.demo.app worker``);
- :mod:`tracker.demo.view`: its live progress bars and summary;
- :mod:`tracker.demo.services`: throw-away PostgreSQL and Redis from the local binaries, which the
  pytest plugin (:mod:`tracker.testing`) and the project's tests start too.

This package sits above the data layer (it joins the tracker, the hooks and the gateway); nothing
in the data layer imports it.
"""
