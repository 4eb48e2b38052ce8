"""productpage's HTML: self-contained pages (inline CSS, no scripts) rendered from plain data.

Everything from a request or an upstream is escaped here, so the callers pass raw values.
"""

from __future__ import annotations

from html import escape
from typing import Any

DETAILS_ERROR = "Sorry, product details are currently unavailable for this book."
REVIEWS_ERROR = "Sorry, product reviews are currently unavailable for this book."
MAX_STARS = 5
STAR_COLORS = ("black", "red")
DETAIL_FIELDS = (
    ("Author", "author"),
    ("Year", "year"),
    ("Type", "type"),
    ("Pages", "pages"),
    ("Publisher", "publisher"),
    ("Language", "language"),
    ("ISBN-10", "ISBN-10"),
    ("ISBN-13", "ISBN-13"),
)

_STYLE = """
:root { --ink: #1f2933; --muted: #616e7c; --line: #e4e7eb; --accent: #3b5bdb; }
* { box-sizing: border-box; }
body { margin: 0; font: 16px/1.55 system-ui, -apple-system, "Segoe UI", sans-serif;
       color: var(--ink); background: #f5f7fa; }
header { display: flex; justify-content: space-between; align-items: center; gap: 1rem;
         padding: .75rem 2rem; background: var(--ink); color: #fff; }
header a { color: #fff; font-weight: 600; text-decoration: none; }
header form { display: flex; gap: .5rem; margin: 0; }
input, button { font: inherit; padding: .25rem .6rem; border-radius: 4px; border: 1px solid #9aa5b1; }
button { background: var(--accent); border-color: var(--accent); color: #fff; cursor: pointer; }
main { max-width: 64rem; margin: 2rem auto; padding: 0 1rem; }
.intro { text-align: center; margin-bottom: 2rem; }
.intro p { max-width: 44rem; margin: 0 auto; color: var(--muted); }
.panels { display: grid; grid-template-columns: repeat(auto-fit, minmax(20rem, 1fr)); gap: 1.5rem; }
.panel { background: #fff; border: 1px solid var(--line); border-radius: 8px; padding: 1.25rem 1.5rem; }
.panel h2 { margin-top: 0; font-size: 1.2rem; }
dl { display: grid; grid-template-columns: max-content 1fr; gap: .35rem 1.25rem; margin: 0; }
dt { color: var(--muted); }
dd { margin: 0; }
blockquote { margin: 0 0 1.25rem; padding: .25rem 0 .25rem 1rem; border-left: 4px solid var(--line); }
blockquote p { margin: 0 0 .35rem; }
.reviewer { color: var(--muted); font-size: .9rem; }
.stars { font-size: 1.2rem; letter-spacing: .1em; }
.error { color: #b42318; background: #fef3f2; border: 1px solid #fecdca; border-radius: 6px;
         padding: .75rem 1rem; margin: 0; }
.rating-error { color: #b42318; font-size: .9rem; }
footer { color: var(--muted); text-align: center; font-size: .85rem; margin: 2rem 0; }
"""


def index() -> str:
    """The landing page: one link to the product page."""
    body = (
        '<section class="intro"><h1>Bookinfo</h1>'
        "<p>A tiny bookshop made of four services, for trying out the mesh.</p>"
        '<p><a href="/productpage">Open the product page</a></p></section>'
    )
    return _layout("Bookinfo", None, body)


def message(title: str, text: str) -> str:
    """A page with a single notice, e.g. a rejected sign-in."""
    body = f'<section class="intro"><h1>{escape(title)}</h1><p>{escape(text)}</p></section>'
    return _layout(title, None, body)


def product(
    book: dict[str, Any],
    user: str | None,
    details: dict[str, Any] | None,
    reviews: dict[str, Any] | None,
) -> str:
    """The product page; ``None`` details or reviews render as the matching error section."""
    details_html = _details(details) if details is not None else _error(DETAILS_ERROR)
    reviews_html = _reviews(reviews) if reviews is not None else _error(REVIEWS_ERROR)
    body = f"""<section class="intro">
<h1>{escape(book["title"])}</h1>
<p>{escape(book["description"])}</p>
</section>
<div class="panels">
<section class="panel"><h2>Book Details</h2>{details_html}</section>
<section class="panel"><h2>Book Reviews</h2>{reviews_html}</section>
</div>"""
    if reviews is not None:
        served_by = f"reviews-{reviews.get('reviews_version')} ({reviews.get('podname')})"
        body += f"\n<footer>Reviews served by: {escape(served_by)}</footer>"
    return _layout(book["title"], user, body)


def _layout(title: str, user: str | None, body: str) -> str:
    if user is None:
        account = (
            '<form method="post" action="/login">'
            '<input name="username" placeholder="username" aria-label="username" required>'
            "<button>Sign in</button></form>"
        )
    else:
        account = f'<span>Signed in as {escape(user)} · <a href="/logout">Sign out</a></span>'
    return f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{escape(title)} · Bookinfo</title>
<style>{_STYLE}</style>
</head>
<body>
<header><a href="/productpage">Bookinfo</a>{account}</header>
<main>
{body}
</main>
</body>
</html>
"""


def _error(text: str) -> str:
    return f'<p class="error" role="alert">{escape(text)}</p>'


def _details(details: dict[str, Any]) -> str:
    rows = "".join(
        f"<dt>{label}</dt><dd>{escape(str(details.get(key, '—')))}</dd>"
        for label, key in DETAIL_FIELDS
    )
    return f"<dl>{rows}</dl>"


def _reviews(reviews: dict[str, Any]) -> str:
    items = reviews.get("reviews")
    if not isinstance(items, list) or not items:
        return "<p>No reviews yet.</p>"
    return "".join(_review(item) for item in items if isinstance(item, dict))


def _review(review: dict[str, Any]) -> str:
    return (
        f"<blockquote><p>{escape(str(review.get('text', '')))}</p>"
        f'<p class="reviewer">— {escape(str(review.get("reviewer", "anonymous")))}</p>'
        f"{_rating(review.get('rating'))}</blockquote>"
    )


def _rating(rating: object) -> str:
    """Stars as ★ (earned) and ☆ (not), in the colour reviews chose; nothing for reviews v1."""
    if not isinstance(rating, dict):
        return ""
    if "error" in rating:
        return f'<p class="rating-error">{escape(str(rating["error"]))}</p>'
    stars = rating.get("stars")
    if type(stars) is not int:
        return ""
    earned = max(0, min(stars, MAX_STARS))
    color = rating.get("color") if rating.get("color") in STAR_COLORS else STAR_COLORS[0]
    return (
        f'<p class="stars" style="color: {color}" aria-label="{earned} out of {MAX_STARS} stars">'
        f"{'★' * earned}{'☆' * (MAX_STARS - earned)}</p>"
    )
