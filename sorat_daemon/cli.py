"""The ``sorat`` command: parse, wire objects, call. Heavy modules load in the command that needs them."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys

from sorat_daemon import __version__, config, tokens
from sorat_daemon.paths import Home

log = logging.getLogger("sorat.cli")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="sorat",
        description="A local agent daemon that speaks OpenAI's Chat Completions API. "
        "Without a command: the tray icon and the daemon.",
    )
    p.add_argument("--version", action="version", version=f"sorat {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    serve = sub.add_parser("serve", help="run the daemon in the foreground, without a tray")
    serve.add_argument("--host", help="address to listen on (default from config.toml: 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port to listen on (default from config.toml: 8080)")
    token = sub.add_parser("token", help="print the bearer token")
    token.add_argument("--rotate", action="store_true", help="replace the token with a new one")
    model = sub.add_parser("model", help="list the providers' models, or make NAME the active one")
    model.add_argument("name", nargs="?", help="the model to make active")
    ui = sub.add_parser("open", help="open the web UI in the browser, already signed in")
    ui.add_argument("--print", action="store_true", dest="print_only", help="print the one-time link instead")
    auto = sub.add_parser("autostart", help="start sorat at login")
    auto.add_argument("action", choices=["enable", "disable", "status"])
    return p


def _settings(home: Home, args: argparse.Namespace | None = None) -> config.Settings:
    settings = config.load(home.config)
    if args is not None and (getattr(args, "host", None) or getattr(args, "port", None) is not None):
        from dataclasses import replace

        server = settings.server
        if args.host:
            server = replace(server, host=args.host)
        if args.port is not None:
            if not 0 <= args.port <= 65535:
                raise config.ConfigError(
                    home.config, "--port", f"must be between 0 and 65535, not {args.port}"
                )
            server = replace(server, port=args.port)
        settings = replace(settings, server=server)
    return settings


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    home = Home.from_env()
    try:
        if args.command == "token":
            return _token(home, args.rotate)
        if args.command == "autostart":
            return _autostart(args.action)
        if args.command == "model":
            return _model(home, args.name)
        if args.command == "open":
            return _open(home, args.print_only)
        return _run(home, args, tray=args.command is None)
    except config.ConfigError as e:
        print(f"sorat: {e}", file=sys.stderr)
        return 1


def _run(home: Home, args: argparse.Namespace, *, tray: bool) -> int:
    from sorat_daemon import logsetup
    from sorat_daemon.daemon import Daemon, StartError

    home.ensure()
    logsetup.configure(home.logs)
    settings = _settings(home, args)
    daemon = Daemon(home, settings)
    if tray:
        from sorat_daemon.desktop.tray import run_tray

        if run_tray(daemon):
            return 1 if daemon.state.get().error else 0
    try:
        daemon.run()
    except StartError as e:
        log.error("%s", e)
        return 1
    return 0


def _token(home: Home, rotate: bool) -> int:
    home.root.mkdir(parents=True, exist_ok=True)
    print(tokens.rotate(home.token) if rotate else tokens.load_or_create(home.token))
    return 0


def _open(home: Home, print_only: bool) -> int:
    """Asks the running daemon for a one-time sign-in link (a route behind the bearer token, so only
    who can read the token gets one), then opens it or prints it."""
    import urllib.error
    import urllib.request

    from sorat_daemon import wire

    try:
        where = home.lock.read_text(encoding="utf-8").strip()
    except OSError:
        where = ""
    url = where.partition(", ")[2]
    token = tokens.read(home.token)
    if not url or not token:
        print(f"sorat: not running for {home.root}; start it with `sorat` or `sorat serve`", file=sys.stderr)
        return 1
    url = url.replace("://0.0.0.0:", "://127.0.0.1:").replace("://[::]:", "://[::1]:")
    ask = urllib.request.Request(
        url + "/v1/ui/login-link", data=b"", method="POST", headers={"Authorization": f"Bearer {token}"}
    )
    try:
        with urllib.request.urlopen(ask, timeout=10) as resp:
            link = wire.loads(resp.read())["url"]
    except (urllib.error.URLError, OSError, ValueError, KeyError) as e:
        print(f"sorat: cannot reach sorat at {url} ({e}); is it running?", file=sys.stderr)
        return 1
    if print_only:
        print(link)
        return 0
    import webbrowser

    if not webbrowser.open(link):
        print(f"sorat: no browser to open; this link signs in once within 60 s:\n{link}", file=sys.stderr)
        return 1
    print(f"opened the web UI at {link.partition('/ui/')[0]}/ in the browser")
    return 0


def _autostart(action: str) -> int:
    from sorat_daemon.desktop import autostart

    if action == "enable":
        autostart.enable()
    elif action == "disable":
        autostart.disable()
    print(autostart.status())
    return 0


def _model(home: Home, name: str | None) -> int:
    settings = _settings(home)
    models = asyncio.run(_discover(settings))
    active = config.read_active_model(home.config) or settings.agent.model
    if name is None:
        if not models:
            print("no models: no provider answered (configure [[providers]] in config.toml)", file=sys.stderr)
            return 1
        for model, owner in models:
            print(f"{'*' if model == active else ' '} {model}  ({owner})")
        if active not in dict(models):
            print(f"  (active: {active}, which no provider offers)")
        return 0
    if name not in dict(models):
        offered = ", ".join(m for m, _ in models) or "none (no provider answered)"
        print(f"sorat: no provider offers {name!r}; offered: {offered}", file=sys.stderr)
        return 1
    from sorat_daemon.configedit import set_active_model

    set_active_model(home.config, name)
    print(f"active model: {name}")
    return 0


async def _discover(settings: config.Settings) -> list[tuple[str, str]]:
    from sorat_daemon.providers import ProviderPool

    pool = ProviderPool(settings)
    try:
        await pool.refresh_models()
        return pool.models()
    finally:
        await pool.aclose()
