"""reviews: two reader reviews; v1 shows no stars, v2 black stars, v3 red (both ask ratings)."""

from __future__ import annotations

import os
import socket
from typing import Any

from plait.local.bookinfo.client import Client, UpstreamError
from plait.local.bookinfo.common import (
    Request,
    Response,
    Router,
    Settings,
    json_response,
    propagated_headers,
)

REVIEWS = (
    (
        "Reviewer1",
        "Two sets of twins, one bewildered city and not a dull minute: the funniest two hours "
        "of Shakespeare I know.",
    ),
    (
        "Reviewer2",
        "Brisk and clever, though the farce leaves little room for the depth of the later plays.",
    ),
)
STAR_COLORS = {"v2": "black", "v3": "red"}  # v1 does not call ratings at all
RATINGS_TIMEOUT = 10.0  # s: generous, so an injected delay shows as slowness, not an error
UNAVAILABLE = "Ratings service is currently unavailable"


def build(settings: Settings) -> Router:
    """The reviews app: ``GET /reviews/<id>``, answered with an ``x-reviews-version`` header."""
    router = Router()
    client = Client(settings.proxy)
    podname = f"{socket.gethostname()}-{os.getpid()}"
    color = STAR_COLORS.get(settings.version)

    def reviews(request: Request, product_id: int) -> Response:
        entries: list[dict[str, Any]] = [{"reviewer": name, "text": text} for name, text in REVIEWS]
        if color is not None:
            url = f"{settings.ratings_url}/ratings/{product_id}"
            try:
                reply = client.get_json(url, propagated_headers(request.headers), RATINGS_TIMEOUT)
                ratings = reply.data.get("ratings")
            except UpstreamError:
                ratings = None
            for entry in entries:
                entry["rating"] = _rating(ratings, entry["reviewer"], color)
        body = {"id": product_id, "podname": podname, "clustername": "null", "reviews": entries}
        return json_response(body, headers={"x-reviews-version": settings.version})

    router.add("GET", r"/reviews/(\d+)", reviews)
    return router


def _rating(ratings: object, reviewer: str, color: str) -> dict[str, Any]:
    """One review's rating, or the unavailable error when ratings gave nothing usable for it."""
    stars = ratings.get(reviewer) if isinstance(ratings, dict) else None
    if type(stars) is not int:
        return {"error": UNAVAILABLE}
    return {"stars": stars, "color": color}
