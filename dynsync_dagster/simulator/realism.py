"""Realistic mode: the server time a Web API request costs, by the rows and columns it returns."""

from __future__ import annotations

import json
from dataclasses import dataclass

from .responses import Response

_ETAG = b'"@odata.etag":'
_DELETED = b'"reason":"deleted"'
_FIRST_ROW_PEEK = 65_536


@dataclass(frozen=True)
class ServerTime:
    """Seconds of server time: `base_s + rows * (row_s + columns * cell_s)`.

    Where the defaults come from:
    - Microsoft documents the budget, not what a request costs: 1,200 s of combined
      execution time per user per 300 s (dataverse-webapi.md section 7.1), about 4
      server-seconds per second. The cost per page is the working figure of issue 16, "each
      5,000-row page costs the server around a second or more" (to verify on a real org):
      with these defaults 5,000 rows of 10 columns cost 0.02 + 5000 * (0.0001 + 10 *
      0.00001) = 1.02 s, and of all ~20 contact columns about 1.5 s.
    - `row_s` and `cell_s` split that second evenly between fetching a row and serialising
      its columns at 10 columns, so narrowing `$select` pays off as it does on a real org
      (our assumption).
    - `base_s`, 20 ms for a request that returns no rows (WhoAmI, metadata, `$count`, an
      error): our assumption, small next to a page.

    `scale` multiplies every cost: an org whose pages cost `scale` times the default (wide
    rows, plugins, a busy server). It exists for scale models: at the defaults a copy of
    1,000,000 contacts costs about a fifth of one window's 1,200 s, so the whole copy fits in
    one burst and never meets the budget's steady state. At `scale=12` the same rows cost
    several windows, so a benchmark measures how a client paces itself against the limits
    without holding ten million rows in memory.
    """

    base_s: float = 0.02
    row_s: float = 0.0001
    cell_s: float = 0.00001
    scale: float = 1.0

    def __post_init__(self) -> None:
        if not (isinstance(self.scale, int | float) and 0 < self.scale < float("inf")):
            raise ValueError(
                f"the server time scale must be a number above 0 (1 is the default cost), "
                f"got {self.scale!r}"
            )

    def cost(self, rows: int, columns: int) -> float:
        return self.scale * (self.base_s + rows * (self.row_s + columns * self.cell_s))

    def of(self, response: Response | None) -> float:
        """The cost of a finished request (None: it failed before producing a response)."""
        if response is None:
            return self.base_s
        return self.cost(*returned_shape(response.body))


def returned_shape(body: bytes) -> tuple[int, int]:
    """(rows, columns) of the records in a Web API body: every record carries an
    `@odata.etag` (a change-tracking deletion a `reason`); columns are the first record's
    properties that are not annotations. Counting bytes keeps a 5,000-row page at ~1 ms
    where parsing it would take ~25 ms of the real time the clock speeds up."""
    rows = body.count(_ETAG) + body.count(_DELETED)
    if rows == 0:
        return 0, 0
    at = body.find(_ETAG)
    if at < 0:  # only deletions: those carry an id and nothing else
        return rows, 1
    # A page's rows start with their etag; a single record's follows its @odata.context.
    start = at - 1 if body[at - 1 : at] == b"{" else 0
    return rows, _columns(body, start)


def _columns(body: bytes, start: int) -> int:
    peek = body[start : start + _FIRST_ROW_PEEK].decode("utf-8", errors="ignore")
    try:
        record, _ = json.JSONDecoder().raw_decode(peek)
    except ValueError:  # a record longer than the peek (a big $expand): parse it all
        record, _ = json.JSONDecoder().raw_decode(body[start:].decode("utf-8"))
    if not isinstance(record, dict):
        return 0
    return sum(1 for key in record if "@" not in key)
