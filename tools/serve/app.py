"""The Flask application: its shared state, basic authentication, and its sets of routes (pages, API, map).

`create_app` is the factory the command and the tests call. The application only reads: no route
changes a store or a file. Basic authentication, when credentials are given, guards every route
(pages, API, images, static files); the command requires them whenever the server listens
beyond the loopback interface.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass, field

from flask import Flask, Response, current_app, render_template, request
from werkzeug.exceptions import HTTPException
from werkzeug.routing import PathConverter

from comix_embed.common.inputs.paths import ImageResolver, PathMapper
from comix_embed.common.messages import encode_json
from comix_embed.tools.serve.answers import ApiError
from comix_embed.tools.serve.security import LoginThrottle, add_headers, isolated
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
    logins: LoginThrottle = field(default_factory=LoginThrottle)


def state() -> ServeState:
    """The state of the application handling the current request."""
    return current_app.extensions[STATE_KEY]


class AnyPath(PathConverter):
    """A path that may start with `/`: such a request reaches the image route to be refused there
    by name, rather than matching no route (or being redirected with its slashes merged)."""

    regex = ".+?"
    part_isolating = False  # spans `/` (werkzeug infers True from a regex without a slash)


def create_app(serve_state: ServeState) -> Flask:
    from comix_embed.tools.serve import api, map_views, views

    app = Flask(__name__)
    app.url_map.converters["anypath"] = AnyPath
    app.config["MAX_CONTENT_LENGTH"] = MAX_UPLOAD_BYTES
    app.json.ensure_ascii = False  # type: ignore[attr-defined]
    app.jinja_env.filters["iso"] = isolated
    app.extensions[STATE_KEY] = serve_state
    app.before_request(_authenticate)
    app.after_request(lambda response: add_headers(response, private=state().credentials is not None))
    app.register_error_handler(HTTPException, _error_page)
    app.register_blueprint(views.bp)
    app.register_blueprint(api.bp)
    app.register_blueprint(map_views.bp)
    return app


def _authenticate() -> Response | None:
    """401 unless the request carries the configured user and password (when there are any); 429
    while its address has failed too often (security.py, "Failed logins are slowed")."""
    expected = state().credentials
    if expected is None:
        return None
    address = request.remote_addr or ""
    wait = state().logins.retry_after(address)
    if wait:
        return Response("too many failed logins: try again later\n", 429, {"Retry-After": str(wait)})
    auth = request.authorization
    if (
        auth is not None
        and auth.type == "basic"
        and hmac.compare_digest((auth.username or "").encode(), expected[0].encode())
        and hmac.compare_digest((auth.password or "").encode(), expected[1].encode())
    ):
        state().logins.succeeded(address)
        return None
    if auth is not None:  # a browser's first request carries none: only a wrong answer counts
        state().logins.failed(address)
    return Response(
        "authentication required\n", 401, {"WWW-Authenticate": 'Basic realm="comix-embed", charset="UTF-8"'}
    )


def _error_page(exc: HTTPException) -> Response:
    """An error as JSON under /api/ (every route there answers JSON), else as a page in the site's style."""
    code = exc.code or 500
    message = exc.description or exc.name
    if request.path.startswith("/api/"):
        return Response(encode_json(ApiError(message)), status=code, mimetype="application/json")
    page = render_template("error.html", code=code, name=exc.name, message=message)
    return Response(page, status=code, mimetype="text/html")
