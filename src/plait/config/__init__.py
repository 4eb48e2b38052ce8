"""Resource models, snapshots and the push protocol: shared by both planes, no I/O.

Import nothing here: the proxy imports `plait.config.snapshot` and must not pay for the
resource models (pydantic) it never uses.
"""
