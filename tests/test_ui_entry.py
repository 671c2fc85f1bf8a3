"""ui/entry.py: the UI's paths, the link's host, and what a daemon loads of the UI before and after its
first page (nothing but the route table before: the UI costs an unopened daemon nothing)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

from sorat_daemon.ui.entry import ROUTES, is_ui_path, loopback_host
from tests.conftest import DEFAULT_EXTRA, ROOT, clean_env, write_config
from tests.upstream import Upstream


def test_the_ui_paths() -> None:
    assert is_ui_path("/") and is_ui_path("/ui") and is_ui_path("/ui/sessions")
    assert not is_ui_path("/v1/sessions") and not is_ui_path("/health") and not is_ui_path("/uix")
    assert not is_ui_path("/v1/ui/login-link")  # the API route behind the token
    assert all(is_ui_path(rule) for rule, *_ in ROUTES)


def test_the_host_of_the_link() -> None:
    assert loopback_host("127.0.0.1") == "127.0.0.1"
    assert loopback_host("0.0.0.0") == "127.0.0.1"
    assert loopback_host("::1") == loopback_host("[::1]") == loopback_host("::") == "[::1]"
    assert loopback_host("localhost") == "localhost"


SCRIPT = """
import json, sys, httpx
from sorat_daemon import config
from sorat_daemon.daemon import Daemon
from sorat_daemon.paths import Home

home = Home.from_env()
settings = config.load(home.config)
from dataclasses import replace
settings = replace(settings, server=replace(settings.server, port=0))
d = Daemon(home, settings)
out = {"before_start": d.open_ui_url()}
d.start_thread()
url = d.state.get().url
token = home.token.read_text().strip()
assert httpx.get(url + "/v1/models", headers={"Authorization": "Bearer " + token}).status_code == 200
ui = sorted(m for m in sys.modules if m.startswith("sorat_daemon.ui"))
out["idle"] = {"ui": ui, "markdown_it": "markdown_it" in sys.modules}
link = d.open_ui_url()
out["link"] = link
with httpx.Client(follow_redirects=False) as c:
    out["redeem"] = c.get(link).status_code
    out["page"] = c.get(url + "/ui/sessions").status_code
ui = sorted(m for m in sys.modules if m.startswith("sorat_daemon.ui"))
out["opened"] = {"ui": ui, "markdown_it": "markdown_it" in sys.modules}
d.stop()
print(json.dumps(out))
"""


def test_the_ui_loads_on_its_first_request(tmp_path: Path, upstream: Upstream) -> None:
    home = tmp_path / "home"
    write_config(home, upstream.base_url, DEFAULT_EXTRA)
    out = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(SCRIPT)],
        env=clean_env(home), cwd=ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    seen = json.loads(out.stdout.strip().splitlines()[-1])
    assert seen["before_start"] is None
    assert seen["idle"] == {"ui": ["sorat_daemon.ui", "sorat_daemon.ui.entry"], "markdown_it": False}
    assert seen["link"].startswith("http://127.0.0.1:") and "/ui/login?nonce=" in seen["link"]
    assert seen["redeem"] == 303 and seen["page"] == 200
    assert seen["opened"]["markdown_it"]
    assert "sorat_daemon.ui.pages" in seen["opened"]["ui"] and "sorat_daemon.ui.site" in seen["opened"]["ui"]
