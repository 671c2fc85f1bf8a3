"""sorat's icon, drawn with Pillow: the mark in its states, and the files the package and the builds ship.

The mark is an "S" traced as one loop of two arcs (the agent's model → tools → model loop) in white on a
rounded indigo-to-teal tile. "attention" adds an amber badge with "!" cut into the lower right corner.
Everything is drawn at 4× and downsampled, so edges are anti-aliased at every size.

``python -m sorat_daemon.desktop.icons`` writes ``sorat_daemon/assets/``: ``sorat-<state>-<size>.png`` for
every state and size, ``sorat.ico``, ``sorat.icns``, and the StatusNotifierItem's pixmaps
``sorat-<state>.argb.z``. The tray loads those files; nothing draws at start-up.
"""

from __future__ import annotations

import argparse
import math
import zlib
from pathlib import Path

from PIL import Image, ImageChops, ImageDraw

STATES = ("running", "attention")
SIZES = (16, 22, 24, 32, 48, 64, 128, 256, 512)
ICO_SIZES = (16, 24, 32, 48, 64, 128, 256)
PIXMAP_SIZES = (16, 22, 24, 32, 48, 64, 128)  # what a panel picks from: its slot, HiDPI, KDE's popup
ASSETS = Path(__file__).resolve().parent.parent / "assets"  # sorat_daemon/assets, shipped as package data

TOP_LEFT = (99, 102, 241)  # indigo
BOTTOM_RIGHT = (13, 148, 136)  # teal
WHITE = (255, 255, 255, 255)
AMBER = (245, 158, 11, 255)
INK = (41, 37, 36, 255)
SCALE = 4


def render(state: str, size: int) -> Image.Image:
    """The icon in ``state`` ("running" or "attention") as a ``size``×``size`` RGBA image."""
    if state not in STATES:
        raise ValueError(f"unknown icon state {state!r}; one of {', '.join(STATES)}")
    n = size * SCALE
    img = _tile(n, size)
    _mark(img, size)
    if state == "attention":
        _badge(img, size)
    return img.resize((size, size), Image.Resampling.LANCZOS, reducing_gap=None)


def _tile(n: int, size: int) -> Image.Image:
    # small tray icons fill their slot; large ones keep the margin app icons have on macOS and Windows
    margin = 0 if size <= 32 else round(n * 0.06)
    radius = round((n - 2 * margin) * 0.26)
    gradient = Image.linear_gradient("L").rotate(45, resample=Image.Resampling.BICUBIC, expand=True)
    # the middle of the rotated ramp: a diagonal gradient without its darkest and lightest ends
    mid, half = gradient.width // 2, round(128 * 0.72)
    gradient = gradient.crop((mid - half, mid - half, mid + half, mid + half))
    gradient = gradient.resize((n, n), Image.Resampling.BICUBIC)
    colors = Image.composite(
        Image.new("RGBA", (n, n), BOTTOM_RIGHT), Image.new("RGBA", (n, n), TOP_LEFT), gradient
    )
    mask = Image.new("L", (n, n), 0)
    ImageDraw.Draw(mask).rounded_rectangle((margin, margin, n - 1 - margin, n - 1 - margin), radius, fill=255)
    img = Image.new("RGBA", (n, n), (0, 0, 0, 0))
    img.paste(colors, (0, 0), mask)
    return img


def _mark(img: Image.Image, size: int) -> None:
    n = img.width
    inner = 1.0 if size <= 32 else 0.88  # the tile's drawable part, matching its margin
    # at tray sizes the strokes must survive downsampling to a 16 px slot: bolder there
    w = (0.15 if size <= 24 else 0.13) * n * inner
    r = 0.165 * n * inner  # radius of each arc's centre line
    cx, cy = n / 2, n / 2
    top, bottom = (cx, cy - r), (cx, cy + r)
    draw = ImageDraw.Draw(img)

    def arc(center: tuple[float, float], start: float, end: float) -> None:
        x, y = center
        outer = r + w / 2
        draw.arc((x - outer, y - outer, x + outer, y + outer), start, end, fill=WHITE, width=round(w))

    def cap(center: tuple[float, float], angle: float) -> None:
        x = center[0] + r * math.cos(math.radians(angle))
        y = center[1] + r * math.sin(math.radians(angle))
        draw.ellipse((x - w / 2, y - w / 2, x + w / 2, y + w / 2), fill=WHITE)

    # Pillow's angles run clockwise from 3 o'clock: the upper arc goes from its bottom round the left and
    # over the top to the upper right; the lower one from its top round the right to the lower left.
    arc(top, 90, 335)
    arc(bottom, 270, 515)
    cap(top, 335)
    cap(bottom, 155)
    if size >= 48:  # the spark the loop gives off; too small to read below this
        _sparkle(draw, cx + 0.31 * n * inner, cy - 0.31 * n * inner, 0.085 * n * inner)


def _sparkle(draw: ImageDraw.ImageDraw, x: float, y: float, radius: float) -> None:
    # a four-pointed star with concave sides: a superellipse with an exponent below 1
    k = 2.4
    points = []
    for i in range(96):
        t = 2 * math.pi * i / 96
        c, s = math.cos(t), math.sin(t)
        points.append(
            (x + radius * math.copysign(abs(c) ** k, c), y + radius * math.copysign(abs(s) ** k, s))
        )
    draw.polygon(points, fill=WHITE)


def _badge(img: Image.Image, size: int) -> None:
    n = img.width
    br = n * (0.28 if size <= 24 else 0.25 if size <= 32 else 0.19)  # the badge's radius
    gap = n * (0.05 if size <= 32 else 0.035)  # the transparent ring that sets it apart from the tile
    x = y = n - br - (0 if size <= 32 else n * 0.03)
    cut = Image.new("L", img.size, 255)
    ImageDraw.Draw(cut).ellipse((x - br - gap, y - br - gap, x + br + gap, y + br + gap), fill=0)
    img.putalpha(ImageChops.multiply(img.getchannel("A"), cut))
    draw = ImageDraw.Draw(img)
    draw.ellipse((x - br, y - br, x + br, y + br), fill=AMBER)
    # "!": a bar and a dot
    bw = br * 0.30
    draw.rounded_rectangle((x - bw / 2, y - br * 0.62, x + bw / 2, y + br * 0.16), bw / 2, fill=INK)
    draw.ellipse((x - bw * 0.6, y + br * 0.34, x + bw * 0.6, y + br * 0.34 + bw * 1.2), fill=INK)


def write_assets(out: Path = ASSETS) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for state in STATES:
        for size in SIZES:
            path = out / f"sorat-{state}-{size}.png"
            render(state, size).save(path, optimize=True)
            written.append(path)
    ico = [render("running", s) for s in ICO_SIZES]
    ico[-1].save(out / "sorat.ico", sizes=[(s, s) for s in ICO_SIZES], append_images=ico[:-1])
    big = render("running", 1024)
    big.save(out / "sorat.icns", append_images=[render("running", s) for s in (16, 32, 64, 128, 256, 512)])
    written += [out / "sorat.ico", out / "sorat.icns"]
    return written + write_pixmaps(out)


def write_pixmaps(out: Path = ASSETS) -> list[Path]:
    """``sorat-<state>.argb.z``: the PNGs in ``out`` at each of ``PIXMAP_SIZES``, as a StatusNotifierItem
    sends them (ARGB32, network byte order), one after the other, zlib-compressed: the D-Bus tray reads
    them without loading Pillow (a few MB of memory for as long as sorat runs)."""
    written = []
    for state in STATES:
        data = bytearray()
        for size in PIXMAP_SIZES:
            with Image.open(out / f"sorat-{state}-{size}.png") as image:
                r, g, b, a = image.convert("RGBA").split()
            data += Image.merge("RGBA", (a, r, g, b)).tobytes()  # Pillow has no ARGB packer
        path = out / f"sorat-{state}.argb.z"
        path.write_bytes(zlib.compress(bytes(data), 9))
        written.append(path)
    return written


def preview(path: Path) -> None:
    """Both states at every tray size, on a light and a dark panel: to judge the icon at a glance."""
    sizes = (16, 22, 24, 32, 48, 64, 128)
    pad = 16
    width = pad + sum(s + pad for s in sizes)
    row = max(sizes) + 2 * pad
    sheet = Image.new("RGBA", (width, 4 * row), (0, 0, 0, 0))
    for i, (state, bg) in enumerate(
        [(s, bg) for bg in ((240, 240, 240, 255), (36, 36, 40, 255)) for s in STATES]
    ):
        band = Image.new("RGBA", (width, row), bg)
        x = pad
        for s in sizes:
            icon = render(state, s)
            band.alpha_composite(icon, (x, (row - s) // 2))
            x += s + pad
        sheet.paste(band, (0, i * row))
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path, optimize=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m sorat_daemon.desktop.icons", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--out", type=Path, default=ASSETS, help=f"where to write (default {ASSETS})")
    parser.add_argument(
        "--preview", type=Path, help="also write a preview sheet of every state and size here"
    )
    args = parser.parse_args(argv)
    for path in write_assets(args.out):
        print(path)
    if args.preview:
        preview(args.preview)
        print(args.preview)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
