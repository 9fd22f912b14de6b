"""
Shared fixtures: one store per test, on SQLite and on PostgreSQL.

PostgreSQL is reached at ``CAVRA_TEST_POSTGRES_URL`` (default: the local server
on 127.0.0.1:5432 as user postgres). The tests create a database of their own
and drop it at the end. Where PostgreSQL cannot be reached the PostgreSQL
variants are skipped, visibly, except under ``CI=true``, where they fail.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from cavra_core import Engine
from cavra_core.store import MODELS, database_proxy

POSTGRES_ADMIN_URL = os.environ.get(
    "CAVRA_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
)
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def _postgres_admin():
    import psycopg2

    connection = psycopg2.connect(POSTGRES_ADMIN_URL, connect_timeout=5)
    connection.autocommit = True
    return connection


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A fresh PostgreSQL database for this test session, dropped afterwards."""
    try:
        admin = _postgres_admin()
    except Exception as exc:  # noqa: BLE001 - any failure means "not reachable"
        message = f"PostgreSQL not reachable at {POSTGRES_ADMIN_URL}: {exc}"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    name = f"cavra_test_{uuid.uuid4().hex[:10]}"
    with admin.cursor() as cursor:
        cursor.execute(f'CREATE DATABASE "{name}"')
    base = POSTGRES_ADMIN_URL.rsplit("/", 1)[0]
    try:
        yield f"{base}/{name}"
    finally:
        database_proxy.obj and database_proxy.obj.close()
        with admin.cursor() as cursor:
            cursor.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = %s AND pid <> pg_backend_pid()",
                (name,),
            )
            cursor.execute(f'DROP DATABASE IF EXISTS "{name}"')
        admin.close()


def _empty_postgres(url: str) -> None:
    """Remove every row the previous test left, keeping the migrated schema."""
    import psycopg2

    connection = psycopg2.connect(url)
    connection.autocommit = True
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public' "
            "AND tablename <> 'schema_migration'"
        )
        tables = [row[0] for row in cursor.fetchall()]
        if tables:
            cursor.execute(
                "TRUNCATE " + ", ".join(f'"{t}"' for t in tables) + " CASCADE"
            )
    connection.close()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path) -> str:
    """A database URL for an empty store: SQLite file or PostgreSQL database."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/cavra.db"
    url = request.getfixturevalue("postgres_url")
    _empty_postgres(url)
    return url


@pytest.fixture
def sqlite_url(tmp_path) -> str:
    return f"sqlite:///{tmp_path}/cavra.db"


@pytest.fixture
def make_engine(database_url: str) -> Iterator[Callable[..., Engine]]:
    """Open engines on this test's store; all are closed at the end."""
    opened: list[Engine] = []

    def factory(connectors: dict[str, Any] | None = None, **options: Any) -> Engine:
        engine = Engine(database_url, connectors or {}, **options)
        opened.append(engine)
        return engine

    yield factory
    for engine in opened:
        engine.close()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    # A run that collects no test must fail loudly, never pass as "nothing to do".
    if exitstatus == pytest.ExitCode.NO_TESTS_COLLECTED:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


__all__ = ["MODELS"]
