from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

from sorat_daemon.logsetup import FORMAT, LogFile, configure


def test_log_file_rotates_and_keeps_every_line(tmp_path: Path) -> None:
    log = logging.getLogger("sorat.test.rotation")
    log.propagate = False
    handler = LogFile(tmp_path / "sorat.log", max_bytes=1000, backups=2)
    handler.setFormatter(logging.Formatter("%(message)s"))
    log.addHandler(handler)
    try:
        for n in range(100):
            log.warning("line %03d %s", n, "x" * 40)  # 50 bytes a line: 20 a file
    finally:
        log.removeHandler(handler)
        handler.close()
    files = [tmp_path / "sorat.log", tmp_path / "sorat.log.1", tmp_path / "sorat.log.2"]
    assert not (tmp_path / "sorat.log.3").exists()
    assert all(f.stat().st_size <= 1000 for f in files)
    kept = [line[5:8] for f in reversed(files) for line in f.read_text().splitlines()]
    assert kept == [f"{n:03d}" for n in range(100 - len(kept), 100)]  # the newest, in order, whole
    assert len(kept) == 60


def test_log_file_appends_across_restarts(tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    for run in ("first", "second"):
        file = configure(logs, stderr=False)
        logging.getLogger("sorat.test").warning("%s run", run)
        for h in logging.getLogger("sorat").handlers:
            h.close()
    text = file.read_text()
    assert "first run" in text and "second run" in text and text.count("\n") == 2
    assert " WARNING sorat.test: second run" in text.splitlines()[1]
    assert FORMAT.startswith("%(asctime)s")
    if os.name == "posix":
        assert stat.S_IMODE(file.stat().st_mode) == 0o600
