"""The shipped icon files as the backends load them: Pillow images, and ARGB32 pixmaps."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from sorat_daemon.desktop import icons, images


def same_image(a: Image.Image, b: Image.Image) -> bool:
    return a.size == b.size and a.tobytes() == b.tobytes()


def test_tray_loads_the_shipped_png_not_a_fresh_drawing() -> None:
    shipped = images.load_icon("attention")
    assert shipped.size == (images.ICON_SIZE, images.ICON_SIZE)
    with Image.open(icons.ASSETS / f"sorat-attention-{images.ICON_SIZE}.png") as image:
        assert same_image(shipped, image.convert("RGBA"))


def test_tray_knows_the_shipped_sizes() -> None:
    assert images.SHIPPED_SIZES == icons.SIZES
    assert images.ASSETS == icons.ASSETS
    assert set(images.PIXMAP_SIZES) <= set(icons.SIZES)


def test_a_slot_gets_the_png_drawn_for_its_size() -> None:
    tray_icon = images.load_icon("attention")
    for side, drawn_for in ((24, 24), (20, 22), (40, 48), (64, 64)):
        picked = images.icon_for(tray_icon, side)
        assert same_image(picked, images.load_icon("attention", drawn_for))
    assert images.icon_for(tray_icon, 1000) is not tray_icon  # bigger than any PNG: the image itself, as RGBA
    assert same_image(images.icon_for(tray_icon, 1000), tray_icon)


def test_pixmaps_are_argb32_in_network_order() -> None:
    assert images.PIXMAP_SIZES == icons.PIXMAP_SIZES
    found = images.pixmaps("attention")
    assert [(w, h) for w, h, _ in found] == [(s, s) for s in images.PIXMAP_SIZES]
    for width, height, data in found:
        assert len(data) == width * height * 4
    width, _, data = found[-1]
    png = images.load_icon("attention", width)
    for x, y in ((0, 0), (width // 2, width // 2), (width - 10, width - 10)):
        r, g, b, a = png.getpixel((x, y))
        offset = (y * width + x) * 4
        assert tuple(data[offset : offset + 4]) == (a, r, g, b)


def test_pixmaps_load_without_pillow() -> None:
    code = "import sys; from sorat_daemon.desktop import images; images.pixmaps('running')"
    code += "; print('PIL' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_pixmaps_are_made_from_the_pngs_when_their_file_is_missing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for png in icons.ASSETS.glob("sorat-*.png"):
        shutil.copy(png, tmp_path)
    (tmp_path / "sorat-running.argb.z").write_bytes(b"not zlib")  # and no file for attention
    monkeypatch.setattr(images, "ASSETS", tmp_path)
    made = {state: images.pixmaps(state) for state in icons.STATES}
    monkeypatch.setattr(images, "ASSETS", icons.ASSETS)
    assert made == {state: images.pixmaps(state) for state in icons.STATES}
