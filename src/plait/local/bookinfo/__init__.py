"""Bookinfo demo apps: plain HTTP/1.1 services for exercising the mesh, as in Istio's sample.

Run one with ``python -m plait.local.bookinfo SERVICE``; docs/bookinfo.md lists routes and env.
"""

SERVICES = ("productpage", "details", "reviews", "ratings")
