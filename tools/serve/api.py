"""The JSON API beside the pages: the same searches, pages and status, as `query --json` shapes them.

    GET  /api/stores                         the served stores: name, path, encoder mode, rows
    GET  /api/search?mode=&q=&panels=&k=&store=&panel=&offset=   (POST, multipart, with `image` for images)
    GET  /api/compare?page=&a=&b=&k=         one page's nearest pages in two stores, side by side
    GET  /api/page/<store>/<row>             a committed page: columns, status, panels
    GET  /api/status                         committed, failed and registered pages of each store

Each answer is a record of tools/serve/answers.py. A search answers
`{"request": {...}, "stores": [...]}`, one object per store, never merged: the
object `comix-embed query --json` prints (store, query, mode, panels, committed_rows,
searchable_pages, results of rank, score, page_id, series, page_num, row, panel, manifest_path,
snippet, and for the `id` mode `matches` and `offset`, and `filter` and `filtered_pages`) plus
`name`, `encoder_mode` and `elapsed_ms`; or `name`, `store` and `error`. Every search (and
compare) also takes the filters `series`, `volume`, `issue`, `source`, `id_contains`,
`text_contains` and `status` (ok or failed), applied before ranking (tools/search/filters.py). A
comparison answers as a `like` search of two stores, `a` then `b` (by default the first two served). Every
error answers JSON, `{"error": "..."}`: a bad request 400 (a parameter that must be a number and is
not is named), a missing page or route 404, a wrong method 405, an upload too large 413.
"""

from __future__ import annotations

from flask import Blueprint, Response, request
from flask.typing import ResponseReturnValue

from comix_embed.common.errors import UsageError
from comix_embed.common.messages import encode_json
from comix_embed.tools.serve.answers import ApiError, SearchAnswer, StatusList, StoreList, StoreSummary
from comix_embed.tools.serve.app import state
from comix_embed.tools.serve.searching import SearchRequest, ask, compared, search
from comix_embed.tools.serve.security import int_parameter
from comix_embed.tools.serve.views import uploaded_image

bp = Blueprint("api", __name__, url_prefix="/api")


def _json(record: object, code: int = 200) -> Response:
    """A record of tools/serve/answers.py as the JSON response."""
    return Response(encode_json(record), status=code, mimetype="application/json")


def _error(message: str, code: int) -> Response:
    return _json(ApiError(message), code)


@bp.get("/stores")
def stores() -> ResponseReturnValue:
    listed = [
        StoreSummary(
            name=s.name,
            store=str(s.path),
            encoder_mode=s.encoder_mode,
            committed_rows=s.index().committed,
            searchable_pages=len(s.index().rows),
            text_queries=s.encoder is not None and s.encoder.refusal("text") is None,
            image_queries=s.encoder is not None and s.encoder.refusal("image") is None,
        )
        for s in state().stores.values()
    ]
    return _json(StoreList(listed))


@bp.route("/search", methods=["GET", "POST"])
def search_api() -> ResponseReturnValue:
    try:
        answer = search(state().stores, SearchRequest.parse(request.values, uploaded_image()))
    except UsageError as exc:
        return _error(str(exc), 400)
    return _json(answer)


@bp.get("/compare")
def compare() -> ResponseReturnValue:
    try:
        query, chosen = compared(state().stores, request.args)
    except UsageError as exc:
        return _error(str(exc), 400)
    return _json(SearchAnswer(query.fields(), [ask(store, query) for store in chosen]))


@bp.get("/page/<store>/<int:row>")
def page(store: str, row: int) -> ResponseReturnValue:
    served = state().stores.get(store)
    if served is None:
        return _error(f"no store named {store!r}", 404)
    try:
        return _json(served.page(row))
    except UsageError as exc:
        return _error(str(exc), 404)


@bp.get("/status")
def status() -> ResponseReturnValue:
    try:
        limit = int_parameter(request.args, "failed_limit", 1000, 0)
    except UsageError as exc:
        return _error(str(exc), 400)
    return _json(StatusList([s.status(failed_limit=limit) for s in state().stores.values()]))
