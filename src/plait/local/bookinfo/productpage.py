"""productpage: Bookinfo's front end, an HTML page and a JSON API over details, reviews, ratings.

A failed upstream call degrades the page (an error section, still HTTP 200) instead of failing
it, which is what makes fault injection and circuit breaking visible in a browser.
"""

from __future__ import annotations

import re
import sys
from http.cookies import SimpleCookie
from typing import Any
from urllib.parse import parse_qsl

from plait.local.bookinfo import page
from plait.local.bookinfo.client import Client, UpstreamError, UpstreamReply
from plait.local.bookinfo.common import (
    Request,
    Response,
    Router,
    Settings,
    html_response,
    json_response,
    propagated_headers,
    redirect,
)

PRODUCT_ID = 0  # the shop sells one book
BOOK: dict[str, Any] = {
    "id": PRODUCT_ID,
    "title": "The Comedy of Errors",
    "description": (
        "Shakespeare's shortest comedy: two pairs of identical twins, parted by a shipwreck, "
        "land in the same city on the same day. Wives, servants, goldsmiths and officers "
        "mistake one twin for the other until nobody trusts their own eyes."
    ),
}
UPSTREAM_TIMEOUT = 3.0  # s: as Istio's productpage; the page degrades rather than hangs
RATINGS_ERROR = "Sorry, product ratings are currently unavailable for this book."
USER_COOKIE = "user"
# Names end up in a cookie and an end-user header, so only plainly safe characters.
USERNAME = re.compile(r"[\w.@-]{1,64}", re.ASCII)


def current_user(request: Request) -> str | None:
    """Who is signed in: ``?u=NAME``, else the ``user`` cookie, else an incoming end-user."""
    morsel = SimpleCookie(request.headers.get("Cookie", "")).get(USER_COOKIE)
    candidates = (
        request.query.get("u"),
        morsel.value if morsel is not None else None,
        request.headers.get("end-user"),
    )
    return next((name for name in candidates if name and USERNAME.fullmatch(name)), None)


def build(settings: Settings) -> Router:
    """The productpage app: the page, sign-in and sign-out, and ``/api/v1/products``."""
    router = Router()
    client = Client(settings.proxy)

    def fetch(request: Request, url: str) -> UpstreamReply | None:
        headers = propagated_headers(request.headers)
        user = current_user(request)
        if user is not None:
            headers["end-user"] = user
        try:
            return client.get_json(url, headers, UPSTREAM_TIMEOUT)
        except UpstreamError as exc:
            print(f"productpage: {exc}", file=sys.stderr)
            return None

    def details_of(request: Request, product_id: int) -> dict[str, Any] | None:
        reply = fetch(request, f"{settings.details_url}/details/{product_id}")
        return None if reply is None else reply.data

    def reviews_of(request: Request, product_id: int) -> dict[str, Any] | None:
        reply = fetch(request, f"{settings.reviews_url}/reviews/{product_id}")
        if reply is None:
            return None
        return {**reply.data, "reviews_version": reply.headers.get("x-reviews-version")}

    def product_page(request: Request) -> Response:
        details = details_of(request, PRODUCT_ID)
        reviews = reviews_of(request, PRODUCT_ID)
        return html_response(page.product(BOOK, current_user(request), details, reviews))

    def login(request: Request) -> Response:
        form = dict(parse_qsl(request.body.decode("utf-8", "replace")))
        name = form.get("username", "").strip()
        if not USERNAME.fullmatch(name):
            text = "A username is 1 to 64 letters, digits, '.', '_', '@' or '-'."
            return html_response(page.message("Sign-in failed", text), 400)
        cookie = f"{USER_COOKIE}={name}; Path=/; HttpOnly; SameSite=Lax"
        return redirect("/productpage", {"Set-Cookie": cookie})

    def logout(request: Request) -> Response:
        return redirect("/productpage", {"Set-Cookie": f"{USER_COOKIE}=; Path=/; Max-Age=0"})

    def api_product(request: Request, product_id: int) -> Response:
        details = details_of(request, product_id)
        if details is None:
            return json_response({"error": page.DETAILS_ERROR}, 503)
        return json_response(details)

    def api_reviews(request: Request, product_id: int) -> Response:
        reviews = reviews_of(request, product_id)
        if reviews is None:
            return json_response({"error": page.REVIEWS_ERROR}, 503)
        return json_response(reviews)

    def api_ratings(request: Request, product_id: int) -> Response:
        reply = fetch(request, f"{settings.ratings_url}/ratings/{product_id}")
        if reply is None:
            return json_response({"error": RATINGS_ERROR}, 503)
        return json_response(reply.data)

    router.add("GET", "/", lambda request: html_response(page.index()))
    router.add("GET", "/productpage", product_page)
    router.add("POST", "/login", login)
    router.add("GET", "/logout", logout)
    router.add("GET", "/api/v1/products", lambda request: json_response([BOOK]))
    router.add("GET", r"/api/v1/products/(\d+)", api_product)
    router.add("GET", r"/api/v1/products/(\d+)/reviews", api_reviews)
    router.add("GET", r"/api/v1/products/(\d+)/ratings", api_ratings)
    return router
