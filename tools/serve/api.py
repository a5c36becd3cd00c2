"""The JSON API beside the pages: the same searches, pages and status, as `query --json` shapes them.

    GET  /api/stores                         the served stores: name, path, encoder mode, rows
    GET  /api/search?mode=&q=&panels=&k=&store=&panel=   (POST, multipart, with `image` for images)
    GET  /api/page/<store>/<row>             a committed page: columns, status, panels
    GET  /api/status                         committed, failed and registered pages of each store

A search answers `{"request": {...}, "stores": [...]}`, one object per store, never merged: the
object `comix-embed query --json` prints (store, query, mode, panels, committed_rows,
searchable_pages, results of rank, score, page_id, series, page_num, row, panel, manifest_path,
snippet) plus `name`, `encoder_mode` and `elapsed_ms`; or `name`, `store` and `error`. Bad
requests answer 400 and a missing page 404, with `{"error": "..."}`.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, jsonify, request
from flask.typing import ResponseReturnValue

from comix_embed.common.errors import UsageError
from comix_embed.tools.serve.app import state
from comix_embed.tools.serve.searching import SearchRequest, search
from comix_embed.tools.serve.views import uploaded_image

bp = Blueprint("api", __name__, url_prefix="/api")


def _error(message: str, code: int) -> ResponseReturnValue:
    return jsonify({"error": message}), code


@bp.get("/stores")
def stores() -> ResponseReturnValue:
    listed: list[dict[str, Any]] = [
        {
            "name": s.name,
            "store": str(s.path),
            "encoder_mode": s.encoder_mode,
            "committed_rows": s.index().committed,
            "searchable_pages": len(s.index().rows),
            "text_queries": s.encoder is not None and s.encoder.refusal("text") is None,
            "image_queries": s.encoder is not None and s.encoder.refusal("image") is None,
        }
        for s in state().stores.values()
    ]
    return jsonify({"stores": listed})


@bp.route("/search", methods=["GET", "POST"])
def search_api() -> ResponseReturnValue:
    try:
        query = SearchRequest.parse(request.values, uploaded_image())
        answers = search(state().stores, query)
    except UsageError as exc:
        return _error(str(exc), 400)
    return jsonify({"request": query.fields(), "stores": answers})


@bp.get("/page/<store>/<int:row>")
def page(store: str, row: int) -> ResponseReturnValue:
    served = state().stores.get(store)
    if served is None:
        return _error(f"no store named {store!r}", 404)
    try:
        return jsonify(served.page(row))
    except UsageError as exc:
        return _error(str(exc), 404)


@bp.get("/status")
def status() -> ResponseReturnValue:
    limit = request.args.get("failed_limit", 1000, type=int)
    return jsonify({"stores": [s.status(failed_limit=max(0, limit)) for s in state().stores.values()]})
