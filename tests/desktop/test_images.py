"""The shipped icon files as the backends load them: Pillow images, and ARGB32 pixmaps."""

from __future__ import annotations

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
