"""What the web API answers, declared once: the JSON of every `/api/` route (tools/serve/api.py).

A store's part of a search is `comix-embed query --json`'s record (tools/search/answers.py) with
the store's name, encoder mode and the time it took, or, where that store cannot answer, its
reason. The page and status records are also what the HTML pages show.
"""

from __future__ import annotations

import msgspec

from comix_embed.common.store.schema import PAGE_COLUMNS
from comix_embed.tools.search.answers import QueryAnswer
from comix_embed.tools.search.filters import PageFilter

# Page columns shown with a page: the store's page columns, and where its image is or why it failed.
PAGE_FIELDS = (*PAGE_COLUMNS, "image_path", "error")


class ApiError(msgspec.Struct):
    """A refused request (400) or a missing store or page (404)."""

    error: str


class StoreSummary(msgspec.Struct, kw_only=True):
    """A served store, and which query modes it can answer (`/api/stores`)."""

    name: str
    store: str
    encoder_mode: str
    committed_rows: int
    searchable_pages: int
    text_queries: bool
    image_queries: bool


class StoreList(msgspec.Struct):
    stores: list[StoreSummary]


class RequestFields(PageFilter, frozen=True, kw_only=True):
    """A search request as its form or query-string fields (the uploaded image left out), its
    filter's fields (tools/search/filters.py) among them."""

    mode: str
    q: str
    panels: bool
    k: int
    store: str  # empty: every store
    panel: int | None  # `like`: one panel of the page
    offset: int = 0  # `id`: the first match shown


class StoreAnswer(QueryAnswer, kw_only=True):
    """One store's answer to a search."""

    name: str
    encoder_mode: str
    elapsed_ms: float


class StoreRefusal(msgspec.Struct, kw_only=True):
    """Why one store cannot answer a search (a page it does not hold, a mode its encoder lacks)."""

    name: str
    encoder_mode: str
    store: str
    error: str


class SearchAnswer(msgspec.Struct):
    """A search: the request, and each selected store's answer in turn, never merged."""

    request: RequestFields
    stores: list[StoreAnswer | StoreRefusal]


class PanelView(msgspec.Struct, kw_only=True):
    """One valid panel of a page."""

    slot: int
    box: list[float]  # x, y, w, h in original (upright) pixels
    attention: float
    next: int  # predicted next panel, -1 where none
    text: dict[str, list[str]]
    plain: str


class PageDetail(msgspec.Struct, kw_only=True):
    """A committed page (`/api/page/<store>/<row>`): where it is, its status, its image root (None
    where the store does not record it), its valid panels and its text; `page_detail` adds its
    page columns, as text."""

    store: str
    row: int
    status: int
    status_name: str
    image_root: int | None
    panels: list[PanelView]
    page_text: str
    # cosine similarity of every pair of valid panels' embeddings, in `panels` order (4 decimals)
    panel_similarity: list[list[float]] = msgspec.field(default_factory=list)
    # the DataSpec's panels not embedded (past the 12 slots, or without a usable box); None: not recorded
    dropped_panels: int | None = None


# PageDetail with its page columns: the record `/api/page/` answers.
PAGE_RECORD = msgspec.defstruct(
    "PageDetail", [(name, str) for name in PAGE_FIELDS], bases=(PageDetail,), kw_only=True, module=__name__
)


def page_detail(columns: dict[str, str], **fields: object) -> PageDetail:
    """A PageDetail with its page columns (every name of PAGE_FIELDS) as fields of their own."""
    detail = PAGE_RECORD(**columns, **fields)
    assert isinstance(detail, PageDetail)
    return detail


class FailedPage(msgspec.Struct, kw_only=True):
    row: int
    page_id: str
    error: str


class StoreStatus(msgspec.Struct, kw_only=True):
    """A store's pages read from its committed prefix now; failed pages listed up to a limit."""

    name: str
    store: str
    encoder_mode: str
    registered_rows: int
    committed_rows: int
    ok: int
    full_page: int
    failed: int
    searchable_pages: int
    indexed_rows: int
    failed_pages: list[FailedPage]
    jobs: list[str]


class StatusList(msgspec.Struct):
    stores: list[StoreStatus]


class MapSeries(msgspec.Struct, kw_only=True):
    """One entry of the map's legend: a series (or the rest of them) and its colour index."""

    name: str
    colour: int
    pages: int


class MapView(msgspec.Struct, kw_only=True):
    """The points of one view of a store's map (`/api/map/STORE`), column by column, in priority
    order: the first `limit` of the `in_view` placed pages inside `box` (x0, y0, x1, y1).
    `page_id` is null for a row the server has not loaded yet (committed after it last read the store)."""

    name: str
    covered_rows: int
    placed: int
    extent: list[float]
    box: list[float]
    limit: int
    in_view: int
    rows: list[int]
    x: list[float]
    y: list[float]
    colour: list[int]
    page_id: list[str | None]
    legend: list[MapSeries]
    # the filter's non-empty fields; pages outside it have colour -1; how many committed pages pass it
    filter: dict[str, str] = {}
    filtered_pages: int | None = None
