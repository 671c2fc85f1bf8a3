"""ui/markdown.py: the model's markdown as HTML that cannot run or load anything."""

from __future__ import annotations

import pytest

from sorat_daemon.ui.markdown import Markdown, safe_link


@pytest.fixture(scope="module")
def md() -> Markdown:
    return Markdown()


def test_markdown_renders(md: Markdown) -> None:
    html = md("**bold** and `code`\n\n| a | b |\n|---|---|\n| 1 | 2 |\n\n~~gone~~")
    assert "<strong>bold</strong>" in html and "<code>code</code>" in html
    assert "<table>" in html and "<s>gone</s>" in html


@pytest.mark.parametrize(
    "text",
    [
        "<script>alert(1)</script>",
        '<img src=x onerror="alert(1)">',
        "<iframe src=//evil></iframe>",
        '<a href="javascript:alert(1)">x</a>',
        "<svg onload=alert(1)>",
        "<style>body{display:none}</style>",
    ],
)
def test_raw_html_is_text(md: Markdown, text: str) -> None:
    html = md(text)
    assert "<script" not in html and "<img" not in html and "<iframe" not in html
    assert "<svg" not in html and "<style" not in html and "<a " not in html
    assert "&lt;" in html


@pytest.mark.parametrize(
    "url",
    [
        "javascript:alert(1)",
        "JavaScript:alert(1)",
        "java\tscript:alert(1)",
        "vbscript:msgbox(1)",
        "data:text/html;base64,PHNjcmlwdD4=",
        "file:///etc/passwd",
        "javascript&#58;alert(1)",
    ],
)
def test_links_of_other_schemes_are_text(md: Markdown, url: str) -> None:
    html = md(f"[click]({url}) <{url}>")
    assert "href" not in html


def test_links_that_stay(md: Markdown) -> None:
    html = md("[a](https://example.com/x?y=1&z=2) [b](mailto:me@example.com) [c](/ui/status) [d](#top)")
    assert 'href="https://example.com/x?y=1&amp;z=2"' in html
    assert 'href="mailto:me@example.com"' in html and 'href="/ui/status"' in html
    assert 'rel="noopener noreferrer nofollow"' in html and 'target="_blank"' in html
    assert '<a href="#top">' in html


def test_images_are_links_never_loaded(md: Markdown) -> None:
    html = md('![a "pixel"](https://evil.example/p.png?c=secret) ![b](javascript:alert(1))')
    assert "<img" not in html
    assert '<a href="https://evil.example/p.png?c=secret"' in html and "[image: a &quot;pixel&quot;]" in html
    assert "![b](javascript:alert(1))" in html and 'href="javascript' not in html  # left as text


def test_safe_link() -> None:
    assert safe_link("https://x") and safe_link("http://x") and safe_link("mailto:x")
    assert safe_link("relative/path") and safe_link("#frag") and safe_link("/abs")
    assert not safe_link("javascript:x") and not safe_link(" javascript:x") and not safe_link("data:x")
    assert not safe_link("\x01javascript:x") and not safe_link("jav\nascript:x")


def test_not_a_string(md: Markdown) -> None:
    assert md(None) == "" and "42" in md(42)
