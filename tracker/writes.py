"""The write path's statements, built from the models and compiled once for psycopg.

The Recorder and the worker record write through psycopg directly (the write path is hot: a
flush must not pay SQLAlchemy's execution layer). Their statements are still SQLAlchemy Core
built from the ``Table`` objects, so the column lists, their types and the defaults of a new
row come from :mod:`tracker.models`: each statement is compiled once, at import, with the
``postgresql+psycopg`` dialect into the SQL string and the parameter order psycopg executes.
Only ``COPY`` is written as text, and its column lists come from the tables too.
"""

from __future__ import annotations

import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    Double,
    Float,
    Integer,
    SmallInteger,
    Table,
    Text,
    and_,
    bindparam,
    case,
    cast,
    column,
    false,
    func,
    literal,
    literal_column,
    not_,
    null,
    select,
    update,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSON, JSONB
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.postgresql.psycopg import PGDialect_psycopg
from sqlalchemy.engine.interfaces import BindTyping
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.elements import ColumnElement, TextClause
from sqlalchemy.sql.expression import Alias, ClauseElement, TableValuedAlias
from sqlalchemy.types import TypeEngine

from tracker import queries
from tracker.models import Metric, ProgressBatch, Task, TaskLog, Worker, WorkerProcess
from tracker.vocabulary import Status

__all__ = [
    "PsycopgStatement", "compile_for_psycopg", "TaskColumns", "task_columns", "task_update", "task_insert",
    "copy_columns", "copy_statement", "TASK_COLUMNS", "TASK_FIELDS", "TASK_UPDATE", "TASK_INSERT",
    "LOG_COLUMNS", "LOG_COPY", "METRIC_COLUMNS", "METRIC_COPY", "PROGRESS_COLUMNS", "PROGRESS_INSERT",
    "WORKER_PROCESS_COLUMNS", "WORKER_PROCESS_UPSERT", "WORKER_NODE_BEAT", "WORKER_READY", "WORKER_STOPPED",
    "MEDIAN_RUNTIME", "WRITER_SETTINGS", "SET_CONFIG",
]

#: Positional ``%s`` placeholders, and no ``::type`` cast of its own on each one: the statements
#: cast where the SQL needs it (the task states' JSON rows), psycopg adapts the rest by the Python type
#: (a ``Float8Array`` goes out in binary through the Recorder's dumper).
_DIALECT = PGDialect_psycopg(paramstyle="format")
_DIALECT.bind_typing = BindTyping.NONE


@dataclass(frozen=True)
class PsycopgStatement:
    """A statement compiled for psycopg: its SQL, the names of its parameters in the order
    psycopg takes them, and the values of the constants it binds (such as a ``LIMIT``)."""

    sql: str
    order: tuple[str, ...]
    constants: Mapping[str, Any] = field(default_factory=dict)

    def args(self, **inputs: Any) -> tuple[Any, ...]:
        """The positional parameters for ``inputs`` (by name) and the constants."""
        return tuple(inputs[k] if k in inputs else self.constants[k] for k in self.order)


def compile_for_psycopg(statement: ClauseElement, inputs: Sequence[str], *,
                        constants: bool = False) -> PsycopgStatement:
    """Compile ``statement`` once; ``inputs`` names its parameters the caller passes, in order.

    Without ``constants`` the statement must bind nothing else, so a hot caller hands psycopg
    its own sequence as is; the check fails at import, never in a flush.
    """
    compiled = statement.compile(dialect=_DIALECT)
    assert isinstance(compiled, SQLCompiler)
    order = tuple(compiled.positiontup or ())
    fixed = {k: v for k, v in compiled.params.items() if k not in inputs}
    if set(inputs) - set(order) or (not constants and order != tuple(inputs)):
        raise RuntimeError(f"statement binds {order}, not {tuple(inputs)}: {compiled.string}")
    return PsycopgStatement(compiled.string, order, fixed)


def _p(name: str) -> Any:
    # A column's own name is reserved for the automatic VALUES/SET parameters: prefix ours.
    return bindparam(f"p_{name}")


def _inline(value: Any, type_: TypeEngine[Any] | None = None) -> ColumnElement[Any]:
    """A constant written into the SQL (quoted by the dialect) rather than bound: the hot
    statements take nothing but their input arrays."""
    rendered = literal(value, type_).compile(dialect=_DIALECT, compile_kwargs={"literal_binds": True})
    return literal_column(str(rendered), type_)


def _server_default(col: Column[Any]) -> ColumnElement[Any]:
    """What a new row holds in ``col`` when the insert does not set it: its server default, or NULL."""
    default = col.server_default
    arg = getattr(default, "arg", None)
    if arg is None:
        return null()
    if isinstance(arg, str):
        return cast(_inline(arg), col.type)
    if isinstance(arg, TextClause):
        return literal_column(arg.text, col.type)
    return arg  # a SQL function such as now()


# -- task states: one UPDATE / INSERT per batch, from one JSON array of rows ---------------------

#: Columns of ``tracker_tasks`` no task-state update sets: the key (each row's ``task_id``) and
#: the row's own insertion time.
_NOT_REPORTED = frozenset({"task_id", "created_at"})
#: JSON objects merged key by key (a later report adds keys; it never drops the earlier ones).
_MERGED_OBJECTS = frozenset({"metadata"})
#: The last error goes with the status that reported it (see :func:`_merged`).
_ERROR_COLUMNS = frozenset({"error_type", "error_message", "traceback"})


@dataclass(frozen=True)
class TaskColumns:
    """The columns of a task-state update, by how the Recorder sends them (from the column types).

    Timestamps go as epoch seconds (floats), JSON and text arrays as JSON text (a string in the
    batch's JSON row).
    """

    fields: tuple[str, ...]
    ints: frozenset[str]
    floats: frozenset[str]
    timestamps: frozenset[str]
    json: frozenset[str]


def task_columns(table: Table) -> TaskColumns:
    """The :class:`TaskColumns` of ``table`` (``tracker_tasks``): every column but the key and
    ``created_at``, in the table's order."""
    cols = [c for c in table.c if c.name not in _NOT_REPORTED]
    ints = {c.name for c in cols if isinstance(c.type, (Integer, SmallInteger, BigInteger))}
    stamps = {c.name for c in cols if isinstance(c.type, DateTime)}
    floats = {c.name for c in cols if isinstance(c.type, (Double, Float))} | stamps
    json = {c.name for c in cols if isinstance(c.type, (JSONB, ARRAY))}
    return TaskColumns(tuple(c.name for c in cols), frozenset(ints), frozenset(floats), frozenset(stamps),
                       frozenset(json))


def _rows(table: Table, kinds: TaskColumns) -> TableValuedAlias:
    """``json_to_recordset(%s::json) AS u(task_id text, ...)``: the batch as rows, from one JSON
    array of objects that name only the fields each state reports (a missing key is NULL).

    One JSON document instead of one array per column: the Recorder encodes it with the C JSON
    encoder, where psycopg adapted every element of ~37 arrays in Python (the larger part of a
    flush's client CPU). ``json``, not ``jsonb``: a nested value's text reaches the casts as
    sent."""
    names = ("task_id", *kinds.fields)
    types = {c.name: c.type for c in table.c}
    row_types = {n: Text() if n in kinds.json or n == "task_id" else types[n] for n in names}
    row_types.update({n: Double() for n in kinds.timestamps})
    return (func.json_to_recordset(cast(_p("rows"), JSON))
            .table_valued(*(column(n, row_types[n]) for n in names))
            .render_derived(name="u", with_types=True))


def _merged(table: Table, kinds: TaskColumns, u: TableValuedAlias,
            old: Callable[[str], ColumnElement[Any]]) -> dict[str, ColumnElement[Any]]:
    """The value of each reported column once the update ``u`` is merged into the stored row,
    whose columns ``old(name)`` gives (``t.<name>``, or the default of a new row).

    NULL in a column of ``u`` means "not reported": the old value stays.
    """
    newer = and_(u.c.status.is_not(None), u.c.status_ts >= old("status_ts"))
    merged: dict[str, ColumnElement[Any]] = {}
    for name in kinds.fields:
        new, was = u.c[name], old(name)
        if name in ("status", "status_ts"):
            merged[name] = case((newer, new), else_=was)
        elif name in _MERGED_OBJECTS:
            merged[name] = was.op("||")(func.coalesce(cast(new, JSONB), _server_default(table.c[name])))
        elif name in _ERROR_COLUMNS:
            # A run that completes (after a retry) clears the error of the attempt before it, and
            # the error of a status that lost to a newer one (that attempt's batch came late from
            # another pool process) goes with it.
            merged[name] = case((and_(u.c.status == _inline(Status.COMPLETED.value), newer), new),
                                (and_(u.c.status.is_not(None), not_(newer)), was),
                                else_=func.coalesce(new, was))
        elif name == "updated_at":
            merged[name] = func.greatest(was, func.coalesce(func.to_timestamp(new), func.now()))
        elif isinstance(table.c[name].type, ARRAY):
            # Sent as a JSON list: an empty one is "not reported", like NULL.
            elements = select(func.jsonb_array_elements_text(cast(new, JSONB))).correlate(u).scalar_subquery()
            merged[name] = case((and_(new.is_not(None), new != _inline("[]")), func.array(elements)), else_=was)
        elif name in kinds.json:
            merged[name] = func.coalesce(cast(new, JSONB), was)
        elif name in kinds.timestamps:
            merged[name] = func.coalesce(func.to_timestamp(new), was)
        else:
            merged[name] = func.coalesce(new, was)
    return merged


def task_update(table: Table) -> PsycopgStatement:
    """One UPDATE for a whole batch of task states, from one JSON array of rows (one
    parameter); it returns the ids it found."""
    kinds = task_columns(table)
    u = _rows(table, kinds)
    t = typing.cast(Alias, table.alias("t"))  # a table's alias is an Alias (typed as its base class)
    values = _merged(table, kinds, u, lambda name: t.c[name])
    stmt = update(t).values({t.c[k]: v for k, v in values.items()}).where(t.c.task_id == u.c.task_id)
    return compile_for_psycopg(stmt.returning(t.c.task_id), ["p_rows"])


def task_insert(table: Table) -> PsycopgStatement:
    """The rows of a batch that do not exist yet, created with their values in one write (not
    an empty row updated at once: that doubled the heap and index work of every new task).
    ``DO NOTHING`` for a row another writer created meanwhile; it returns the ids it inserted."""
    kinds = task_columns(table)
    u = _rows(table, kinds)
    values = _merged(table, kinds, u, lambda name: _server_default(table.c[name]))
    rows = select(u.c.task_id, *values.values())
    stmt = (pg_insert(table).from_select(["task_id", *values], rows)
            .on_conflict_do_nothing(index_elements=[table.c.task_id]).returning(table.c.task_id))
    return compile_for_psycopg(stmt, ["p_rows"])


_TASKS: Table = Task.__table__  # type: ignore[assignment]
TASK_COLUMNS = task_columns(_TASKS)
#: Columns a task-state update may set.
TASK_FIELDS = TASK_COLUMNS.fields
TASK_UPDATE = task_update(_TASKS)
TASK_INSERT = task_insert(_TASKS)


# -- logs, metrics (COPY) and progress points ---------------------------------------------------

def copy_columns(table: Table) -> tuple[str, ...]:
    """The columns a writer fills: all but the generated key and computed columns."""
    return tuple(c.name for c in table.c if not (c.primary_key and c.autoincrement is True) and c.computed is None)


def copy_statement(table: Table) -> str:
    """``COPY <table> (<columns>) FROM STDIN`` (COPY is not a Core statement; names quoted by the dialect)."""
    quote = _DIALECT.identifier_preparer.quote
    return f"COPY {_DIALECT.identifier_preparer.format_table(table)} " \
           f"({', '.join(quote(c) for c in copy_columns(table))}) FROM STDIN"


_LOGS: Table = TaskLog.__table__  # type: ignore[assignment]
_METRICS: Table = Metric.__table__  # type: ignore[assignment]
_PROGRESS: Table = ProgressBatch.__table__  # type: ignore[assignment]
LOG_COLUMNS = copy_columns(_LOGS)
LOG_COPY = copy_statement(_LOGS)
METRIC_COLUMNS = copy_columns(_METRICS)
METRIC_COPY = copy_statement(_METRICS)
PROGRESS_COLUMNS = copy_columns(_PROGRESS)


def _progress_insert(table: Table) -> PsycopgStatement:
    """One row of arrays per task and flush; its two times are epoch seconds."""
    names = copy_columns(table)
    values = {n: func.to_timestamp(_p(n)) if isinstance(table.c[n].type, DateTime) else _p(n) for n in names}
    # inline(): no RETURNING of the generated key (executemany would fetch a row per task)
    return compile_for_psycopg(pg_insert(table).values(values).inline(), [f"p_{n}" for n in names])


PROGRESS_INSERT = _progress_insert(_PROGRESS)


# -- workers -------------------------------------------------------------------------------------

_PROCESSES: Table = WorkerProcess.__table__  # type: ignore[assignment]
_WORKERS: Table = Worker.__table__  # type: ignore[assignment]
#: A process's identity, fixed by its first heartbeat (``worker_id`` is ``hostname:pid``).
_PROCESS_IDENTITY = frozenset({"worker_id", "hostname", "pid", "started_at"})
WORKER_PROCESS_COLUMNS = tuple(c.name for c in _PROCESSES.c)


def _process_upsert(table: Table) -> PsycopgStatement:
    names = tuple(c.name for c in table.c)
    stmt = pg_insert(table).values({n: _p(n) for n in names})
    stmt = stmt.on_conflict_do_update(index_elements=[table.c.worker_id],
                                      set_={n: stmt.excluded[n] for n in names if n not in _PROCESS_IDENTITY})
    return compile_for_psycopg(stmt, [f"p_{n}" for n in names])


def _node_beat(table: Table) -> PsycopgStatement:
    """A process's heartbeat is its worker's too. A worker whose main process wrote no record yet
    (started before the schema had one, or never "ready") gets one from its first heartbeat."""
    stmt = pg_insert(table).values(hostname=_p("hostname"), started_at=_p("started_at"),
                                   heartbeat_at=_p("heartbeat_at"))
    stmt = stmt.on_conflict_do_update(
        index_elements=[table.c.hostname],
        set_={"heartbeat_at": func.greatest(table.c.heartbeat_at, stmt.excluded.heartbeat_at)})
    return compile_for_psycopg(stmt, ["p_hostname", "p_started_at", "p_heartbeat_at"])


def _ready(table: Table) -> PsycopgStatement:
    """The worker's record when it is ready: online again (no ``stopped_at``), beating now."""
    given = ("hostname", "pid", "concurrency", "queues", "started_at")
    stmt = pg_insert(table).values({**{n: _p(n) for n in given}, "stopped_at": null(), "heartbeat_at": func.now()})
    stmt = stmt.on_conflict_do_update(
        index_elements=[table.c.hostname],
        set_={**{n: stmt.excluded[n] for n in given if n != "hostname"}, "stopped_at": null(),
              "heartbeat_at": func.now()})
    return compile_for_psycopg(stmt, [f"p_{n}" for n in given])


WORKER_PROCESS_UPSERT = _process_upsert(_PROCESSES)
WORKER_NODE_BEAT = _node_beat(_WORKERS)
WORKER_READY = _ready(_WORKERS)
WORKER_STOPPED = compile_for_psycopg(
    update(_WORKERS).where(_WORKERS.c.hostname == _p("hostname")).values(stopped_at=func.now()), ["p_hostname"])

#: The query layer's recent median run time, for the Recorder's connection (rare: cached a minute).
MEDIAN_RUNTIME = compile_for_psycopg(queries.recent_median_runtime(_p("task_type")), ["p_task_type"],
                                     constants=True)


# -- the writers' sessions -------------------------------------------------------------------------

#: Planner settings of a writer's connection. Every statement a writer runs finds rows by key (the
#: task-state UPDATE joins its batch to ``tracker_tasks`` on the primary key), yet psycopg prepares a
#: statement from its fifth run and PostgreSQL then keeps one generic plan until the table is next
#: analysed. Made while the table was still small, that plan was a hash join over a sequential scan
#: of the whole table, and every later batch paid for the scan as the table grew (435 us of server
#: CPU per updated row at 27k rows against 72 with an index probe per row; planning every batch
#: afresh instead cost 120). With these off, the cached plan probes the key whatever the statistics.
WRITER_SETTINGS: tuple[tuple[str, str], ...] = (
    ("enable_seqscan", "off"), ("enable_hashjoin", "off"), ("enable_mergejoin", "off"))
#: ``set_config(name, value, false)``: one setting for the rest of the session (once committed).
SET_CONFIG = compile_for_psycopg(select(func.set_config(_p("name"), _p("value"), false())),
                                 ["p_name", "p_value"])
