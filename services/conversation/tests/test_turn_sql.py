"""The turn's own PostgreSQL pool connects as the SQLAlchemy engine does, query items of the URL included."""

from __future__ import annotations

from chatplane.common.db import make_engine
from chatplane.conversation.store.turn_sql import turn_sql


async def test_the_turn_pool_takes_the_engines_connection_arguments():
    engine = make_engine("postgresql+asyncpg://conv:s3cret@db.example:6432/conversation"
                         "?ssl=require&prepared_statement_cache_size=0")
    try:
        args = turn_sql(engine)._connect_args  # noqa: SLF001 - what asyncpg.create_pool is given
    finally:
        await engine.dispose()
    assert args["ssl"] == "require", "an ssl query item is a connection argument, not a server setting"
    assert (args["host"], args["port"], args["user"], args["database"]) == ("db.example", 6432, "conv", "conversation")
    assert args["password"] == "s3cret"
    assert "prepared_statement_cache_size" not in args, "SQLAlchemy's own cache setting is not asyncpg's"
