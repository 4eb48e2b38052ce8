"""The status table: pure rendering and the TTY / non-TTY writers."""

from __future__ import annotations

import io

from plait.local.table import LiveTable, Row, render

ROWS = [
    Row("productpage", "productpage-v1-0", "v1", "ready", 0, 12),
    Row("reviews", "reviews-v2-0", "v2", "backoff", 3, None),
    Row("gateway", "gateway", "", "ready", 0, 7),
]

TABLE = (
    "SERVICE      INSTANCE          VERSION  STATE    RESTARTS  REQUESTS\n"
    "productpage  productpage-v1-0  v1       ready    0         12\n"
    "reviews      reviews-v2-0      v2       backoff  3         -\n"
    "gateway      gateway           -        ready    0         7\n"
)


def test_render_pads_columns_and_shows_unknowns_as_dash() -> None:
    assert render(ROWS) == TABLE


def test_render_without_rows_is_the_header() -> None:
    assert render([]) == "SERVICE  INSTANCE  VERSION  STATE  RESTARTS  REQUESTS\n"


def test_not_a_tty_prints_the_table_once_then_only_events() -> None:
    out = io.StringIO()
    table = LiveTable(out, tty=False)
    table.event("starting")
    table.update(ROWS)
    table.update(ROWS[:1])
    table.event("reviews-v2-0/app exited with code 1; restarting in 1.0 s")
    assert out.getvalue() == (
        "starting\n" + TABLE + "reviews-v2-0/app exited with code 1; restarting in 1.0 s\n"
    )


def test_tty_redraws_in_place_and_prints_events_above_the_table() -> None:
    out = io.StringIO()
    table = LiveTable(out, tty=True)
    table.update(ROWS)
    assert out.getvalue() == TABLE
    table.update(ROWS)
    erase = "\x1b[4F\x1b[J"  # four lines up, clear to the end of the screen
    assert out.getvalue() == TABLE + erase + TABLE
    table.event("something happened")
    assert out.getvalue().endswith(erase + "something happened\n" + TABLE)


def test_tty_event_before_the_first_table_is_a_plain_line() -> None:
    out = io.StringIO()
    LiveTable(out, tty=True).event("hello")
    assert out.getvalue() == "hello\n"
