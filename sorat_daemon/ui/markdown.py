"""Markdown to HTML for text the model wrote, which an attacker may have steered (a web page the agent
read can put words in its mouth): CommonMark through markdown-it-py with raw HTML off, so ``<script>``
and ``onerror=`` arrive as text; links only to http(s), mailto and page-relative targets; images shown
as links, never loaded (a remote image is a request the page makes on its own, and a way to carry the
conversation out in its URL).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from markdown_it import MarkdownIt
from markdown_it.common.utils import escapeHtml
from markdown_it.renderer import RendererHTML
from markdown_it.token import Token
from markdown_it.utils import EnvType, OptionsDict

_SCHEME = re.compile(r"([a-z][a-z0-9+.-]*):", re.IGNORECASE)
_CONTROL = re.compile(r"[\x00-\x20\x7f]+")
SAFE_SCHEMES = frozenset({"http", "https", "mailto"})


def safe_link(url: str) -> bool:
    """http(s), mailto, or no scheme (a path or fragment on sorat's own origin, where a GET changes
    nothing): never ``javascript:``, ``data:``, ``vbscript:``… Control characters and spaces, which
    browsers drop inside a scheme, are removed before looking."""
    scheme = _SCHEME.match(_CONTROL.sub("", url))
    return scheme is None or scheme.group(1).lower() in SAFE_SCHEMES


class _Renderer(RendererHTML):
    def link_open(self, tokens: Sequence[Token], idx: int, options: OptionsDict, env: EnvType) -> str:
        token = tokens[idx]
        if not str(token.attrGet("href") or "").startswith("#"):
            token.attrSet("rel", "noopener noreferrer nofollow")
            token.attrSet("target", "_blank")
        return self.renderToken(tokens, idx, options, env)

    def image(self, tokens: Sequence[Token], idx: int, options: OptionsDict, env: EnvType) -> str:
        token = tokens[idx]
        src = str(token.attrGet("src") or "")
        alt = self.renderInlineAsText(token.children or [], options, env) or "image"
        text = escapeHtml(f"[image: {alt}]")
        if not safe_link(src):
            return text
        return f'<a href="{escapeHtml(src)}" rel="noopener noreferrer nofollow" target="_blank">{text}</a>'


class Markdown:
    """Renders one message's markdown to safe HTML."""

    def __init__(self) -> None:
        options = {"html": False, "linkify": False, "typographer": False}
        md = MarkdownIt("commonmark", options, renderer_cls=_Renderer)
        md.enable(["table", "strikethrough"])
        md.validateLink = safe_link  # type: ignore[method-assign]
        self._md = md

    def __call__(self, text: Any) -> str:
        return self._md.render(text if isinstance(text, str) else str(text or ""))
