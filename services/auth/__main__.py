"""``python -m chatplane.auth`` serves; ``python -m chatplane.auth migrate`` only migrates the database."""

from __future__ import annotations

import argparse
import asyncio
import sys

from pydantic import ValidationError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m chatplane.auth", description="chatplane auth service")
    parser.add_argument("command", nargs="?", choices=["serve", "migrate"], default="serve")
    args = parser.parse_args(argv)

    from chatplane.auth.server import migrate, serve
    from chatplane.auth.settings import AuthSettings
    from chatplane.common.logging import setup_logging

    try:
        settings = AuthSettings()
    except ValidationError as exc:
        print(f"auth: invalid settings:\n{exc}", file=sys.stderr)
        return 2
    setup_logging("auth", settings.log_level)
    if args.command == "migrate":
        asyncio.run(migrate(settings))
        return 0
    asyncio.run(serve(settings))
    return 0


if __name__ == "__main__":
    sys.exit(main())
