"""The Flask application: its shared state, basic authentication, and its two sets of routes.

`create_app` is the factory the command and the tests call. The application only reads: no route
changes a store or a file. Basic authentication, when credentials are given, guards every route
(pages, API, images, static files); the command requires them whenever the server listens
beyond the loopback interface.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass, field

from flask import Flask, Response, current_app, request
from werkzeug.routing import PathConverter

from comix_embed.common.inputs.paths import ImageResolver, PathMapper
from comix_embed.tools.serve.stores import ServedStore
from comix_embed.tools.serve.thumbs import ThumbnailCache

# Largest upload (an image query) accepted: a scan is a few MB.
MAX_UPLOAD_BYTES = 64 << 20
STATE_KEY = "comix_serve"


@dataclass
class ServeState:
    """What every request reads: the stores by name, the image roots, the thumbnail cache."""

    stores: dict[str, ServedStore]
    resolver: ImageResolver
    mapper: PathMapper = field(default_factory=PathMapper)
    thumbs: ThumbnailCache = field(default_factory=ThumbnailCache)
    credentials: tuple[str, str] | None = None


def state() -> ServeState:
    """The state of the application handling the current request."""
    return current_app.extensions[STATE_KEY]


class AnyPath(PathConverter):
    """A path that may start with `/`: such a request reaches the image route to be refused there
    by name, rather than matching no route (or being redirected with its slashes merged)."""

    regex = ".+?"
    part_isolating = False  # spans `/` (werkzeug infers True from a regex without a slash)


def create_app(serve_state: ServeState) -> Flask:
    from comix_embed.tools.serve import api, views

    app = Flask(__name__)
    app.url_map.converters["anypath"] = AnyPath
    app.config["MAX_CONTENT_LENGTH"] = MAX_UPLOAD_BYTES
    app.json.ensure_ascii = False  # type: ignore[attr-defined]
    app.extensions[STATE_KEY] = serve_state
    app.before_request(_authenticate)
    app.register_blueprint(views.bp)
    app.register_blueprint(api.bp)
    return app


def _authenticate() -> Response | None:
    """401 unless the request carries the configured user and password (when there are any)."""
    expected = state().credentials
    if expected is None:
        return None
    auth = request.authorization
    if (
        auth is not None
        and auth.type == "basic"
        and hmac.compare_digest((auth.username or "").encode(), expected[0].encode())
        and hmac.compare_digest((auth.password or "").encode(), expected[1].encode())
    ):
        return None
    return Response(
        "authentication required\n", 401, {"WWW-Authenticate": 'Basic realm="comix-embed", charset="UTF-8"'}
    )
