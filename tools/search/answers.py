"""A query's answer as `comix-embed query --json` prints it, declared once.

`comix-embed serve` answers each store's part of a search with the same record and a few fields
more (tools/serve/answers.py), so the command line and the web API never drift apart.
"""

from __future__ import annotations

import msgspec


class HitRecord(msgspec.Struct, kw_only=True):
    """One hit described: its rank and score, the page's columns, and the snippet of its text."""

    rank: int
    score: float  # a cosine; in keyword mode a whole count of occurrences
    page_id: str
    series: str
    page_num: str
    row: int
    panel: int | None  # the panel that matched; None where pages rank by their page embedding
    manifest_path: str
    snippet: str


class QueryAnswer(msgspec.Struct, kw_only=True):
    """The store, the query, and its hits; `index_generation` None where no index was used."""

    store: str
    query: str
    mode: str
    panels: bool
    committed_rows: int
    searchable_pages: int
    index_generation: int | None
    indexed_rows: int
    results: list[HitRecord]
    # `id` mode: every page whose id holds the query, and where this page of results starts
    matches: int | None = None
    offset: int = 0
    # the filter's non-empty fields (tools/search/filters.py), and how many committed pages pass it
    filter: dict[str, str] = {}
    filtered_pages: int | None = None
