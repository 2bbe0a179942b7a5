"""featcache.util.fileio: JSON, outputs and names from files other users may have written or planted."""
import json
import os

import pytest

from featcache.cache.format import MANIFEST, Manifest
from featcache.errors import CacheError, StorageError
from featcache.util.fileio import MAX_JSON_DEPTH, loads_json, printable, read_regular, write_text_atomic
from featcache.util.locks import holder
from helpers import within

DEEPER = MAX_JSON_DEPTH + 1


@pytest.mark.parametrize("text", ["[" * 100_000, '{"a":' * 100_000, "[" * DEEPER + "]" * DEEPER])
def test_json_nested_too_deep_is_a_value_error_not_a_recursion_error(text):
    with pytest.raises(ValueError, match="nested deeper"):
        loads_json(text)


def test_json_brackets_inside_strings_do_not_count_and_big_files_are_checked_fast():
    assert loads_json('{"a": ["[[[[", "\\"{{{{"]}') == {"a": ["[[[[", '"{{{{']}
    flat = json.dumps([[i] for i in range(500_000)] + ["[" * 1000])  # many brackets, none deep
    with within(5):
        assert len(loads_json(flat)) == 500_001


def test_an_output_that_is_not_a_regular_file_is_refused_and_left_alone(tmp_path):
    fifo, folder, link = tmp_path / "fifo", tmp_path / "dir", tmp_path / "link"
    os.mkfifo(fifo)
    folder.mkdir()
    (tmp_path / "victim").write_text("keep")
    link.symlink_to(tmp_path / "victim")
    for target in (fifo, folder, link):
        with within(5), pytest.raises(StorageError, match="not a regular file"):
            write_text_atomic(target, "x", flag="--markdown")
    assert (tmp_path / "victim").read_text() == "keep" and fifo.exists() and folder.is_dir()


def test_an_output_is_never_written_through_what_is_planted_beside_it(tmp_path):
    (tmp_path / "victim").write_text("keep")
    (tmp_path / "out.md.tmp").symlink_to(tmp_path / "victim")
    write_text_atomic(tmp_path / "out.md", "report")
    assert (tmp_path / "out.md").read_text() == "report" and (tmp_path / "victim").read_text() == "keep"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.md", "out.md.tmp", "victim"]  # no temp file left


def test_a_small_file_of_ours_planted_as_a_fifo_or_too_large_never_blocks(tmp_path):
    os.mkfifo(tmp_path / "fifo")
    with within(5), pytest.raises(OSError, match="not a regular file"):
        read_regular(tmp_path / "fifo", 100)
    (tmp_path / "big").write_bytes(b"x" * 101)
    assert read_regular(tmp_path / "big", 100) == b"x" * 100
    with pytest.raises(ValueError, match="larger than 100 bytes"):
        read_regular(tmp_path / "big", 100, whole=True)


def test_a_manifest_or_lock_planted_as_a_fifo_is_refused_without_blocking(tmp_path):
    cache = tmp_path / "resnet18-0123456789ab"
    cache.mkdir()
    os.mkfifo(cache / MANIFEST)
    os.mkfifo(cache / ".lock")
    with within(5):
        with pytest.raises(CacheError, match="unreadable"):
            Manifest.load(cache)
        assert holder(cache) is None


def test_names_from_disk_are_printed_escaped():
    assert printable("run\x1b[2J\nrm -rf ~") == "run\\e[2J\\nrm -rf ~"
    assert printable("plain name") == "plain name"
    assert printable("x" * 300, limit=10) == "x" * 10 + "…"
