"""The shipped icon files, as each tray backend wants them: Pillow images for pystray, ARGB32 pixmaps for a
StatusNotifierItem.

The files in ``sorat_daemon/assets/`` are drawn by ``sorat_daemon.desktop.icons`` at build time; nothing
draws at start-up. Pillow is imported inside the functions that need it, and the pixmaps need it only to
repair a missing file, so the D-Bus tray never loads it.
"""

from __future__ import annotations

import logging
import zlib
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from PIL import Image

log = logging.getLogger("sorat.tray")

ASSETS = Path(__file__).resolve().parent.parent / "assets"  # desktop.icons.ASSETS, without importing Pillow
ICON_SIZE = 64  # backends scale it to the slot: 16–24 px on Linux and Windows, 22 pt (44 px) on macOS
SHIPPED_SIZES = (16, 22, 24, 32, 48, 64, 128, 256, 512)  # desktop.icons.SIZES, without importing Pillow
PIXMAP_SIZES = (16, 22, 24, 32, 48, 64, 128)  # desktop.icons.PIXMAP_SIZES: the sizes in the .argb.z files

Pixmap = tuple[int, int, bytes]  # width, height, ARGB32 in network byte order: the SNI's (iiay)


def load_icon(state: str, size: int = ICON_SIZE) -> Image.Image:
    """The shipped PNG for ``state``; drawn afresh only if the file is missing."""
    from PIL import Image

    try:
        with Image.open(ASSETS / f"sorat-{state}-{size}.png") as image:
            loaded = image.convert("RGBA")
    except OSError:
        from sorat_daemon.desktop.icons import render

        log.warning("icon file for %s is missing; drawing it", state)
        loaded = render(state, size)
    loaded.info["sorat_state"] = state  # lets a backend that knows its slot size pick the PNG drawn for it
    return loaded


def icon_for(image: Image.Image, side: int) -> Image.Image:
    """The shipped PNG drawn for ``side`` pixels (small sizes have bolder strokes, no sparkle), else
    ``image`` itself."""
    state = image.info.get("sorat_state")
    best = min((s for s in SHIPPED_SIZES if s >= side), default=None)
    if state is None or best is None or best == image.width:
        return image.convert("RGBA")
    return load_icon(state, best)


def argb32(image: Image.Image) -> bytes:
    """An RGBA image's pixels as the StatusNotifierItem spec wants them: A, R, G, B bytes per pixel."""
    from PIL import Image

    r, g, b, a = image.convert("RGBA").split()
    return Image.merge("RGBA", (a, r, g, b)).tobytes()  # Pillow has no ARGB packer: reorder the bands


def pixmaps(state: str) -> list[Pixmap]:
    """The icon in ``state`` at every size a panel may want, each drawn for its size: read from the
    shipped ``sorat-<state>.argb.z`` (no Pillow), or made from the PNGs if that file is missing or stale."""
    sizes = [size * size * 4 for size in PIXMAP_SIZES]
    try:
        data = zlib.decompress((ASSETS / f"sorat-{state}.argb.z").read_bytes())
    except (OSError, zlib.error):
        data = b""
    if len(data) != sum(sizes):
        log.warning("pixmap file for %s is missing or stale; making it from the PNGs", state)
        return [(size, size, argb32(load_icon(state, size))) for size in PIXMAP_SIZES]
    found, offset = [], 0
    for size, length in zip(PIXMAP_SIZES, sizes, strict=True):
        found.append((size, size, data[offset : offset + length]))
        offset += length
    return found
