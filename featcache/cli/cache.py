"""`featcache cache ls|info|verify|rm`: the store, seen from the shell."""

from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer
from rich.markup import escape
from rich.table import Table

from featcache.cli.app import cache_app, human_bytes, out, user_errors
from featcache.config import STORES_HELP


# The store options of every cache command (distill/extract declare the same in featcache.config).
CACHE_DIR = typer.Option(None, "--cache-dir", help="The personal store (default $FEATCACHE_HOME or "
                                                   "~/.cache/featcache).")
STORES = typer.Option(None, "--store", help=STORES_HELP)


def _store(cache_dir: Path | None, stores: list[Path] | None = None):
    from featcache.cache import CacheStore

    return CacheStore(cache_dir, stores)


@cache_app.command("ls")
@user_errors
def cache_ls(
    cache_dir: Optional[Path] = CACHE_DIR,
    stores: Optional[List[Path]] = STORES,
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """List the caches in the store."""
    store = _store(cache_dir, stores)
    entries = store.entries()
    if as_json:
        rows = []
        for e in entries:
            m = e.manifest
            rows.append({"key": e.key, "status": e.status, "teacher": m.teacher.name if m else None,
                         "dataset": m.dataset.get("name") if m else None,
                         "split": m.dataset.get("split") if m else None,
                         "rows": m.rows if m else None, "bytes": m.total_bytes() if m else None})
        out.print_json(json.dumps(rows))
        return
    if not entries:
        out.print(f"no caches in {store.root}")
        return
    table = Table(title=f"caches in {store.root}", title_justify="left")
    for col in ("key", "teacher", "dataset", "split", "rows", "dim", "size", "image", "status"):
        table.add_column(col, justify="right" if col in ("rows", "dim", "size") else "left",
                         overflow="fold" if col == "key" else "ellipsis")
    for e in entries:
        m = e.manifest
        if m is None:
            table.add_row(e.key, "-", "-", "-", "-", "-", "-", "-", f"[red]{e.status}[/]")
            continue
        rows = f"{m.rows.get('data', 0):,}" + (f" +{m.rows['noise']:,}n" if m.rows.get("noise") else "")
        status = "[green]complete[/]" if m.complete else f"[yellow]{e.status}[/]"
        table.add_row(e.key, m.teacher.name, m.dataset.get("name", "?"), m.dataset.get("split", "?"), rows,
                      str(m.teacher.num_features), human_bytes(m.total_bytes()), str(m.transform.get("image_size")),
                      status)
    out.print(table)


@cache_app.command("info")
@user_errors
def cache_info(
    key: str = typer.Argument(..., help="Cache key or unique prefix."),
    cache_dir: Optional[Path] = CACHE_DIR,
    stores: Optional[List[Path]] = STORES,
    as_json: bool = typer.Option(False, "--json", help="Print the whole manifest as JSON."),
) -> None:
    """Show what produced a cache: teacher, weights, dataset, transform, shards, timing."""
    from featcache.cache import Manifest
    from featcache.transforms import TransformSpec

    store = _store(cache_dir, stores)
    entry = store.locate(key)
    m = Manifest.load(entry.directory)
    if as_json:
        out.print_json(json.dumps(m.to_dict()))
        return
    t = m.teacher
    table = Table(show_header=False, title=f"cache {m.key}", title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    weights = t.weights.get("ref", "?")
    if t.weights.get("sha256"):
        weights += f" (sha256 {t.weights['sha256'][:12]})"
    rows = [
        ("status", "complete" if m.complete else f"partial: {len(m.shards)}/{len(m.expected_shards())} shards"),
        ("directory", str(entry.directory)),
        ("store", f"{entry.store}" + (" (personal)" if entry.store == store.root else " (shared)")),
        ("teacher", f"{t.name} · {t.feature_layer} · D={t.num_features} · C={t.num_classes}"),
        ("weights", f"{t.weights.get('source')}: {weights}"),
        ("teacher classes", t.classes_source),
        ("dataset", f"{m.dataset.get('name')} / {m.dataset.get('split')} · {m.dataset.get('num_samples'):,} samples · "
                    f"{m.dataset.get('num_classes')} classes"),
        ("sample ids sha256", m.dataset.get("ids_sha256", "")[:16]),
        ("transform", TransformSpec.from_dict(m.transform).describe()),
        ("stored", f"features {m.dtype}, logits {m.logits_dtype}, computed in {m.precision}"),
        ("rows", ", ".join(f"{p}: {n:,}" for p, n in m.rows.items())),
        ("noise", f"{m.noise['count']:,} images, seed {m.noise['seed']}" if m.noise else "none"),
        ("shards", f"{len(m.shards)} × ≤{m.shard_rows:,} rows · {human_bytes(m.total_bytes())}"),
        ("teacher top-1", f"{m.teacher_accuracy:.2%}" if m.teacher_accuracy is not None else "n/a"),
        ("timing", ", ".join(f"{k}={v}" for k, v in m.timing.items()) or "n/a"),
        ("versions", ", ".join(f"{k} {v}" for k, v in m.versions.items())),
        ("created", f"{m.created} → {m.finished or '...'}"),
        ("command", m.command),
    ]
    for k, v in rows:
        table.add_row(k, v)
    out.print(table, highlight=False)


@cache_app.command("verify")
@user_errors
def cache_verify(
    key: Optional[str] = typer.Argument(None, help="Cache key or prefix (default: every cache)."),
    cache_dir: Optional[Path] = CACHE_DIR,
    stores: Optional[List[Path]] = STORES,
) -> None:
    """Recompute shard checksums; report corrupt, truncated and missing shards (exit 1 if any)."""
    store = _store(cache_dir, stores)
    keys = [store.resolve(key)] if key else sorted({e.key for e in store.entries()})
    if not keys:
        out.print(f"no caches in {store.root}")
        return
    failed = False
    orphans = {e.key: e for e in store.entries() if e.manifest is None}
    for k in keys:
        if k in orphans:
            failed = True
            out.print(f"[red]FAILED[/] {k}: {escape(orphans[k].error or 'unreadable manifest')}", highlight=False)
            continue
        report = store.verify(k)
        for c in report.checks:
            if c.status != "ok":
                colour = "yellow" if c.status == "leftover" else "red"
                out.print(f"  [{colour}]{c.status}[/] {c.file}: {c.detail}", highlight=False)
        ok_count = sum(c.status == "ok" for c in report.checks)
        state = "" if report.complete else f", incomplete: {report.missing} shard(s) not written yet"
        if report.ok:
            out.print(f"[green]ok[/] {k}: {ok_count} shard(s) verified{state}", highlight=False)
        else:
            failed = True
            out.print(f"[red]FAILED[/] {k}: {len(report.bad)} bad shard(s){state}; re-run its extract command "
                      "(it redoes bad shards after `featcache cache rm`, or use --force)", highlight=False)
    if failed:
        raise typer.Exit(1)


@cache_app.command("rm")
@user_errors
def cache_rm(
    keys: List[str] = typer.Argument(..., help="Cache keys or unique prefixes."),
    cache_dir: Optional[Path] = CACHE_DIR,
    stores: Optional[List[Path]] = STORES,
) -> None:
    """Remove caches (refuses one that is being written)."""
    store = _store(cache_dir, stores)
    for key in keys:
        full = store.resolve(key)
        freed = store.remove(full)
        out.print(f"removed {full} ({human_bytes(freed)})", highlight=False)


@cache_app.command("publish")
@user_errors
def cache_publish(
    key: str = typer.Argument(..., help="Cache key or unique prefix."),
    to: Path = typer.Option(..., "--to", help="The shared store (a directory) to publish into."),
    cache_dir: Optional[Path] = CACHE_DIR,
    stores: Optional[List[Path]] = STORES,
) -> None:
    """Copy a cache into a shared store: others see nothing, or the complete verified cache."""
    from featcache.cache.publish import publish
    from featcache.progress import RichReporter

    store = _store(cache_dir, stores)
    entry = store.locate(key)
    reporter = RichReporter(transient=True)
    reporter.start(entry.manifest.total_bytes() if entry.manifest else 0, f"publish {entry.key}", unit="B")
    try:
        result = publish(store, entry.key, to, progress=reporter.advance)
    finally:
        reporter.stop()
    verb = "published" if result.new else "already published (the same cache)"
    out.print(f"{verb}: {result.key} → {result.directory} ({human_bytes(result.bytes)})", highlight=False)
