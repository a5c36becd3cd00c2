"""A search request from the web, asked of each served store in turn; never merged across stores.

The request's fields are the same for the HTML form and the JSON API (`mode`, `q`, `panels`,
`k`, `store`, `panel`, `offset` for the `id` mode's pages, an uploaded `image`, and the filters
`series`, `volume`, `issue`, `source`, `id_contains`, `text_contains`, `status`: each store
ranks within the pages that pass them, tools/search/filters.py). Each store answers with the record
`comix-embed query --json` prints (the same `find` and `report`), plus its name, encoder mode
and the time it took; a store that cannot answer (a page it does not hold, an encoder mode that
does not see that kind of query) answers with its reason instead. Each query is embedded for
each store by that store's own encoder, in its own encoder mode: vectors of different stores
are never compared, and their scores never ranked together.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass

import msgspec

from comix_embed.common.errors import UsageError
from comix_embed.tools.query import MODES, find, report
from comix_embed.tools.search.filters import PageFilter
from comix_embed.tools.serve.answers import RequestFields, SearchAnswer, StoreAnswer, StoreRefusal
from comix_embed.tools.serve.security import int_parameter
from comix_embed.tools.serve.stores import ServedStore

DEFAULT_K = 24
MAX_K = 500
_TRUE = ("1", "true", "on", "yes")


@dataclass
class SearchRequest:
    """One query: its mode, its text (or page reference, word, image name), and its options."""

    mode: str
    query: str
    panels: bool = False
    k: int = DEFAULT_K
    store: str = ""  # a store's name; empty: every store
    panel: int | None = None  # `like`: one panel of the page
    image: bytes | None = None
    offset: int = 0  # `id`: the first match shown
    where: PageFilter = PageFilter()

    @classmethod
    def parse(cls, values: Mapping[str, str], image: tuple[str, bytes] | None = None) -> SearchRequest:
        """From form or query-string fields; UsageError naming the field that is wrong."""
        mode = values.get("mode", "text").strip() or "text"
        if mode not in MODES:
            raise UsageError(f"mode must be one of {', '.join(MODES)}, not {mode!r}")
        query = values.get("q", "")
        if mode == "image":
            if image is None or not image[1]:
                raise UsageError("an image search needs an uploaded image (field `image`)")
            query = image[0] or "uploaded image"
        elif not query.strip():
            raise UsageError(f"a {mode} search needs a query (field `q`)")
        return cls(
            mode=mode,
            query=query.strip(),
            panels=values.get("panels", "").lower() in _TRUE,
            k=int_parameter(values, "k", DEFAULT_K, 1, MAX_K),
            store=values.get("store", "").strip(),
            panel=int_parameter(values, "panel", None, 0, 10_000),
            image=image[1] if image else None,
            offset=int_parameter(values, "offset", 0, 0),
            where=PageFilter.of_values(values),
        )

    def fields(self) -> RequestFields:
        """The request as fields (for links and the JSON answer); the image's bytes left out."""
        return RequestFields(
            mode=self.mode,
            q=self.query,
            panels=self.panels,
            k=self.k,
            store=self.store,
            panel=self.panel,
            offset=self.offset,
            **self.where.fields(),
        )


def selected(stores: dict[str, ServedStore], name: str) -> list[ServedStore]:
    """The stores a request names (every store when it names none)."""
    if not name:
        return list(stores.values())
    if name not in stores:
        raise UsageError(f"no store named {name!r} (served: {', '.join(stores)})")
    return [stores[name]]


def ask(store: ServedStore, request: SearchRequest) -> StoreAnswer | StoreRefusal:
    """One store's answer: `query --json`'s record plus name, encoder mode and time, or its reason."""
    started = time.perf_counter()
    index = store.index()
    try:
        hits, matches = find(
            index,
            request.mode,
            request.query,
            request.k,
            request.panels,
            store.encoder,
            request.image,
            request.panel,
            request.offset,
            request.where,
        )
    except UsageError as exc:
        return StoreRefusal(name=store.name, encoder_mode=store.encoder_mode, store=str(store.path), error=str(exc))
    answer = report(index, request.query, request.mode, request.panels, hits, matches, request.offset, request.where)
    return StoreAnswer(
        **msgspec.structs.asdict(answer),
        name=store.name,
        encoder_mode=store.encoder_mode,
        elapsed_ms=round((time.perf_counter() - started) * 1000, 1),
    )


def compared_stores(stores: dict[str, ServedStore], values: Mapping[str, str]) -> list[ServedStore]:
    """Side by side: the two stores `a` and `b` name (by default the first two served)."""
    names = list(stores)
    chosen = [values.get(side, "").strip() or names[min(i, len(names) - 1)] for i, side in enumerate("ab")]
    for name in chosen:
        if name not in stores:
            raise UsageError(f"no store named {name!r} (served: {', '.join(names)})")
    return [stores[name] for name in chosen]


def compared(stores: dict[str, ServedStore], values: Mapping[str, str]) -> tuple[SearchRequest, list[ServedStore]]:
    """Side by side: the `like` search of one `page` asked of two stores (compared_stores), each
    answering in its own space; the filters apply to both."""
    chosen = compared_stores(stores, values)
    return SearchRequest.parse({**values, "mode": "like", "q": values.get("page", ""), "store": ""}), chosen


def search(stores: dict[str, ServedStore], request: SearchRequest) -> SearchAnswer:
    """Every selected store's answer, in the order the stores were given."""
    return SearchAnswer(request.fields(), [ask(store, request) for store in selected(stores, request.store)])
