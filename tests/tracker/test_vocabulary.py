"""The vocabulary is written once: the migrated schema, the event map and the served JSON agree with it."""

from __future__ import annotations

import uuid
from typing import Any

import aiohttp
import psycopg
import pytest

from tracker import vocabulary as v
from tracker.events import EVENT_TYPES, STATUS_EVENTS
from tracker.notify import EVENT_TRIGGERS, TRIGGERS
from tracker.status import TERMINAL, Status


def test_one_definition_everywhere() -> None:
    # The old homes of these names re-export the vocabulary's objects, not copies of them.
    assert Status is v.Status and TERMINAL is v.TERMINAL and EVENT_TYPES is v.EVENT_TYPES
    assert STATUS_EVENTS is v.STATUS_EVENTS and EVENT_TRIGGERS is v.EVENT_TRIGGERS and TRIGGERS is v.TRIGGERS
    # Every status has the event that announces it, and that event leads back to it.
    assert {v.EVENT_STATUS[STATUS_EVENTS[s]] for s in v.STATUSES} == set(v.STATUSES)
    assert {STATUS_EVENTS[s] for s in v.TERMINAL} == v.TERMINAL_EVENTS
    assert set(v.EVENT_STATUS) <= v.EVENT_TYPES and set(v.EVENT_TRIGGERS) <= v.EVENT_TYPES
    assert v.OPEN.isdisjoint(v.TERMINAL) and v.ACTIVE <= v.OPEN


def test_the_migrated_check_constraint_allows_exactly_the_statuses(sql: psycopg.Connection[Any]) -> None:
    # Migration 0001 spells the constraint out (migrations are history); it must agree with the vocabulary.
    for status in [*v.STATUSES, "finished"]:
        task_id = f"vocab-{uuid.uuid4().hex[:8]}"
        try:
            sql.execute("INSERT INTO tracker_tasks (task_id, status) VALUES (%s, %s)", (task_id, str(status)))
        except psycopg.errors.CheckViolation:
            assert status == "finished"
        else:
            assert status in v.STATUSES
            sql.execute("DELETE FROM tracker_tasks WHERE task_id = %s", (task_id,))


@pytest.mark.parametrize("auth", [False, True])
async def test_served_vocabulary_is_the_modules(gateway: Any, auth: bool) -> None:
    from tests.conftest import make_token

    headers = {"Authorization": f"Bearer {make_token('vocab-user')}"} if auth else {}
    async with aiohttp.ClientSession(headers=headers) as s, s.get(gateway.api + "/vocabulary") as r:
        assert r.status == 200
        body = await r.json()
    assert body == v.as_json()
    assert body["terminal"] == ["completed", "failed", "cancelled"]
    assert body["event_status"]["task.retry"] == "pending" and body["close_codes"]["try_again_later"] == 1013
