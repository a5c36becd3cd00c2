"""The HTML pages and the images they show.

Search and its results, a page with its panels, the status of the stores; the thumbnails and
original files those pages show."""

from __future__ import annotations

import base64
import logging
from collections.abc import Mapping
from functools import partial
from typing import Any

import msgspec
from flask import Blueprint, Response, abort, render_template, request

from comix_embed.common.errors import UsageError
from comix_embed.common.inputs.paths import PathRefused
from comix_embed.common.model.preprocess import PageImageError
from comix_embed.tools.search.filters import FIELDS, STATUSES
from comix_embed.tools.serve.answers import PanelView
from comix_embed.tools.serve.app import state
from comix_embed.tools.serve.files import page_thumbnail, raster_type, requested_image
from comix_embed.tools.serve.searching import SearchRequest, ask, compared, compared_stores, search
from comix_embed.tools.serve.security import int_parameter, printable
from comix_embed.tools.serve.thumbs import GRID_SIZE, MAX_SIZE, MIN_SIZE, PAGE_SIZE, render

bp = Blueprint("views", __name__)
log = logging.getLogger(__name__)
# Seconds between refreshes of the status page while a store has registered rows not committed yet.
STATUS_REFRESH_S = 2
IMAGE_MAX_AGE_S = 3600
# Longest side of the uploaded query image's preview, in pixels.
PREVIEW_SIZE = 320


def uploaded_image() -> tuple[str, bytes] | None:
    """The `image` file of a multipart request, as (file name, bytes)."""
    file = request.files.get("image")
    if file is None or not file.filename:
        return None
    return file.filename, file.read()


@bp.get("/")
def home() -> str:
    return render_search({}, None, None)


@bp.route("/search", methods=["GET", "POST"])
def search_page() -> tuple[str, int] | str:
    stores = state().stores
    try:
        query = SearchRequest.parse(request.values, uploaded_image())
        answer = search(stores, query)
    except UsageError as exc:
        form = {k: request.values.get(k, "") for k in ("mode", "q", "store", "k", *FIELDS)}
        return render_search(form, None, str(exc)), 400
    preview = upload_preview(query.image, query.query) if query.image else None
    return render_search(msgspec.structs.asdict(answer.request), answer.stores, None, preview)


def upload_preview(data: bytes, name: str) -> str | None:
    """The uploaded query image as a small JPEG `data:` URL, shown beside its results (nothing is
    kept on the server); decoded at reduced size, as thumbnails are. None if it cannot be decoded
    (each store's answer already says why)."""
    try:
        jpeg = render(data, name, PREVIEW_SIZE).jpeg
    except PageImageError:
        return None
    return "data:image/jpeg;base64," + base64.b64encode(jpeg).decode("ascii")


def non_empty_filters(form: Mapping[str, Any]) -> dict[str, Any]:
    """The filter fields (tools/search/filters.py) a form holds a value in: what links carry on."""
    return {k: form[k] for k in FIELDS if form.get(k)}


def render_search(
    form: dict[str, Any], answers: list[Any] | None, error: str | None, preview: str | None = None
) -> str:
    """The search page; `filters` holds the form's non-empty filter fields, which every link keeps."""
    return render_template(
        "search.html",
        stores=state().stores,
        form=form,
        filters=non_empty_filters(form),
        statuses=STATUSES,
        answers=answers,
        error=error,
        preview=preview,
    )


@bp.get("/compare")
def compare_view() -> tuple[str, int] | str:
    """The same page in two stores side by side, each with its own nearest neighbours (for
    example fused against vision-only embeddings of one collection)."""
    stores = state().stores
    form = {k: request.args.get(k, "") for k in ("page", "a", "b", "k", *FIELDS)}
    answers = None
    try:
        chosen = compared_stores(stores, request.args)
        form.update(a=chosen[0].name, b=chosen[1].name)
        if form["page"].strip():
            query, chosen = compared(stores, request.args)
            answers = [ask(store, query) for store in chosen]
            form.update(k=str(query.k))
    except UsageError as exc:
        return render_compare(form, None, str(exc)), 400
    return render_compare(form, answers, None)


def render_compare(form: dict[str, str], answers: list[Any] | None, error: str | None) -> str:
    """The side-by-side page; the form's filter fields travel as hidden fields."""
    return render_template(
        "compare.html", stores=state().stores, form=form, filters=non_empty_filters(form), answers=answers, error=error
    )


@bp.get("/page/<store>/<int:row>")
def page_view(store: str, row: int) -> str:
    served = state().stores.get(store)
    if served is None:
        abort(404, f"no store named {store!r}")
    try:
        info = served.page(row)
    except UsageError as exc:
        abort(404, str(exc))
    size, image_error = None, None
    if info.status_name != "failed":
        try:
            size = page_thumbnail(state(), store, row, PAGE_SIZE, None).page_size
        except (PathRefused, FileNotFoundError, PageImageError, UsageError) as exc:
            image_error = str(exc)
    boxes = {p.slot: clipped(p.box, size) for p in info.panels} if size else {}
    unit = max(size) / 100 if size else 1.0
    return render_template(
        "page.html",
        page=info,
        store=served,
        others=[name for name in state().stores if name != store],
        size=size,
        image_error=image_error,
        arrows=reading_arrows(info.panels),
        boxes=boxes,
        labels=label_places(boxes, unit),
        unit=unit,
        thumb_size=PAGE_SIZE,
        heat=partial(heat_colour, span=similarity_span(info.panel_similarity)),
    )


def clipped(box: list[float], size: tuple[int, int]) -> list[float]:
    """x, y, w, h of a panel's box cut to the page (a DataSpec's box may reach past the image)."""
    x, y, w, h = box
    x0, y0 = min(max(x, 0.0), size[0]), min(max(y, 0.0), size[1])
    x1, y1 = min(max(x + w, 0.0), size[0]), min(max(y + h, 0.0), size[1])
    return [x0, y0, x1 - x0, y1 - y0]


# A panel label (`11 · 0.25`) in page units: its font is 2.6 units; its box is this wide and high.
LABEL_W, LABEL_H = 15.0, 3.4


def label_places(boxes: dict[int, list[float]], unit: float) -> dict[int, tuple[float, float]]:
    """Where each panel's label goes (its box's top-left corner, in page pixels) so that no two
    labels overlap: the first free one of its box's four inner corners, else stacked down from its
    top-left corner below every label in the way. Nested panels (a panel inside a panel, often
    sharing a corner) would otherwise print their labels over each other."""
    w, h = LABEL_W * unit, LABEL_H * unit
    placed: list[tuple[float, float]] = []

    def free(x: float, y: float) -> bool:
        return all(abs(x - px) >= w or abs(y - py) >= h for px, py in placed)

    places = {}
    for slot, (x, y, bw, bh) in boxes.items():
        right, bottom = x + max(bw - w, 0.0), y + max(bh - h, 0.0)
        corners = [(x, y), (right, y), (x, bottom), (right, bottom)]
        spot = next((c for c in corners if free(*c)), None)
        if spot is None:
            below = y
            while not free(x, below):
                below = max(py + h for px, py in placed if abs(x - px) < w and abs(below - py) < h)
            spot = (x, below)
        placed.append(spot)
        places[slot] = spot
    return places


def similarity_span(matrix: list[list[float]]) -> tuple[float, float]:
    """The least and the most similar pair of a page's panels: the heatmap's colour scale (a
    page's panels may all lie within a few hundredths of each other, which a fixed scale hides)."""
    values = [v for row in matrix for v in row]
    return (min(values), max(values)) if values else (0.0, 1.0)


def heat_colour(similarity: float, span: tuple[float, float]) -> str:
    """A cosine similarity as a fill colour: white for the page's least similar pair, the accent's
    red for its most similar."""
    low, high = span
    t = (float(similarity) - low) / (high - low) if high > low else 1.0
    r, g, b = (round(255 + (c - 255) * t) for c in (216, 64, 31))
    return f"rgb({r},{g},{b})"


def reading_arrows(panels: list[PanelView]) -> list[dict[str, float]]:
    """One arrow per panel to the panel predicted next (from centre to centre, shortened so
    that heads and tails stay clear of the labels); none where a panel points nowhere or at itself."""
    centres = {p.slot: (p.box[0] + p.box[2] / 2, p.box[1] + p.box[3] / 2) for p in panels}
    arrows = []
    for p in panels:
        target = p.next
        if target == p.slot or target not in centres:
            continue
        (x1, y1), (x2, y2) = centres[p.slot], centres[target]
        dx, dy = x2 - x1, y2 - y1
        length = max((dx * dx + dy * dy) ** 0.5, 1e-6)
        trim = min(0.15 * length, 60.0)
        arrows.append(
            {
                "from": p.slot,
                "to": target,
                "x1": x1 + dx / length * trim,
                "y1": y1 + dy / length * trim,
                "x2": x2 - dx / length * trim,
                "y2": y2 - dy / length * trim,
            }
        )
    return arrows


@bp.get("/favicon.ico")
def favicon() -> Response:
    """No icon: an empty answer, so that a browser's own request for one is not a 404 in its console."""
    return Response(status=204)


@bp.get("/status")
def status_view() -> str:
    statuses = [s.status() for s in state().stores.values()]
    running = any(s.committed_rows < s.registered_rows for s in statuses)
    return render_template("status.html", statuses=statuses, refresh=STATUS_REFRESH_S if running else None)


@bp.get("/thumb/<store>/<int:row>")
def thumbnail(store: str, row: int) -> Response:
    try:
        size = int_parameter(request.args, "size", GRID_SIZE, MIN_SIZE, MAX_SIZE)
        panel = int_parameter(request.args, "panel", None, 0)
    except UsageError as exc:
        abort(400, str(exc))
    try:
        thumb = page_thumbnail(state(), store, row, size, panel)
    except PathRefused as exc:
        abort(403, str(exc))
    except (FileNotFoundError, UsageError, PageImageError) as exc:
        abort(404, str(exc))
    except OSError as exc:  # an image root on object storage or HTTP(S) that did not answer
        abort(502, str(exc))
    response = Response(thumb.jpeg, mimetype="image/jpeg")
    response.headers["Cache-Control"] = f"private, max-age={IMAGE_MAX_AGE_S}"
    return response


@bp.get("/images/<anypath:path>", merge_slashes=False)
def image_file(path: str) -> Response:
    """A page image as stored, from the image roots only (`?root=N` picks a root, default the first).

    The answer names no file outside the request (a refusal's details, such as where a link
    leads, go to the log)."""
    try:
        root, rel, found = requested_image(state(), path, int_parameter(request.args, "root", 0, 0))
        data = state().resolver.read(root, rel)
        kind = raster_type(data)
        if kind is None:
            raise PathRefused(f"not a raster image (JPEG, PNG, WebP, GIF or TIFF, read from its bytes): {path}")
    except UsageError as exc:
        abort(400, str(exc))
    except PathRefused as exc:
        log.info("refused /images/%s: %s", printable(path), printable(str(exc)))
        abort(403, "refused: images are served from inside the image roots only, and only raster images")
    except (FileNotFoundError, NotADirectoryError):
        abort(404, "no such image under the image roots")
    except OSError as exc:
        log.info("cannot read /images/%s: %s", printable(path), printable(str(exc)))
        abort(502, "the image could not be read from its store")
    response = Response(data, mimetype=kind)
    response.headers["Cache-Control"] = f"private, max-age={IMAGE_MAX_AGE_S}"
    return response
