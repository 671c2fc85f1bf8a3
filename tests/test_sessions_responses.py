"""Response records on disk: found at once, kept across a restart, deleted, and a broken file set aside."""

from __future__ import annotations

from pathlib import Path

from sorat_daemon.sessions.responses import FILE, ResponseRecord, ResponseStore


async def test_records_are_found_at_once_and_after_a_restart(tmp_path: Path) -> None:
    store = ResponseStore(tmp_path)
    await store.open()
    record = ResponseRecord("resp_1", "sess_a", 3, 1700000000.5, b'{"id":"resp_1"}', b"[]")
    store.put(record)
    assert await store.get("resp_1") == record  # before any write
    store.put(ResponseRecord("resp_2", "sess_a", 5, 1700000001.0))
    await store.close()

    again = ResponseStore(tmp_path)
    await again.open()
    assert await again.get("resp_1") == record
    second = await again.get("resp_2")
    assert second is not None and (second.session_id, second.position, second.body) == ("sess_a", 5, None)
    assert await again.get("resp_unknown") is None
    assert await again.delete("resp_1") is True
    assert await again.get("resp_1") is None
    assert await again.delete("resp_1") is False
    await again.close()

    third = ResponseStore(tmp_path)
    assert await third.get("resp_1") is None  # opened at first use
    assert await third.get("resp_2") is not None
    await third.close()


async def test_many_records_written_in_batches(tmp_path: Path) -> None:
    store = ResponseStore(tmp_path)
    await store.open()
    for i in range(2000):  # more than the store keeps in memory
        store.put(ResponseRecord(f"resp_{i}", "s", i, float(i)))
    await store.flush()
    found = await store.get("resp_7")
    assert found is not None and found.position == 7
    await store.close()


async def test_conversation_metadata(tmp_path: Path) -> None:
    store = ResponseStore(tmp_path)
    assert await store.metadata("conv_1") == {}
    await store.set_metadata("Conv_1", {"topic": "x"}, 1.0)
    assert await store.metadata("conv_1") == {"topic": "x"}  # ids that differ in case are one session
    await store.set_metadata("conv_1", {"topic": "y"}, 2.0)
    assert await store.metadata("conv_1") == {"topic": "y"}
    await store.forget_conversation("conv_1")
    assert await store.metadata("conv_1") == {}
    await store.close()


async def test_a_broken_file_is_set_aside(tmp_path: Path) -> None:
    (tmp_path / FILE).write_bytes(b"this is not a database" * 100)
    store = ResponseStore(tmp_path)
    await store.open()
    store.put(ResponseRecord("resp_1", "s", 1, 1.0))
    await store.flush()
    assert await store.get("resp_1") is not None
    await store.close()
    assert any(p.name.startswith(FILE + ".broken-") for p in tmp_path.iterdir())
