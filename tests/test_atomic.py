"""jaxformer.atomic: a write either lands whole or leaves the old file (and no temp file) behind."""

import pytest

from jaxformer import atomic


def test_writes_land_whole_and_leave_no_temp_files(tmp_path):
    target = tmp_path / "deep" / "f.txt"
    atomic.write_text(target, "héllo\n")
    assert target.read_bytes() == "héllo\n".encode()
    atomic.write_bytes(target, b"\x00\x01")
    assert target.read_bytes() == b"\x00\x01"
    assert [p.name for p in target.parent.iterdir()] == ["f.txt"]


def test_a_failed_write_keeps_the_old_file_and_removes_the_temp(tmp_path):
    target = tmp_path / "f.txt"
    target.write_text("before")
    with pytest.raises(RuntimeError), atomic.replacing(target, durable=True) as tmp:
        tmp.write_text("half")
        raise RuntimeError("interrupted")
    assert target.read_text() == "before"
    assert [p.name for p in tmp_path.iterdir()] == ["f.txt"]
