"""details: the book's bibliographic facts as JSON; a leaf service that calls nothing."""

from plait.local.bookinfo.common import Request, Response, Router, Settings, json_response

# Invented edition; the ISBNs share their nine digits and carry valid check digits.
BOOK = {
    "author": "William Shakespeare",
    "year": 1594,
    "type": "paperback",
    "pages": 112,
    "publisher": "Ephesus Lane Press",
    "language": "English",
    "ISBN-10": "123456789X",
    "ISBN-13": "978-1234567897",
}


def build(settings: Settings) -> Router:
    """The details app: ``GET /details/<id>``."""
    router = Router()

    def details(request: Request, product_id: int) -> Response:
        return json_response({"id": product_id, **BOOK})

    router.add("GET", r"/details/(\d+)", details)
    return router
