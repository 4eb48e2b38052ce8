"""Resource models, snapshots and the push protocol: shared by both planes, no I/O."""

# Importing the resource registry first lets the extension kinds (TrafficPolicy, HTTPFault),
# which import its shared parts, be imported on their own without an import cycle.
from plait.config import resources as _resources  # noqa: F401
