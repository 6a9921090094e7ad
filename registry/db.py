"""Engine, schema-version gate and migrations.

SQLite (default: a file in the user's data directory) runs in WAL mode with a
busy timeout and takes its write lock at BEGIN (IMMEDIATE), so concurrent
writers queue instead of failing on a lock upgrade. Any SQLAlchemy URL works
through REPRO_DATABASE_URL (PostgreSQL for teams).

Read commands use `read_scope`: SQLite opened with mode=ro (the file cannot be
written through it, even by root) and PostgreSQL in a READ ONLY transaction,
so they work on a read-only database and cannot write by mistake.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Iterator

from sqlalchemy import Engine, create_engine, event, inspect, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, DatabaseError, OperationalError, ProgrammingError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

# database_url and default_url are re-exported: callers ask this module for the URL.
from registry.dbinfo import KNOWN_REVISIONS, MIGRATIONS_DIR, SCHEMA_REVISION, database_url, default_url  # noqa: F401
from registry.errors import ReproError


def safe_url(url: str) -> str:
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return "<unparseable database URL>"


def make_engine(url: str) -> Engine:
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise ReproError(f"invalid database URL {safe_url(url)!r}; expected e.g. sqlite:///path/repro.db "
                         "or postgresql+psycopg://user@host/db") from None
    if parsed.drivername.startswith("sqlite"):
        engine = create_engine(parsed, connect_args={"timeout": 60})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn, _record):
            # Let SQLAlchemy emit BEGIN itself (pysqlite's implicit transactions
            # would start deferred and fail on the write-lock upgrade).
            dbapi_conn.isolation_level = None
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA busy_timeout=60000")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

        @event.listens_for(engine, "begin")
        def _begin_immediate(conn):
            conn.exec_driver_sql("BEGIN IMMEDIATE")

        return engine
    if parsed.drivername == "postgresql":
        parsed = parsed.set(drivername="postgresql+psycopg")
    try:
        connect_args = {"connect_timeout": 10} if parsed.drivername.startswith("postgresql") else {}
        return create_engine(parsed, pool_pre_ping=True, connect_args=connect_args)
    except (ImportError, ModuleNotFoundError) as exc:
        raise ReproError(f"database driver missing for {safe_url(url)!r}: {exc.name}; "
                         "install repro[postgres]") from None


def _alembic_config(engine_url: str):
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.set_main_option("sqlalchemy.url", engine_url.replace("%", "%%"))
    return cfg


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as conn:
        if not inspect(conn).has_table("alembic_version"):
            return None
        return conn.execute(text("SELECT version_num FROM alembic_version")).scalar()


def upgrade(engine: Engine) -> tuple[str | None, str]:
    """Bring the schema to SCHEMA_REVISION. Returns (before, after)."""
    from alembic import command

    before = _connectable_revision(engine)
    if before is not None and before not in KNOWN_REVISIONS:
        raise _newer_schema(engine, before)
    run_migrations(engine, command.upgrade, "head")
    from registry.sync import store_walk_statements

    with sessionmaker(engine).begin() as session:  # so that the cold read path works right after an upgrade
        store_walk_statements(session)
    return before, SCHEMA_REVISION


def run_migrations(engine: Engine, action, revision: str) -> None:
    """alembic `action` (command.upgrade / command.downgrade) to `revision` in one transaction."""
    cfg = _alembic_config(engine.url.render_as_string(hide_password=False))
    with engine.connect() as conn:
        sqlite = conn.dialect.name == "sqlite"
        if sqlite:
            # Batch migrations rebuild a table by copy, drop and rename; with foreign keys on, dropping
            # `runs` would cascade-delete every run's metrics and series. The pragma must be set outside
            # a transaction (inside one SQLite ignores it), hence on the driver connection, before BEGIN.
            conn.connection.driver_connection.execute("PRAGMA foreign_keys=OFF")
        try:
            with conn.begin():
                if conn.dialect.name == "postgresql":
                    # Two processes upgrading at once would both try CREATE TABLE.
                    conn.execute(text("SELECT pg_advisory_xact_lock(7311)"))
                cfg.attributes["connection"] = conn
                action(cfg, revision)
                if sqlite and conn.exec_driver_sql("PRAGMA foreign_key_check").first() is not None:
                    raise ReproError(f"migrating {safe_url(str(engine.url))} to {revision} broke a foreign key; "
                                     "nothing was changed")
        finally:
            if sqlite:
                conn.connection.driver_connection.execute("PRAGMA foreign_keys=ON")


def _connectable_revision(engine: Engine) -> str | None:
    try:
        return current_revision(engine)
    except OperationalError as exc:
        raise ReproError(f"cannot connect to database {safe_url(str(engine.url.render_as_string(False)))}: "
                         f"{_first_line(exc)}") from None
    except DatabaseError as exc:
        if "not a database" not in str(exc):
            raise
        raise _not_a_database(engine.url.database, exc) from None


def _not_a_database(path: str | None, exc: SQLAlchemyError) -> ReproError:
    # sqlite3 says only "file is not a database"; name the file and the two ways out.
    return ReproError(f"{path} is not an SQLite database ({_first_line(exc)}); move it aside (a new database is "
                      "created there) or point REPRO_DATABASE_URL at a repro database")


def _first_line(exc: SQLAlchemyError) -> str:
    orig = getattr(exc, "orig", None) or exc
    return str(orig).strip().splitlines()[0] if str(orig).strip() else type(orig).__name__


def _newer_schema(engine: Engine, revision: str) -> ReproError:
    return ReproError(f"database {safe_url(engine.url.render_as_string(False))} is at schema revision "
                      f"{revision!r}, newer than this repro ({SCHEMA_REVISION}); upgrade repro")


@lru_cache(maxsize=8)
def _engine_for(url: str) -> Engine:
    engine = make_engine(url)
    revision = _connectable_revision(engine)
    if revision is None:
        with engine.connect() as conn:
            empty = not inspect(conn).get_table_names()
        if not empty:
            raise ReproError(f"database {safe_url(url)} has tables but no schema revision; "
                             "run `repro db upgrade` on an empty database instead")
        upgrade(engine)  # a brand-new database is created at the current schema
    elif revision != SCHEMA_REVISION:
        if revision in KNOWN_REVISIONS:
            raise ReproError(f"database {safe_url(url)} is at schema revision {revision!r}, older than "
                             f"{SCHEMA_REVISION!r}; run `repro db upgrade`")
        raise _newer_schema(engine, revision)
    return engine


def get_engine(url: str | None = None) -> Engine:
    return _engine_for(url or database_url())


def _sqlite_path(url: str) -> Path | None:
    try:
        parsed = make_url(url)
    except ArgumentError:
        return None  # get_engine names the bad URL
    if not parsed.drivername.startswith("sqlite") or not parsed.database or parsed.database == ":memory:":
        return None
    return Path(parsed.database).absolute()


def sqlite_file_missing(url: str | None = None) -> bool:
    """True for an SQLite URL whose file does not exist yet: a read command then has nothing to read
    and need not create it."""
    path = _sqlite_path(url or database_url())
    return path is not None and not path.exists()


def _sqlite_read_engine(path: Path) -> Engine:
    import sqlite3
    from urllib.parse import quote

    # immutable=1 only where nobody can write (the directory is read-only to us): a WAL database
    # cannot otherwise be opened there, since its -shm file cannot be created.
    immutable = not os.access(path.parent, os.W_OK) and not (path.parent / f"{path.name}-shm").exists()
    uri = f"file:{quote(str(path))}?mode=ro" + ("&immutable=1" if immutable else "")
    engine = create_engine("sqlite://", creator=lambda: sqlite3.connect(uri, uri=True, timeout=60,
                                                                         check_same_thread=False))

    @event.listens_for(engine, "connect")
    def _read_only_pragmas(dbapi_conn, _record):
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA busy_timeout=60000")
        cur.execute("PRAGMA query_only=ON")
        cur.close()

    @event.listens_for(engine, "begin")
    def _begin_deferred(conn):
        conn.exec_driver_sql("BEGIN")  # one read snapshot for the whole command, no write lock

    return engine


def _read_engine_for(url: str) -> Engine | None:
    """A read-only engine on an SQLite file at the current schema; None when the file is missing or
    not at the current schema (the caller then goes through get_engine, which creates or refuses)."""
    path = _sqlite_path(url)
    if path is None:
        return None
    if not path.exists():
        return None
    engine = _sqlite_read_engine(path)
    try:
        revision = current_revision(engine)
    except OperationalError as exc:
        engine.dispose()
        raise ReproError(f"cannot open database {path}: {_first_line(exc)}") from None
    except DatabaseError as exc:
        engine.dispose()
        if "not a database" not in str(exc):
            raise
        raise _not_a_database(str(path), exc) from None
    if revision != SCHEMA_REVISION:
        engine.dispose()
        return None
    return engine


@contextmanager
def read_scope(url: str | None = None) -> Iterator[Session]:
    """A session that cannot write, for read commands; it is rolled back at the end."""
    url = url or database_url()
    engine = _read_engine_for(url)
    if engine is None:
        shared = get_engine(url)  # creates a missing database, refuses an old or foreign one
        engine = _read_engine_for(url)
    try:
        with Session(engine or shared) as session:
            if session.get_bind().dialect.name == "postgresql":
                session.execute(text("SET TRANSACTION READ ONLY"))
            yield session
            session.rollback()
    except (OperationalError, ProgrammingError) as exc:
        raise ReproError(f"database error on {safe_url(url)}: {_first_line(exc)}") from None
    except DatabaseError as exc:
        if "not a database" not in str(exc):
            raise
        raise _not_a_database(str(_sqlite_path(url)), exc) from None
    finally:
        if engine is not None:
            engine.dispose()  # close the read-only file now; the shared engine stays cached


def is_read_only_error(exc: BaseException) -> bool:
    text_ = str(exc).lower()
    return any(s in text_ for s in ("readonly", "read-only", "read only", "permission denied"))


@contextmanager
def session_scope(url: str | None = None) -> Iterator[Session]:
    """One transaction: committed on success, rolled back on error."""
    engine = get_engine(url)
    maker = sessionmaker(engine, expire_on_commit=False)
    try:
        with maker.begin() as session:
            yield session
    except (OperationalError, ProgrammingError) as exc:
        raise ReproError(f"database error on {safe_url(url or database_url())}: {_first_line(exc)}") from None
