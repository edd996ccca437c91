"""``python -m chatplane.auth`` serves; ``migrate`` only migrates the database; ``consume-usage`` runs the usage
consumer; ``make-admin EMAIL`` grants the admin role (``--revoke`` takes it away)."""

from __future__ import annotations

import argparse
import sys

from pydantic import ValidationError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m chatplane.auth", description="chatplane auth service")
    parser.add_argument("command", nargs="?", choices=["serve", "migrate", "consume-usage", "make-admin"],
                        default="serve")
    parser.add_argument("email", nargs="?", help="make-admin: the user's email")
    parser.add_argument("--revoke", action="store_true", help="make-admin: take the admin role away")
    args = parser.parse_args(argv)
    if args.command == "make-admin" and not args.email:
        parser.error("make-admin needs the user's EMAIL")

    from chatplane.auth.server import migrate, serve
    from chatplane.auth.settings import AuthSettings
    from chatplane.common.grpc_server import run
    from chatplane.common.logging import setup_logging
    from chatplane.common.telemetry import setup_telemetry

    try:
        settings = AuthSettings()
    except ValidationError as exc:
        print(f"auth: invalid settings:\n{exc}", file=sys.stderr)
        return 2
    setup_logging("auth", settings.log_level)
    if args.command == "migrate":
        run(migrate(settings))
        return 0
    if args.command == "consume-usage":
        from chatplane.auth.usage_consumer import consume_usage

        setup_telemetry("auth-usage-consumer", settings.consumer_metrics_port, settings.host)
        run(consume_usage(settings))
        return 0
    if args.command == "make-admin":
        from chatplane.auth.admin import make_admin

        from chatplane.auth.keys import MissingSigningKey

        try:
            return run(make_admin(settings, args.email, not args.revoke))
        except MissingSigningKey as exc:
            print(f"auth: {exc}", file=sys.stderr)
            return 2
    from chatplane.auth.keys import MissingSigningKey

    setup_telemetry("auth", settings.metrics_port, settings.host)
    try:
        run(serve(settings))
    except MissingSigningKey as exc:
        print(f"auth: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
