"""``python -m tracker.cli``: the ``tracker`` command without the console script."""

from tracker.cli import main

main()
