"""``python -m plait.local.greeter server|client|hello``: the gRPC demo's apps and a caller."""

import sys

from plait.local.greeter import client, server

USAGE = (
    "usage: python -m plait.local.greeter server | client | hello [NAME] [--target H:P] [--stream]"
)


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in ("server", "client", "hello"):
        print(USAGE, file=sys.stderr)
        return 2
    if argv[0] == "server":
        server.main()
    elif argv[0] == "client":
        client.client_main()
    else:
        return client.hello_main(argv[1:])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
