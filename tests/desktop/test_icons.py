"""sorat's icon as drawn: both states at every size, and the files the package ships."""

from __future__ import annotations

import shutil
import zlib
from pathlib import Path

import pytest
from PIL import Image

from sorat_daemon.desktop import icons


@pytest.mark.parametrize("size", [16, 22, 32, 64, 256])
def test_render_states(size: int) -> None:
    running, attention = icons.render("running", size), icons.render("attention", size)
    assert running.size == attention.size == (size, size)
    assert running.mode == attention.mode == "RGBA"
    assert running.tobytes() != attention.tobytes()
    # the attention badge is amber, where the running icon has none
    assert amber_pixels(attention) > 0
    assert amber_pixels(running) == 0


def amber_pixels(image: Image.Image) -> int:
    data = image.tobytes()
    rgba = (data[i : i + 4] for i in range(0, len(data), 4))
    return sum(1 for r, g, b, a in rgba if r > 200 and 120 < g < 190 and b < 60 and a > 200)


def test_render_refuses_an_unknown_state() -> None:
    with pytest.raises(ValueError, match="unknown icon state 'busy'"):
        icons.render("busy", 32)


def test_shipped_assets_are_complete() -> None:
    for state in icons.STATES:
        for size in icons.SIZES:
            with Image.open(icons.ASSETS / f"sorat-{state}-{size}.png") as image:
                assert image.size == (size, size) and image.mode == "RGBA"
    with Image.open(icons.ASSETS / "sorat.ico") as ico:
        assert {(s, s) for s in icons.ICO_SIZES} <= set(ico.info["sizes"])
    with Image.open(icons.ASSETS / "sorat.icns") as icns:
        assert icns.size == (1024, 1024)


def test_shipped_pixmaps_are_the_shipped_pngs(tmp_path: Path) -> None:
    for state in icons.STATES:
        for size in icons.PIXMAP_SIZES:
            shutil.copy(icons.ASSETS / f"sorat-{state}-{size}.png", tmp_path)
    icons.write_pixmaps(tmp_path)
    for state in icons.STATES:
        made = zlib.decompress((tmp_path / f"sorat-{state}.argb.z").read_bytes())
        assert zlib.decompress((icons.ASSETS / f"sorat-{state}.argb.z").read_bytes()) == made


def test_write_assets(tmp_path: Path) -> None:
    written = icons.write_assets(tmp_path)
    assert len(written) == len(icons.STATES) * (len(icons.SIZES) + 1) + 2
    assert all(p.is_file() and p.stat().st_size > 0 for p in written)
