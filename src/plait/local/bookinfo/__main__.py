"""Entry point: ``python -m plait.local.bookinfo SERVICE``, configured by environment variables."""

import argparse
import importlib
import sys

from plait.local.bookinfo import SERVICES
from plait.local.bookinfo.common import Settings
from plait.local.bookinfo.server import serve


def main(argv: list[str] | None = None) -> int:
    """Build the named app from the environment and serve it until SIGTERM or SIGINT."""
    parser = argparse.ArgumentParser(
        prog="python -m plait.local.bookinfo",
        description="Run one Bookinfo demo app (env: PORT, HOST, SERVICE_VERSION, HTTP_PROXY, "
        "DETAILS_URL, REVIEWS_URL, RATINGS_URL).",
    )
    parser.add_argument("service", choices=SERVICES)
    args = parser.parse_args(argv)
    try:
        settings = Settings.from_env(args.service)
    except ValueError as exc:
        parser.error(str(exc))
    module = importlib.import_module(f"plait.local.bookinfo.{args.service}")
    serve(settings, module.build(settings))
    return 0


if __name__ == "__main__":
    sys.exit(main())
