"""Which image a request may read: only images inside the image roots, local or remote.

The same confinement as the workers (common/inputs/paths.py, `ImageResolver`): a relative path must not
climb out of its root (`..`), symbolic links are followed and must stay inside a local root, an
HTTP redirect inside a remote one, and the file must be a raster image, by its bytes (`raster_type`). An absolute path is refused unless a `--path-map` maps it into a root (the
paths DataSpecs hold, `E:\\...`, which the producer maps the same way); a plain `/etc/passwd`
never is. Checks run on the decoded path the route receives, so `%2e%2e`, `%2f` and the like
are refused like their plain forms.
"""

from __future__ import annotations

from pathlib import Path

from comix_embed.common.errors import UsageError
from comix_embed.common.inputs.locations import RemoteURL
from comix_embed.common.inputs.paths import PathRefused, is_windows_absolute
from comix_embed.tools.serve.app import ServeState
from comix_embed.tools.serve.thumbs import Thumbnail, render


def requested_image(state: ServeState, path: str, root: int) -> tuple[int, str, Path | RemoteURL]:
    """The image for `/images/<path>?root=N`: its root index, its path below it, and where it lies.

    Raises PathRefused or FileNotFoundError."""
    if "\x00" in path:
        raise PathRefused(f"image path holds a NUL character: {path!r}")
    text = path.strip()
    if is_windows_absolute(text) or text.startswith(("/", "\\")):
        if state.mapper.map(text) is None:
            raise PathRefused(f"absolute image path {path} is not mapped into an image root by any --path-map")
        root, text = state.resolver.locate(text)
    return root, text, state.resolver.location(root, text)


# The raster formats served, by their first bytes: (offset, signature, type).
_SIGNATURES = (
    (0, b"\xff\xd8\xff", "image/jpeg"),
    (0, b"\x89PNG\r\n\x1a\n", "image/png"),
    (0, b"GIF87a", "image/gif"),
    (0, b"GIF89a", "image/gif"),
    (8, b"WEBP", "image/webp"),  # after b"RIFF" and the size
    (0, b"II*\x00", "image/tiff"),
    (0, b"MM\x00*", "image/tiff"),
)


def raster_type(data: bytes) -> str | None:
    """The media type of a JPEG, PNG, WebP, GIF or TIFF image, read from its bytes; None for anything
    else (an SVG or HTML file under a root would run script in the page's origin, whatever its name)."""
    for offset, signature, kind in _SIGNATURES:
        if data[offset : offset + len(signature)] == signature and (kind != "image/webp" or data[:4] == b"RIFF"):
            return kind
    return None


def page_thumbnail(state: ServeState, store_name: str, row: int, size: int, panel: int | None) -> Thumbnail:
    """A committed page's thumbnail (from the cache), `panel` outlined when given.

    Raises UsageError (unknown store, row or panel), PathRefused, FileNotFoundError or PageImageError.
    """
    store = state.stores.get(store_name)
    if store is None:
        raise UsageError(f"no store named {store_name!r}")

    def make() -> Thumbnail:
        box = None if panel is None else store.panel_box(row, panel)
        root, rel = store.image_of(row, state.resolver)
        return render(state.resolver.read(root, rel), rel, size, box)

    # committed rows never change: a thumbnail made once stands for good
    return state.thumbs.get((store_name, row, size, panel), make)
