"""torchrun: each rank writes its share of the shards into its own file; rank 0 merges them."""

from __future__ import annotations

from pathlib import Path

from featcache.cache.format import (
    RANK_SHARDS_PREFIX,
    Manifest,
    ShardInfo,
)
from featcache.config import typecheck
from featcache.extract.manifest import shard_intact
from featcache.util.fileio import loads_json


def rank_file(directory: Path, rank: int) -> Path:
    return directory / f"{RANK_SHARDS_PREFIX}{rank}.json"


def merge_rank_shards(directory: Path, manifest: Manifest) -> None:
    """Fold the shards recorded by torchrun ranks (their sidecars) into the manifest, then drop the sidecars."""

    known = {(s.part, s.number) for s in manifest.shards}
    for side in sorted(directory.glob(f"{RANK_SHARDS_PREFIX}*.json")):
        try:
            records = loads_json(side.read_text())
            for d in records:
                typecheck.check_fields(d, ShardInfo)
            infos = [ShardInfo(**d) for d in records]
        except (ValueError, TypeError):  # a torn or foreign sidecar: its shards are redone
            infos = []
        for info in infos:
            if (info.part, info.number) in known or not shard_intact(directory, info):
                continue
            manifest.shards.append(info)
            try:  # the manifest's own rules: the file is its part's own name, the rows its number's
                manifest.check()
            except ValueError:
                manifest.shards.pop()
                continue
            known.add((info.part, info.number))
        side.unlink()
