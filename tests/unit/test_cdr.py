"""CDR lines: complete JSON objects, appended, safe with several writers."""

import json
import multiprocessing
import threading

import pytest

from callbackd.cdr import CdrWriter, encode_line


def read_records(path):
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_each_record_is_one_json_line(tmp_path):
    path = tmp_path / "cdr.jsonl"
    CdrWriter(path).write({"callback_id": "cb-1", "did": "+421233000111", "duration": 12.5})
    text = path.read_text(encoding="utf-8")
    assert text.endswith("\n") and text.count("\n") == 1
    assert read_records(path) == [{"callback_id": "cb-1", "did": "+421233000111", "duration": 12.5}]


def test_records_are_appended_to_an_existing_file(tmp_path):
    path = tmp_path / "cdr.jsonl"
    path.write_text('{"old":true}\n', encoding="utf-8")
    writer = CdrWriter(path)
    writer.write({"n": 1})
    CdrWriter(path).write({"n": 2})
    assert read_records(path) == [{"old": True}, {"n": 1}, {"n": 2}]


def test_missing_directory_is_created(tmp_path):
    path = tmp_path / "var" / "log" / "vpbx" / "cdr.jsonl"
    CdrWriter(path).write({"n": 1})
    assert read_records(path) == [{"n": 1}]


def test_non_ascii_is_written_as_utf8(tmp_path):
    path = tmp_path / "cdr.jsonl"
    CdrWriter(path).write({"caller_name": "Ďurko Šťastný", "note": "日本"})
    assert "Ďurko Šťastný" in path.read_text(encoding="utf-8")
    assert read_records(path) == [{"caller_name": "Ďurko Šťastný", "note": "日本"}]


def test_newlines_inside_values_stay_inside_the_line():
    line = encode_line({"reason": "busy\nthen\r\ngone"})
    assert line.count(b"\n") == 1 and line.endswith(b"\n")
    assert json.loads(line) == {"reason": "busy\nthen\r\ngone"}


def test_unencodable_record_writes_nothing(tmp_path):
    path = tmp_path / "cdr.jsonl"
    writer = CdrWriter(path)
    writer.write({"n": 1})
    with pytest.raises(TypeError):
        writer.write({"n": object()})
    assert read_records(path) == [{"n": 1}]


def _write_many(path, worker, count):
    writer = CdrWriter(path)
    for n in range(count):
        writer.write({"worker": worker, "n": n, "pad": "x" * (n * 37 % 3000)})


def _start_writers(path, workers, count):
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_write_many, args=(path, w, count)) for w in range(workers)]
    for proc in procs:
        proc.start()
    return procs


def _join(procs):
    for proc in procs:
        proc.join(timeout=60)
        assert proc.exitcode == 0


def test_concurrent_processes_do_not_interleave_lines(tmp_path):
    path = tmp_path / "cdr.jsonl"
    workers, count = 4, 150
    _join(_start_writers(path, workers, count))
    records = read_records(path)  # every line parses
    assert len(records) == workers * count
    for w in range(workers):
        assert [r["n"] for r in records if r["worker"] == w] == list(range(count))


def test_a_rotation_loses_no_record_and_splits_none(tmp_path):
    """logrotate's rotation (rename, a new file made, SIGHUP: reopen) while threads append."""
    path = tmp_path / "cdr.jsonl"
    writer = CdrWriter(path)
    workers, count = 3, 300

    def write_many(worker):
        for n in range(count):
            writer.write({"worker": worker, "n": n, "pad": "x" * (n * 37 % 3000)})

    threads = [threading.Thread(target=write_many, args=(w,)) for w in range(workers)]
    for thread in threads:
        thread.start()
    rotations = 0
    while any(thread.is_alive() for thread in threads):
        if path.exists() and path.stat().st_size:
            rotations += 1
            path.rename(tmp_path / f"cdr.jsonl.{rotations}")
            path.touch(mode=0o640)
            writer.reopen()
    for thread in threads:
        thread.join(timeout=60)
    files = sorted(p for p in tmp_path.iterdir() if p.stat().st_size)
    assert len(files) > 1, "no rotation happened while the records were written"
    records = [r for p in files for r in read_records(p)]  # every line parses
    assert sorted((r["worker"], r["n"]) for r in records) == [
        (w, n) for w in range(workers) for n in range(count)]


def test_records_go_on_into_the_renamed_file_until_reopened(tmp_path):
    path = tmp_path / "cdr.jsonl"
    writer = CdrWriter(path)
    writer.write({"n": 1})
    path.rename(writer.rotated)
    path.touch()
    writer.write({"n": 2})
    writer.reopen()
    writer.write({"n": 3})
    assert [r["n"] for r in read_records(writer.rotated)] == [1, 2]
    assert [r["n"] for r in read_records(path)] == [3]


def test_a_cdr_the_last_rotation_moved_counts_as_written(tmp_path):
    path = tmp_path / "cdr.jsonl"
    writer = CdrWriter(path)
    writer.write({"id": "cb-before", "result": "bridged"})
    path.rename(writer.rotated)
    writer.reopen()
    assert writer.rotated.name == "cdr.jsonl.1"
    assert writer.written("cb-before")
    writer.write({"id": "cb-after", "result": "no_digits"})
    assert writer.written("cb-after") and writer.written("cb-before")
    assert not writer.written("cb-never")


def test_no_file_yet_means_nothing_written(tmp_path):
    assert not CdrWriter(tmp_path / "cdr.jsonl").written("cb-1")
