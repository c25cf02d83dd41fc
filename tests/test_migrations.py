"""The migrations are the schema: one head, and autogenerate finds nothing the models add."""

from __future__ import annotations

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, text

from loa.db import metadata
from loa.migrate import alembic_config


def test_one_head() -> None:
    heads = ScriptDirectory.from_config(alembic_config()).get_heads()
    assert len(heads) == 1, f"several heads: {heads}"


def test_models_match_migrations(engine: Engine) -> None:
    with engine.connect() as conn:
        ctx = MigrationContext.configure(conn, opts={"compare_type": True, "render_as_batch": True})
        diff = compare_metadata(ctx, metadata)
    assert diff == [], f"models and migrations differ; run alembic revision --autogenerate: {diff}"


def test_the_tables_updated_in_place_keep_room_on_their_pages(engine: Engine) -> None:
    """Migrations 0007 and 0010: the in-flight mark and a segment's receipt can be HOT updates at
    scale (half of each page is left free)."""
    if engine.dialect.name != "postgresql":
        pytest.skip("fillfactor is Postgres's (LOA_TEST_DATABASE_URL)")
    with engine.connect() as conn:
        options = dict(
            conn.execute(
                text("SELECT relname, reloptions FROM pg_class WHERE relname IN ('message', 'sms_segment')")
            ).all()
        )
    assert "fillfactor=50" in options["message"]
    assert "fillfactor=50" in options["sms_segment"]
