"""ratings: star ratings per reviewer, readable and (in memory) writable, for reviews v2/v3."""

from __future__ import annotations

import json
import threading

from plait.local.bookinfo.common import Request, Response, Router, Settings, json_response

DEFAULT_RATINGS = {"Reviewer1": 5, "Reviewer2": 4}
MAX_STARS = 5


class RatingsStore:
    """Ratings per product id: the defaults, overlaid by what was POSTed since start."""

    def __init__(self) -> None:
        self._updates: dict[int, dict[str, int]] = {}
        self._lock = threading.Lock()

    def get(self, product_id: int) -> dict[str, int]:
        with self._lock:
            return {**DEFAULT_RATINGS, **self._updates.get(product_id, {})}

    def update(self, product_id: int, ratings: dict[str, int]) -> dict[str, int]:
        with self._lock:
            self._updates.setdefault(product_id, {}).update(ratings)
        return self.get(product_id)


def parse_ratings(body: bytes) -> dict[str, int]:
    """A POST body as ``{reviewer: stars}``; raises ValueError with a message for the client."""
    try:
        data = json.loads(body)
    except ValueError:
        raise ValueError("body must be JSON") from None
    if not isinstance(data, dict) or not data:
        raise ValueError('body must be a non-empty object like {"Reviewer1": 5}')
    for reviewer, stars in data.items():
        # bool is an int subclass; `true` is not a star count.
        if type(stars) is not int or not 1 <= stars <= MAX_STARS:
            raise ValueError(f"rating for {reviewer!r} must be an integer from 1 to {MAX_STARS}")
    return data


def build(settings: Settings) -> Router:
    """The ratings app: ``GET /ratings/<id>`` and ``POST /ratings/<id>``."""
    router = Router()
    store = RatingsStore()

    def get(request: Request, product_id: int) -> Response:
        return json_response({"id": product_id, "ratings": store.get(product_id)})

    def post(request: Request, product_id: int) -> Response:
        try:
            ratings = parse_ratings(request.body)
        except ValueError as exc:
            return json_response({"error": str(exc)}, 400)
        return json_response({"id": product_id, "ratings": store.update(product_id, ratings)})

    router.add("GET", r"/ratings/(\d+)", get)
    router.add("POST", r"/ratings/(\d+)", post)
    return router
