"""featcache.cache.requests: a repeated extract is answered from the remembered request without importing torch,
and the answer still checks the shards and the images' content."""

from __future__ import annotations

import json
import os

from featcache.cache import CacheStore
from helpers import FOLDER_EXTRACT, flat, flip_byte, folder_extract_key, invoke, make_tree


# -- a re-extract that finds its cache answers without torch (featcache/cache/requests.py) ------------------------
def test_repeated_extract_is_answered_from_the_remembered_request(home, folder_tree, monkeypatch):
    import featcache.extract as extract_module

    key = folder_extract_key("--data-root", folder_tree / "train")
    assert len(list((home / "requests").glob("*.json"))) == 1
    assert [e.key for e in CacheStore(home).entries()] == [key]  # the requests folder is not a cache

    def must_not_run(*a, **k):
        raise AssertionError("the full extract path ran")

    monkeypatch.setattr(extract_module, "extract", must_not_run)
    r = invoke("extract", *FOLDER_EXTRACT, "--data-root", folder_tree / "train")
    assert r.exit_code == 0 and "nothing to do" in flat(r) and key in r.output, r.output
    monkeypatch.undo()
    monkeypatch.setenv("FEATCACHE_HOME", str(home))
    # Anything the request read changes -> the full path decides (here: a new image, a new key).
    make_tree(folder_tree / "train", per_class=7)
    r = invoke("extract", *FOLDER_EXTRACT, "--data-root", folder_tree / "train")
    assert r.exit_code == 0 and "nothing to do" not in flat(r) and key not in r.output, r.output


def test_remembered_request_still_checks_shards_and_content(home, folder_tree, monkeypatch):
    key = folder_extract_key("--data-root", folder_tree / "train")
    shard = sorted((home / key).glob("data-*.h5"))[0]
    flip_byte(shard)
    # The full path: the damaged shard is redone.
    r = invoke("extract", *FOLDER_EXTRACT, "--data-root", folder_tree / "train")
    assert r.exit_code == 0 and "nothing to do" not in flat(r), r.output
    assert invoke("cache", "verify", key).exit_code == 0
    # Content changed behind an unchanged size and mtime: the recall re-hashes its sample and falls through.
    from featcache.cache import requests

    memo = json.loads(next((home / "requests").glob("*.json")).read_text())
    assert memo["key"] == key and len(memo["sample"]) == 18  # every image of this small split
    for p in sorted((folder_tree / "train").rglob("*.png")):
        st = p.stat()
        data = bytearray(p.read_bytes())
        data[-20] ^= 0xFF
        p.write_bytes(bytes(data))
        os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert requests.recall(home, memo["request"]) is None
