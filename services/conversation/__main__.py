"""``python -m chatplane.conversation`` serves; ``python -m chatplane.conversation migrate`` only migrates."""

from __future__ import annotations

import asyncio
import sys

from chatplane.common.logging import setup_logging
from chatplane.conversation.server import serve
from chatplane.conversation.service import migrate_database
from chatplane.conversation.settings import ConversationSettings


def main(argv: list[str]) -> int:
    settings = ConversationSettings()
    setup_logging("conversation", settings.log_level)
    if argv == ["migrate"]:
        asyncio.run(migrate_database(settings.database_url))
        return 0
    if argv:
        print("usage: python -m chatplane.conversation [migrate]", file=sys.stderr)
        return 2
    asyncio.run(serve(settings))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
