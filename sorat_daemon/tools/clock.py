"""Tools about the machine sorat runs on: the time, and the system (standard library only)."""

from __future__ import annotations

import os
import platform
import socket
import time
from datetime import datetime, tzinfo
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from sorat_daemon.tools.registry import Tool, ToolError, tool


def _local_zone() -> tuple[tzinfo, str]:
    """The local time zone and its IANA name when it can be found (else its abbreviation)."""
    tz = datetime.now().astimezone().tzinfo
    assert tz is not None
    name = os.environ.get("TZ", "").lstrip(":")
    if not name:
        try:
            name = Path("/etc/timezone").read_text(encoding="utf-8").strip()
        except OSError:
            name = ""
    if not name:
        try:
            target = str(Path("/etc/localtime").resolve())
            if "zoneinfo/" in target:
                name = target.split("zoneinfo/", 1)[1]
        except OSError:
            name = ""
    if name:
        try:
            return ZoneInfo(name), name
        except (ZoneInfoNotFoundError, ValueError):
            pass
    return tz, tz.tzname(None) or "local"


@tool(timeout_s=10)
def get_current_time(timezone: str | None = None) -> dict[str, str]:
    """Get the current date and time.

    Args:
        timezone: an IANA time zone such as "Europe/Paris" or "America/New_York"; the local zone if omitted
    """
    if timezone:
        try:
            tz: tzinfo = ZoneInfo(timezone.strip())
        except (ZoneInfoNotFoundError, ValueError):
            raise ToolError(
                f"unknown time zone {timezone!r}: use an IANA name such as 'Europe/Paris' or 'UTC'"
            ) from None
        name = timezone.strip()
    else:
        tz, name = _local_zone()
    now = datetime.now(tz)
    return {"iso": now.isoformat(timespec="seconds"), "weekday": now.strftime("%A"), "timezone": name}


def _meminfo() -> dict[str, int] | None:
    try:
        text = Path("/proc/meminfo").read_text(encoding="ascii")
    except OSError:
        return None
    values: dict[str, int] = {}
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        parts = rest.split()
        if parts and parts[0].isdigit():
            values[key] = int(parts[0]) * (1024 if len(parts) > 1 and parts[1] == "kB" else 1)
    if "MemTotal" not in values:
        return None
    return {"total": values["MemTotal"], "available": values.get("MemAvailable", values.get("MemFree", 0))}


def _memory() -> dict[str, int | None]:
    info = _meminfo()
    if info is not None:
        return dict(info)
    total: int | None = None
    available: int | None = None
    try:  # POSIX without /proc (macOS, BSD)
        pagesize = os.sysconf("SC_PAGE_SIZE")
        total = os.sysconf("SC_PHYS_PAGES") * pagesize
        try:
            available = os.sysconf("SC_AVPHYS_PAGES") * pagesize
        except (ValueError, OSError):
            available = None
    except (ValueError, OSError, AttributeError):
        total = None
    return {"total": total, "available": available}


def _uptime_s() -> float | None:
    try:
        return float(Path("/proc/uptime").read_text(encoding="ascii").split()[0])
    except (OSError, ValueError, IndexError):
        pass
    try:
        return time.clock_gettime(time.CLOCK_BOOTTIME)  # type: ignore[attr-defined,unused-ignore]
    except (AttributeError, OSError):
        pass
    try:  # macOS, BSD: CLOCK_MONOTONIC counts from boot (minus sleep)
        return time.clock_gettime(time.CLOCK_MONOTONIC)
    except (AttributeError, OSError):
        return None


def _os_name() -> str:
    system = platform.system() or os.name
    if system == "Linux":
        try:
            release = platform.freedesktop_os_release()
            pretty = release.get("PRETTY_NAME") or release.get("NAME")
            if pretty:
                return f"Linux ({pretty}, kernel {platform.release()})"
        except OSError:
            pass
    if system == "Darwin":
        version = platform.mac_ver()[0]
        return f"macOS {version}" if version else "macOS"
    return f"{system} {platform.release()}".strip()


@tool(timeout_s=10)
def get_system_info() -> dict[str, Any]:
    """Get facts about this computer: OS, CPU architecture, host name, uptime, memory (bytes)."""
    uptime = _uptime_s()
    return {
        "os": _os_name(),
        "arch": platform.machine() or "unknown",
        "hostname": socket.gethostname(),
        "uptime_s": round(uptime) if uptime is not None else None,
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "memory": _memory(),
    }


TOOLS: tuple[Tool, ...] = (get_current_time, get_system_info)
