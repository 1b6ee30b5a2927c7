"""Fixtures for the service tests: a PostgreSQL database per test (skipped when unreachable)."""

from __future__ import annotations

import os
import uuid
from contextlib import contextmanager

import pytest

PG_DSN = os.environ.get("TESSERA_TEST_PG", "host=127.0.0.1 port=5432 user=postgres dbname=test")


def _pg_admin():
    import psycopg

    return psycopg.connect(PG_DSN, autocommit=True, connect_timeout=3)


@pytest.fixture(scope="session")
def pg_available() -> bool:
    try:
        with _pg_admin() as conn:
            conn.execute("SELECT 1")
        return True
    except Exception as exc:  # noqa: BLE001 - any failure means "not reachable"
        pytest.skip(f"PostgreSQL at {PG_DSN!r} is not reachable: {exc}")


@contextmanager
def fresh_pg_database():
    """Create a uniquely named database; yield its SQLAlchemy URL; drop it afterwards."""
    import psycopg

    name = f"tessera_test_{uuid.uuid4().hex[:12]}"
    params = psycopg.conninfo.conninfo_to_dict(PG_DSN)
    with _pg_admin() as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    user = params.get("user", "postgres")
    host = params.get("host", "127.0.0.1")
    port = params.get("port", 5432)
    try:
        yield f"postgresql+psycopg://{user}@{host}:{port}/{name}"
    finally:
        with _pg_admin() as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def pg_url(pg_available):
    """SQLAlchemy URL of a fresh database, dropped after the test."""
    with fresh_pg_database() as url:
        yield url


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request, tmp_path):
    """Each store test runs on SQLite (a file) and on the real PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'store.db'}"
    return request.getfixturevalue("pg_url")


@pytest.fixture(scope="module", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def module_db_url(request, tmp_path_factory):
    """Like db_url, shared by the tests of one module (for read-only tests)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path_factory.mktemp('db') / 'store.db'}"
        return
    request.getfixturevalue("pg_available")
    with fresh_pg_database() as url:
        yield url


# -- a tiny model -----------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def tiny_model_dir(tiny_bert_dir, tmp_path_factory):
    """A saved Tessera checkpoint over the tiny BERT (dim 16), usable as a collection's model."""
    from service_helpers import make_tiny_model

    return make_tiny_model(tiny_bert_dir, tmp_path_factory.mktemp("tiny_model") / "model")


@pytest.fixture(scope="session", autouse=True)
def _one_torch_thread():
    import torch

    torch.set_num_threads(1)
