"""The map of a store's pages: its page (`/map/STORE`, drawn by static/map.js) and its points (`/api/map/STORE`).

    GET /map                    the first store's map
    GET /map/<store>            a zoomable scatter of the store's pages, coloured by series; a click opens a page
    GET /api/map/<store>?x0=&y0=&x1=&y1=&limit=   the points of a view (tools/map/viewport.py), JSON

Each store's map (made by `comix-embed map`, kept beside the store) is loaded once, at start and
again whenever its `meta.json` changes (a later `comix-embed map`), and held in memory sorted by
priority: a view is one pass over it. The API answers JSON, errors too (400 naming a bad
parameter, 404 for an unknown store or a store without a map).

Coloured by a filter: the page and the API take the search's filter fields (series, volume,
issue, source, id_contains, text_contains, status; tools/search/filters.py), parsed as the search
parses them. A page outside the filter keeps its place and its order but gets colour -1 (drawn
grey); the others keep their series' colour; the answer says how many pages pass.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np
from flask import Blueprint, Response, abort, current_app, redirect, render_template, request, url_for
from flask.blueprints import BlueprintSetupState
from werkzeug.wrappers.response import Response as BaseResponse

from comix_embed.common.errors import UsageError
from comix_embed.common.messages import encode_json
from comix_embed.tools.map.storage import META, map_dir
from comix_embed.tools.map.viewport import MapPoints
from comix_embed.tools.search.filters import FIELDS, STATUSES, PageFilter
from comix_embed.tools.serve.answers import MapSeries, MapView
from comix_embed.tools.serve.app import STATE_KEY, state
from comix_embed.tools.serve.security import float_parameter, int_parameter
from comix_embed.tools.serve.stores import ServedStore

bp = Blueprint("map_views", __name__)
MAPS_KEY = "comix_maps"
# Points one view answers by default and at most (the page asks for DEFAULT_LIMIT).
DEFAULT_LIMIT, MAX_LIMIT = 4000, 20000
# Decimals of a coordinate in the JSON: a thousandth of a pixel on a 10,000-pixel-wide map.
DECIMALS = 6
BOX = ("x0", "y0", "x1", "y1")
# The colour of a page outside the filter (drawn grey, `.c-1` in style.css).
OUTSIDE = -1


@dataclass
class LoadedMap:
    """A store's map as last loaded, and the `meta.json` it was loaded from (None: no map)."""

    signature: tuple[int, int, int] | None
    points: MapPoints | None
    refusal: str | None


class Maps:
    """Every served store's map, reloaded when `comix-embed map` has written a new one."""

    def __init__(self) -> None:
        self._loaded: dict[str, LoadedMap] = {}
        self._lock = threading.Lock()

    def get(self, served: ServedStore) -> LoadedMap:
        """The store's map as its folder holds it now (one `stat` when it has not changed)."""
        signature = _signature(served)
        loaded = self._loaded.get(served.name)
        if loaded is not None and loaded.signature == signature:
            return loaded
        with self._lock:
            loaded = self._loaded.get(served.name)
            if loaded is None or loaded.signature != signature:
                try:
                    loaded = LoadedMap(signature, MapPoints.load(served.path), None)
                except UsageError as exc:
                    loaded = LoadedMap(signature, None, str(exc))
                self._loaded[served.name] = loaded
            return loaded


def _signature(served: ServedStore) -> tuple[int, int, int] | None:
    try:
        found = (map_dir(served.path) / META).stat()
    except FileNotFoundError:
        return None
    return (found.st_ino, found.st_mtime_ns, found.st_size)


@bp.record_once
def _load_at_start(setup: BlueprintSetupState) -> None:
    """Load every store's map when the application is made, so that the first view pays for none."""
    app = setup.app
    maps = app.extensions.setdefault(MAPS_KEY, Maps())
    for served in app.extensions[STATE_KEY].stores.values():
        maps.get(served)


def _maps() -> Maps:
    return current_app.extensions[MAPS_KEY]


def _store(name: str) -> ServedStore:
    served = state().stores.get(name)
    if served is None:
        abort(404, f"no store named {name!r}")
    return served


@bp.get("/map")
def first_map() -> BaseResponse:
    return redirect(url_for("map_views.map_page", store=next(iter(state().stores))))


@bp.get("/map/<store>")
def map_page(store: str) -> tuple[str, int] | str:
    served = _store(store)
    loaded = _maps().get(served)
    form = {name: request.args.get(name, "") for name in FIELDS}
    try:
        where = PageFilter.of_values(request.args)
    except UsageError as exc:
        abort(400, str(exc))
    return render_template(
        "map.html",
        store=served,
        stores=state().stores,
        points=loaded.points,
        refusal=loaded.refusal,
        limit=DEFAULT_LIMIT,
        form=form,
        filters=where.fields(),
        statuses=STATUSES,
    )


@bp.get("/api/map/<store>")
def map_api(store: str) -> Response:
    try:
        limit = int_parameter(request.args, "limit", DEFAULT_LIMIT, 1, MAX_LIMIT)
        given = {name: float_parameter(request.args, name, None) for name in BOX}
        where = PageFilter.of_values(request.args)
    except UsageError as exc:
        abort(400, str(exc))
    for low, high in (("x0", "x1"), ("y0", "y1")):
        a, b = given[low], given[high]
        if a is not None and b is not None and a > b:
            abort(400, f"parameter `{low}` must not be greater than `{high}`")
    served = _store(store)
    loaded = _maps().get(served)
    points = loaded.points
    if points is None:
        abort(404, loaded.refusal or f"{store} has no map yet: run `comix-embed map --zarr {served.path}`")
    extent = list(points.extent)
    box = [extent[i] if (value := given[name]) is None else value for i, name in enumerate(BOX)]  # absent: all
    view = points.view(box[0], box[1], box[2], box[3], limit)
    index = served.index()
    ids = index.page_ids
    colour = view.colour
    allowed = index.allowed(where)
    if allowed is not None:
        inside = view.rows < len(allowed)
        inside[inside] = allowed[view.rows[inside]]
        colour = np.where(inside, colour, OUTSIDE)
    answer = MapView(
        name=served.name,
        covered_rows=points.covered,
        placed=len(points.rows),
        extent=extent,
        box=box,
        limit=limit,
        in_view=view.in_view,
        rows=view.rows.tolist(),
        x=view.x.astype(float).round(DECIMALS).tolist(),
        y=view.y.astype(float).round(DECIMALS).tolist(),
        colour=colour.tolist(),
        page_id=[str(ids[r]) if r < len(ids) else None for r in view.rows.tolist()],
        legend=[MapSeries(name=e.name, colour=e.colour, pages=e.pages) for e in points.legend],
        filter=where.fields(),
        filtered_pages=None if allowed is None else int(allowed.sum()),
    )
    return Response(encode_json(answer), mimetype="application/json")
