"""The Reporter's status vocabulary: every status is accepted, anything else is refused."""

from __future__ import annotations

import pytest

from tracker import vocabulary as v
from tracker.reporter import _STATUS_BY_VALUE, Reporter


def test_every_status_is_known_and_nothing_else() -> None:
    assert set(_STATUS_BY_VALUE) == {s.value for s in v.Status}
    assert all(_STATUS_BY_VALUE[s.value] is s for s in v.Status)
    reporter = Reporter(None, None)  # tracking with neither store nor feed is a supported set-up
    for status in v.Status:
        reporter.status("t1", status.value)
    with pytest.raises(ValueError, match="finished"):
        reporter.status("t1", "finished")
