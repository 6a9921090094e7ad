"""SQLAlchemy 2.0 models: the database indexes recipes.json and records runs.

The schema is built only through the Alembic migrations in `migrations/`;
a test checks that these models and the migrations agree.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    Column,
    ColumnElement,
    Connection,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    case,
    event,
    func,
    inspect,
    select,
)
from sqlalchemy.orm import (
    ColumnProperty,
    DeclarativeBase,
    Mapped,
    Session,
    column_property,
    mapped_column,
    relationship,
)

from registry.dbinfo import SCHEMA_REVISION  # noqa: F401 - re-exported: the revision these models are

# Named constraints so that SQLite batch migrations can alter them later.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON}


class SyncState(Base):
    """Key/value bookkeeping, e.g. the content hash of the last synced recipes file."""

    __tablename__ = "sync_state"
    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(Text)


class RecipeRow(Base):
    __tablename__ = "recipes"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    family: Mapped[str] = mapped_column(String(32))
    size: Mapped[str] = mapped_column(String(16))
    base_model: Mapped[str] = mapped_column(String(256))
    content_hash: Mapped[str] = mapped_column(String(64))
    body: Mapped[dict[str, Any]] = mapped_column(JSON)
    stages: Mapped[list["StageRow"]] = relationship(back_populates="recipe", cascade="all, delete-orphan",
                                                   order_by="StageRow.position")


class StageRow(Base):
    __tablename__ = "stages"
    __table_args__ = (UniqueConstraint("recipe_id", "name"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    recipe_id: Mapped[int] = mapped_column(ForeignKey("recipes.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(16))
    position: Mapped[int] = mapped_column(Integer)
    content_hash: Mapped[str] = mapped_column(String(64))
    body: Mapped[dict[str, Any]] = mapped_column(JSON)
    recipe: Mapped[RecipeRow] = relationship(back_populates="stages")


class DatasetRow(Base):
    __tablename__ = "datasets"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(256), unique=True)
    hub_id: Mapped[str | None] = mapped_column(String(256))
    published: Mapped[bool] = mapped_column(Boolean, default=True)
    content_hash: Mapped[str] = mapped_column(String(64))
    body: Mapped[dict[str, Any]] = mapped_column(JSON)


class DatasetVersionRow(Base):
    """A concrete version of a dataset: a hub revision, or a content hash of local files (DVC / fixtures)."""

    __tablename__ = "dataset_versions"
    __table_args__ = (UniqueConstraint("dataset_id", "revision", "content_hash"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    dataset_id: Mapped[int] = mapped_column(ForeignKey("datasets.id", ondelete="CASCADE"), index=True)
    revision: Mapped[str] = mapped_column(String(128), default="")
    content_hash: Mapped[str] = mapped_column(String(128), default="")
    path: Mapped[str | None] = mapped_column(Text)
    rows: Mapped[int | None] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class CheckpointRow(Base):
    __tablename__ = "checkpoints"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(256), unique=True)
    hub_id: Mapped[str | None] = mapped_column(String(256))
    kind: Mapped[str] = mapped_column(String(32))
    published: Mapped[bool] = mapped_column(Boolean, default=True)
    produced_by: Mapped[str | None] = mapped_column(String(64))  # "recipe:stage"
    run_id: Mapped[str | None] = mapped_column(ForeignKey("runs.id", ondelete="SET NULL"), index=True)
    path: Mapped[str | None] = mapped_column(Text)
    quantization: Mapped[str | None] = mapped_column(String(64))
    content_hash: Mapped[str] = mapped_column(String(64), default="")
    body: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)


class PublishedMetricRow(Base):
    __tablename__ = "published_metrics"
    __table_args__ = (UniqueConstraint("checkpoint_id", "benchmark", "protocol_fingerprint"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    checkpoint_id: Mapped[int] = mapped_column(ForeignKey("checkpoints.id", ondelete="CASCADE"), index=True)
    benchmark: Mapped[str] = mapped_column(String(128))
    value: Mapped[float] = mapped_column(Float)
    protocol: Mapped[dict[str, Any]] = mapped_column(JSON)
    protocol_fingerprint: Mapped[str] = mapped_column(String(64))
    source: Mapped[str] = mapped_column(Text)
    body: Mapped[dict[str, Any]] = mapped_column(JSON)


def document_digest(body: Any) -> str:
    """The key of a run document: the first 128 bits of the sha256 of its canonical JSON (plenty to
    tell plans apart; every run stores two of these)."""
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


class RunDocumentRow(Base):
    """A run's plan or deviation list, stored once per distinct content (~6 KB of JSON per run
    otherwise): every smoke run of one recipe stage with the same settings shares one row."""

    __tablename__ = "run_documents"
    digest: Mapped[str] = mapped_column(String(32), primary_key=True)
    body: Mapped[Any] = mapped_column(JSON)


class RunRow(Base):
    __tablename__ = "runs"
    # `repro runs` pages newest first (optionally within a recipe) and the stale-run sweep looks for
    # status 'running': each reads an index instead of the whole table.
    __table_args__ = (Index("ix_runs_newest", "created_at", "id"),
                      Index("ix_runs_recipe_newest", "recipe", "created_at", "id"),
                      Index("ix_runs_status", "status"),
                      Index("ix_runs_seq", "seq", unique=True))
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    # The run's number, in the order runs were recorded: what run_metrics refers to (4 bytes instead of
    # the id's 30-60 in each row and index entry). Set on flush (_number_runs_and_metrics); nullable only
    # because SQLite cannot add a NOT NULL column to runs in place (migration 0005).
    seq: Mapped[int | None] = mapped_column(Integer)
    recipe: Mapped[str] = mapped_column(String(64))
    stage: Mapped[str] = mapped_column(String(16))
    profile: Mapped[str] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(16))  # running | succeeded | failed | interrupted
    run_dir: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    heartbeat_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    pid: Mapped[int | None] = mapped_column(Integer)
    hostname: Mapped[str | None] = mapped_column(String(256))
    git_sha: Mapped[str | None] = mapped_column(String(64))
    git_dirty: Mapped[bool | None] = mapped_column(Boolean)
    plan_digest: Mapped[str] = mapped_column(ForeignKey("run_documents.digest"))
    deviations_digest: Mapped[str] = mapped_column(ForeignKey("run_documents.digest"))
    final_metrics: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    error: Mapped[str | None] = mapped_column(Text)
    # Loaded with the run, so `run.plan` works after its session has closed.
    plan_document: Mapped[RunDocumentRow] = relationship(foreign_keys=[plan_digest], lazy="joined", viewonly=True)
    deviations_document: Mapped[RunDocumentRow] = relationship(foreign_keys=[deviations_digest], lazy="joined",
                                                               viewonly=True)

    # `run.plan` and `run.deviations` read and write as before (RunRow(plan=...) included); the JSON
    # goes to run_documents under its digest when the session flushes (see _write_run_documents).
    def _document(self, name: str, empty: Any) -> Any:
        pending = self.__dict__.get(f"_pending_{name}")
        if pending is not None:
            return pending[1]
        row = getattr(self, f"{name}_document")
        return row.body if row is not None else empty

    def _set_document(self, name: str, value: Any) -> None:
        digest = document_digest(value)
        self.__dict__[f"_pending_{name}"] = (digest, value)
        setattr(self, f"{name}_digest", digest)

    @property
    def plan(self) -> dict[str, Any]:
        return self._document("plan", {})

    @plan.setter
    def plan(self, value: dict[str, Any] | None) -> None:
        self._set_document("plan", {} if value is None else value)

    @property
    def deviations(self) -> list[Any]:
        return self._document("deviations", [])

    @deviations.setter
    def deviations(self, value: list[Any] | None) -> None:
        self._set_document("deviations", [] if value is None else value)


@event.listens_for(Session, "before_flush")
def _write_run_documents(session: Session, _context, _instances) -> None:
    """Insert the documents of new or changed runs before the runs themselves (foreign keys), once per
    digest and race-free: INSERT ... ON CONFLICT DO NOTHING, since concurrent runs share documents."""
    rows: dict[str, Any] = {}
    for obj in [*session.new, *session.dirty]:
        if not isinstance(obj, RunRow):
            continue
        if obj.plan_digest is None:
            obj.plan = {}
        if obj.deviations_digest is None:
            obj.deviations = []
        for name in ("plan", "deviations"):
            pending = obj.__dict__.get(f"_pending_{name}")
            if pending is not None and obj.__dict__.get(f"_written_{name}") != pending[0]:
                rows[pending[0]] = pending[1]
                obj.__dict__[f"_written_{name}"] = pending[0]
    if rows:
        insert_documents(session, rows)


def insert_documents(session_or_conn, rows: dict[str, Any]) -> None:
    conn = session_or_conn.connection() if isinstance(session_or_conn, Session) else session_or_conn
    table = RunDocumentRow.__table__
    values = [{"digest": d, "body": b} for d, b in rows.items()]
    if conn.dialect.name in ("postgresql", "sqlite"):
        if conn.dialect.name == "postgresql":
            from sqlalchemy.dialects.postgresql import insert
        else:
            from sqlalchemy.dialects.sqlite import insert
        conn.execute(insert(table).on_conflict_do_nothing(index_elements=["digest"]), values)
        return
    have = set(conn.execute(select(table.c.digest).where(table.c.digest.in_(list(rows)))).scalars())
    missing = [v for v in values if v["digest"] not in have]
    if missing:
        conn.execute(table.insert(), missing)


class _RunId(ColumnProperty.Comparator):
    """`RunMetricRow.run_id == ID` (and in_, like, ...) compares on runs and the metric side compares
    numbers: `run_seq IN (SELECT seq FROM runs WHERE id = ...)`, one primary-key lookup."""

    def operate(self, op: Callable[..., Any], *other: Any, **kwargs: Any) -> ColumnElement[bool]:
        runs = RunRow.__table__
        return RunMetricRow.__table__.c.run_seq.in_(select(runs.c.seq).where(op(runs.c.id, *other, **kwargs)))

    def reverse_operate(self, op: Callable[..., Any], other: Any, **kwargs: Any) -> ColumnElement[bool]:
        runs = RunRow.__table__
        return RunMetricRow.__table__.c.run_seq.in_(select(runs.c.seq).where(op(other, runs.c.id, **kwargs)))


class RunMetricRow(Base):
    """Final and eval metrics, one row each (compare and diff query them). Per-step training values
    live in RunSeriesRow and in the run directory's steps.tsv, not here.

    A row names its run by runs.seq; `run_id` reads, compares and constructs as the run's id
    (RunMetricRow(run_id=ID, ...), `RunMetricRow.run_id == ID`), and `run_seq` and `position` are
    filled in when the session flushes. `position` numbers a run's rows in the order they were
    written: readers let a later eval value of a name replace an earlier one. The primary key
    (run_seq, position) is the one index: a run holds a handful of rows."""

    __tablename__ = "run_metrics"
    run_seq: Mapped[int] = mapped_column(ForeignKey("runs.seq", ondelete="CASCADE"), primary_key=True)
    position: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    kind: Mapped[str] = mapped_column(String(16), default="train")  # final | eval (train: old rows)
    name: Mapped[str] = mapped_column(String(128))
    value: Mapped[float] = mapped_column(Float)
    step: Mapped[int | None] = mapped_column(Integer)
    protocol: Mapped[dict[str, Any] | None] = mapped_column(JSON)


_METRICS = RunMetricRow.__table__
RunMetricRow.run_id = column_property(
    case((_METRICS.c.run_seq.is_not(None),
          select(RunRow.__table__.c.id).where(RunRow.__table__.c.seq == _METRICS.c.run_seq)
          .correlate_except(RunRow.__table__).scalar_subquery())),
    comparator_factory=_RunId)


def _next_run_seqs(conn: Connection, count: int) -> list[int]:
    """`count` new run numbers. PostgreSQL draws them from runs_seq_seq (concurrent writers never share
    one); SQLite takes its write lock at BEGIN (registry.db), so MAX + 1 cannot race."""
    if conn.dialect.name == "postgresql":
        from sqlalchemy import text

        return list(conn.execute(text("SELECT nextval('runs_seq_seq') FROM generate_series(1, :n)"),
                                 {"n": count}).scalars())
    runs = RunRow.__table__
    top = conn.execute(select(func.coalesce(func.max(runs.c.seq), 0))).scalar()
    return [top + 1 + k for k in range(count)]


@event.listens_for(Session, "before_flush")
def _number_runs_and_metrics(session: Session, _context: object, _instances: object) -> None:
    """Give new runs their seq, then new metric rows their run's seq and the next positions of that run.
    The run's row is locked first (FOR UPDATE, PostgreSQL), so two transactions adding metrics to one
    run take their positions one after the other."""
    new_runs = [obj for obj in session.new if isinstance(obj, RunRow) and obj.seq is None]
    metrics = [obj for obj in session.new if isinstance(obj, RunMetricRow) and obj.position is None]
    if not new_runs and not metrics:
        return
    conn = session.connection()
    if new_runs:
        for run, seq in zip(new_runs, _next_run_seqs(conn, len(new_runs))):
            run.seq = seq
    pending = {run.id: run.seq for run in session.new if isinstance(run, RunRow)}
    runs = RunRow.__table__
    next_position: dict[int, int] = {}
    for row in metrics:
        if row.run_seq is None:
            run_id = row.__dict__.get("run_id")
            seq = pending.get(run_id)
            if seq is None:
                seq = conn.execute(select(runs.c.seq).where(runs.c.id == run_id).with_for_update()).scalar()
            if seq is None:
                raise KeyError(f"no run {run_id!r} for its metric {row.name!r}")
            row.run_seq = seq
        if row.run_seq not in next_position:
            top = conn.execute(select(func.max(_METRICS.c.position)).where(_METRICS.c.run_seq == row.run_seq)).scalar()
            next_position[row.run_seq] = -1 if top is None else top
        next_position[row.run_seq] += 1
        row.position = next_position[row.run_seq]


class RunSeriesRow(Base):
    """One logged training metric of one run over its steps: two JSON arrays, one row per run and
    metric. A run logs thousands of steps; a row per value made run_metrics the largest table."""

    __tablename__ = "run_series"
    __table_args__ = (UniqueConstraint("run_id", "kind", "name"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(128))
    kind: Mapped[str] = mapped_column(String(16), default="train")
    points: Mapped[int] = mapped_column(Integer)
    steps: Mapped[list[Any]] = mapped_column(JSON)
    # Non-finite values are stored as the strings "nan", "inf", "-inf" (PostgreSQL's JSON has no NaN).
    values: Mapped[list[Any]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class LineageNodeRow(Base):
    """A node of the lineage graph, stored once: checkpoint:NAME, dataset:NAME@REV, code:REPO@COMMIT,
    stage:RECIPE:STAGE, run:ID. Edges refer to nodes by id, so each key's text is stored once (and
    indexed once) instead of in every edge and in both edge indexes."""

    __tablename__ = "lineage_nodes"
    id: Mapped[int] = mapped_column(primary_key=True)
    key: Mapped[str] = mapped_column(String(512), unique=True)


NODES = LineageNodeRow.__table__


class _NodeKey(ColumnProperty.Comparator):
    """`LineageEdgeRow.parent == key` (and like, in_, ...): the comparison runs on the node table and the
    edge side compares ids, `parent_id IN (SELECT id FROM lineage_nodes WHERE key = ...)`, so it is one
    indexed lookup, not the node subquery evaluated for every edge."""

    def operate(self, op: Callable[..., Any], *other: Any, **kwargs: Any) -> ColumnElement[bool]:
        id_column = self.prop.info["id_column"]
        return id_column.in_(select(NODES.c.id).where(op(NODES.c.key, *other, **kwargs)))

    def reverse_operate(self, op: Callable[..., Any], other: Any, **kwargs: Any) -> ColumnElement[bool]:
        id_column = self.prop.info["id_column"]
        return id_column.in_(select(NODES.c.id).where(op(other, NODES.c.key, **kwargs)))


def _node_key(id_column: Column[int]) -> ColumnProperty[str]:
    """The key of the node `id_column` refers to, as an attribute of the edge (read and set as text)."""
    key = select(NODES.c.key).where(NODES.c.id == id_column).correlate_except(NODES).scalar_subquery()
    # The CASE names the edge column outside the subquery, so that a query selecting only this
    # attribute still reads FROM lineage_edges (a bare correlated subquery would bring none).
    return column_property(case((id_column.is_not(None), key)), comparator_factory=_NodeKey,
                           info={"id_column": id_column})


class LineageEdgeRow(Base):
    """parent -> child, between lineage_nodes ids.

    `parent` and `child` read, compare and construct as the node keys (LineageEdgeRow(parent=KEY, ...),
    `LineageEdgeRow.child == KEY`); the ids are filled in when the session flushes (_write_edge_nodes).
    The unique (child_id, parent_id, relation) index serves upstream walks and the parent_id index
    downstream ones: a recursive lineage query reads the edges of its answer, never the whole table.
    (Child first: a new run's edges go to the end of that index, whose pages so stay full; keyed by
    parent first, they went under old parents all over it and left its pages half empty.)"""

    __tablename__ = "lineage_edges"
    __table_args__ = (UniqueConstraint("child_id", "parent_id", "relation"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    parent_id: Mapped[int] = mapped_column(ForeignKey("lineage_nodes.id"), index=True)
    child_id: Mapped[int] = mapped_column(ForeignKey("lineage_nodes.id"))
    relation: Mapped[str] = mapped_column(String(32))
    origin: Mapped[str] = mapped_column(String(16), default="recipe")  # recipe | run | conversion
    content_hash: Mapped[str | None] = mapped_column(String(128))  # DVC/file hash recorded at the time
    note: Mapped[str | None] = mapped_column(Text)


LineageEdgeRow.parent = _node_key(LineageEdgeRow.__table__.c.parent_id)
LineageEdgeRow.child = _node_key(LineageEdgeRow.__table__.c.child_id)


def node_ids(session_or_conn: Session | Connection, keys: Iterable[str]) -> dict[str, int]:
    """{key: node id} for `keys`, creating the nodes that do not exist yet. Race-free on SQLite and
    PostgreSQL (INSERT ... ON CONFLICT DO NOTHING, then read back), since concurrent runs share nodes."""
    conn = session_or_conn.connection() if isinstance(session_or_conn, Session) else session_or_conn
    wanted = list(dict.fromkeys(keys))
    found: dict[str, int] = {}

    def read(batch: list[str]) -> None:
        found.update((k, i) for k, i in conn.execute(select(NODES.c.key, NODES.c.id).where(NODES.c.key.in_(batch))))

    for start in range(0, len(wanted), 500):
        read(wanted[start:start + 500])
    missing = [k for k in wanted if k not in found]
    if missing:
        if conn.dialect.name == "postgresql":
            from sqlalchemy.dialects.postgresql import insert
        else:
            from sqlalchemy.dialects.sqlite import insert
        conn.execute(insert(NODES).on_conflict_do_nothing(index_elements=["key"]), [{"key": k} for k in missing])
        for start in range(0, len(missing), 500):
            read(missing[start:start + 500])
    return found


@event.listens_for(Session, "before_flush")
def _write_edge_nodes(session: Session, _context: object, _instances: object) -> None:
    """Give new edges (and edges whose parent or child was reassigned) the ids of their nodes."""
    pending = []
    for obj in [*session.new, *session.dirty]:
        if not isinstance(obj, LineageEdgeRow):
            continue
        for name in ("parent", "child"):
            key = obj.__dict__.get(name)
            if key is not None and (obj in session.new or inspect(obj).attrs[name].history.added):
                pending.append((obj, name, key))
    if pending:
        ids = node_ids(session, [key for _, _, key in pending])
        for obj, name, key in pending:
            setattr(obj, f"{name}_id", ids[key])
