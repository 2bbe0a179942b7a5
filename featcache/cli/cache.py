"""`featcache cache ls|info|verify|pull|rm|gc|publish`: the store, seen from the shell."""

from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer
from rich.markup import escape
from rich.table import Table

from featcache.cli.app import cache_app, human_bytes, out, user_errors
from featcache.cli.tables import Col, Grid
from featcache.config import StoreOptions
from featcache.config.flags import cli_parameters
from featcache.util.fileio import printable

# The store options of every cache command: the same declarations as distill's and extract's (featcache.config).
_STORE_OPTIONS = {p.name: p.default for p in cli_parameters(StoreOptions)}
CACHE_DIR = _STORE_OPTIONS["cache_dir"]
STORES = _STORE_OPTIONS["stores"]
OFFLINE = _STORE_OPTIONS["offline"]


def _store(cache_dir: Path | None, stores: list[Path] | None = None, offline: bool = False):
    from featcache.cache import CacheStore
    from featcache.util.progress import RichReporter

    # --offline adds to FEATCACHE_OFFLINE=1 (None: the environment decides); a pull shows its bar
    return CacheStore(cache_dir, stores, offline=True if offline else None, reporter=RichReporter(transient=True))


LS_SORTS = ("key", "size", "used")
_STATUS_STYLE = {"complete": "green", "orphaned": "red", "broken": "red", "newer format": "red", "foreign": "red"}


@cache_app.command("ls")
@user_errors
def cache_ls(
    cache_dir: Optional[Path] = CACHE_DIR,
    stores: Optional[List[Path]] = STORES,
    offline: bool = OFFLINE,
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output (the same fields; bytes, last_used "
                                                       "as ISO time or null, the store's path)."),
    sort: str = typer.Option("key", "--sort", help="key, size (largest first) or used (least recently used first: "
                                                  "the order `cache gc` removes in)."),
) -> None:
    """List the caches of every store searched: what they hold, their size, when you last used them; totals per
    store."""
    from featcache.cache.usage import usage_times
    from featcache.errors import check_choice

    check_choice("--sort", sort, LS_SORTS)
    store = _store(cache_dir, stores, offline)
    uses = usage_times(store)  # one directory scan: `ls` over thousands of caches stays well under a second
    listing = [(e, uses.get(e.key)) for e in store.entries()]
    order = {"key": lambda r: r[0].key, "size": lambda r: -_bytes(r[0]),
             "used": lambda r: (r[1] is not None, r[1] or 0.0, r[0].key)}
    listing.sort(key=order[sort])
    if as_json:
        typer.echo(json.dumps([_ls_json(e, used, store.root) for e, used in listing], indent=2))
        return
    strays = store.strays()
    for url, why in store.unreachable.items():  # its caches are not listed: say so, the rest still is
        out.print(f"[yellow]not read[/] {escape(printable(url))}: {escape(printable(why))}", highlight=False,
                  soft_wrap=True)
    if not listing:
        out.print(f"no caches in {escape(printable(store.describe()))}", highlight=False)
    else:
        out.print(f"caches in {escape(printable(store.describe()))}", highlight=False, soft_wrap=True)
        _print_ls(listing, store.root)
    if strays:  # another user's names, shown escaped: never a cache, never read
        out.print(f"[yellow]not caches[/] ({len(strays)}: names that are not cache keys, never read by featcache): "
                  + ", ".join(escape(printable(str(p), limit=120)) for p in strays[:20])
                  + (f", … {len(strays) - 20} more" if len(strays) > 20 else ""), highlight=False, soft_wrap=True)
    if not listing:
        return
    for layer in store.layers:
        held = [e for e, _ in listing if e.store == layer and e.url is None]
        if held or layer == store.root:
            kind = "personal" if layer == store.root else "shared"
            size = human_bytes(sum(map(_bytes, held)))
            out.print(f"{kind} {escape(printable(str(layer)))}: {len(held)} cache(s), {size}", highlight=False,
                      soft_wrap=True)
    for remote in [r for r in store.remotes if r.url not in store.unreachable] if not store.offline else []:
        held = [e for e, _ in listing if e.url == remote.url]
        out.print(f"remote {escape(printable(remote.url))}: {len(held)} cache(s), "
                  f"{human_bytes(sum(map(_bytes, held)))} (pulled into the personal store when used)",
                  highlight=False, soft_wrap=True)


def _bytes(entry) -> int:
    return entry.manifest.total_bytes() if entry.manifest is not None else 0


def _ls_json(e, used: float | None, root: Path) -> dict:
    import datetime as dt

    m = e.manifest
    return {"key": e.key, "store": e.where, "personal": e.store == root and e.url is None, "status": e.status,
            "teacher": m.teacher.name if m else None, "dataset": m.dataset.get("name") if m else None,
            "split": m.dataset.get("split") if m else None, "rows": m.rows if m else None,
            "bytes": m.total_bytes() if m else None,
            "last_used": dt.datetime.fromtimestamp(used, dt.timezone.utc).isoformat(timespec="seconds")
            if used is not None else None}


def _print_ls(listing: list, root: Path) -> None:
    """A row per cache (featcache.cli.tables). A key is copied into commands, so it is never folded: where it does
    not fit beside the other columns, each cache is a block, its key whole on a line of its own."""
    import time

    from featcache.cache.gc import human_age

    now = time.time()
    grid = Grid("", [Col("key"), Col("store", give="fold"), Col("teacher"), Col("dataset"), Col("split"),
                     Col("rows", right=True), Col("size", right=True), Col("last used"),
                     Col("status", style=lambda s: _STATUS_STYLE.get(s, "yellow"))])
    for e, used in listing:
        m = e.manifest
        where = "personal" if e.store == root and e.url is None else e.where
        when = f"{human_age(now - used)} ago" if used is not None else "never"
        if m is None:
            grid.add(e.key, where, "-", "-", "-", "-", "-", when, e.status)
            continue
        rows = f"{m.rows.get('data', 0):,}" + (f" +{m.rows['noise']:,}n" if m.rows.get("noise") else "")
        # names from other users' manifests: bounded, and shown printable by Grid
        grid.add(e.key, where, printable(m.teacher.name, limit=80), printable(str(m.dataset.get("name", "?")), 80),
                 printable(str(m.dataset.get("split", "?")), 80), rows, human_bytes(m.total_bytes()), when, e.status)
    grid.print()


@cache_app.command("info")
@user_errors
def cache_info(
    key: str = typer.Argument(..., help="Cache key or unique prefix."),
    cache_dir: Optional[Path] = CACHE_DIR,
    stores: Optional[List[Path]] = STORES,
    offline: bool = OFFLINE,
    as_json: bool = typer.Option(False, "--json", help="Print the whole manifest as JSON."),
) -> None:
    """Show what produced a cache: teacher, weights, dataset, transform, shards, timing (a remote store's cache is
    pulled first)."""
    from featcache.cache import Manifest
    from featcache.cache.commands import extract_command

    store = _store(cache_dir, stores, offline)
    entry = store.locate(key)
    m = Manifest.load(entry.directory)  # refused when it is not the cache its name says
    if as_json:
        out.print_json(json.dumps(m.to_dict()))
        return
    t = m.teacher
    table = Table(show_header=False, title=f"cache {m.key}", title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    weights = t.weights.ref
    if t.weights.sha256:
        weights += f" (sha256 {t.weights.sha256[:12]})"
    rows = [
        ("status", "complete" if m.complete else f"partial: {len(m.shards)}/{len(m.expected_shards())} shards"),
        ("directory", str(entry.directory)),
        ("store", f"{entry.store}" + (" (personal)" if entry.store == store.root else " (shared)")),
        ("teacher", f"{t.name} · {t.feature_layer} · D={t.num_features} · C={t.num_classes}"),
        ("weights", f"{t.weights.source}: {weights}"),
        ("teacher classes", t.classes_source),
        ("dataset", f"{m.dataset.get('name')} / {m.dataset.get('split')} · {_count(m.dataset.get('num_samples'))} "
                    f"samples · {m.dataset.get('num_classes')} classes"),
        ("sample ids sha256", str(m.dataset.get("ids_sha256", ""))[:16]),
        ("transform", m.transform.describe()),
        ("stored", f"features {m.dtype}, logits {m.logits_dtype}, computed in {m.precision}"),
        *_codec_rows(m),
        ("rows", ", ".join(f"{p}: {n:,}" for p, n in m.rows.items())),
        ("noise", f"{m.noise.count:,} images, seed {m.noise.seed}" if m.noise else "none"),
        ("shards", f"{len(m.shards)} × ≤{m.shard_rows:,} rows · {human_bytes(m.total_bytes())}"),
        ("teacher top-1", f"{m.teacher_accuracy:.2%}" if m.teacher_accuracy is not None else "n/a"),
        ("timing", ", ".join(f"{k}={v}" for k, v in m.timing.to_dict().items()) or "n/a"),
        ("versions", ", ".join(f"{k} {v}" for k, v in m.versions.items())),
        ("created", f"{m.created} → {m.finished or '...'}"),
        # Recorded text is shown only as the extract it stands for (featcache.cache.commands).
        ("command", extract_command(m) or "none that `featcache extract` runs (written by the Python API or a bench)"),
    ]
    for k, v in rows:
        table.add_row(k, escape(printable(v, limit=2000)))  # names and text from a manifest are data
    out.print(table, highlight=False)


def _count(value) -> str:
    """A number the manifest's dataset record holds (a dict of anything: it is not typed like the other fields)."""
    return f"{value:,}" if isinstance(value, int) and not isinstance(value, bool) else "?"


def _codec_rows(m) -> list[tuple[str, str]]:
    """cache info's lines for compressed rows (extract --dtype int8, --project N)."""
    rows = []
    if m.feature_codec:
        rows.append(("feature codec", f"{m.feature_codec}: int8 rows with a float32 scale each, read back as float16"))
    if m.projection is not None:
        p = m.projection
        rows.append(("projection", f"{p.method} {p.source_dim} → {p.dim} dims, fitted on {p.sample:,} rows (seed "
                                   f"{p.seed}) · {p.file} {human_bytes(p.bytes)} · sha256 {p.sha256[:12]}"))
    return rows


@cache_app.command("verify")
@user_errors
def cache_verify(
    key: Optional[str] = typer.Argument(None, help="Cache key or prefix (default: every cache)."),
    cache_dir: Optional[Path] = CACHE_DIR,
    stores: Optional[List[Path]] = STORES,
    offline: bool = OFFLINE,
) -> None:
    """Recompute shard checksums; report corrupt, truncated and missing shards (exit 1 if any). A KEY held only by a
    remote store is pulled (and so verified) first; without a KEY, the local stores' caches are verified."""
    store = _store(cache_dir, stores, offline)
    keys = [store.resolve(key)] if key else sorted({e.key for e in store.entries(store.layers)})
    if not keys:
        out.print(f"no caches in {store.root}")
        return
    failed = False
    orphans = {e.key: e for e in store.entries(store.layers) if e.manifest is None}
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


@cache_app.command("pull")
@user_errors
def cache_pull(
    keys: List[str] = typer.Argument(..., help="Cache keys or unique prefixes, held by a remote store (--store URL)."),
    cache_dir: Optional[Path] = CACHE_DIR,
    stores: Optional[List[Path]] = STORES,
) -> None:
    """Fetch caches from a remote store into the personal store (or --cache-dir) ahead of use: every file checked
    against the manifest's sha256 before it is installed; an interrupted pull resumes where it stopped."""
    store = _store(cache_dir, stores)
    if not store.remotes:
        from featcache.errors import ConfigError

        raise ConfigError("cache pull: no remote store to pull from; name one with --store URL (https://host/dir, "
                          "s3://bucket/prefix) or in FEATCACHE_PATH", flag="--store")
    for key in keys:
        entry = store.locate(key, pull=False)
        if entry.url is None:
            out.print(f"already here: {entry.key} in {escape(printable(str(entry.store)))}", highlight=False)
            continue
        got = store.local(entry)
        out.print(f"pulled: {got.key} ← {escape(printable(entry.url))} → {escape(printable(str(got.directory)))} "
                  f"({human_bytes(_bytes(got))}, every file verified)", highlight=False, soft_wrap=True)


@cache_app.command("rm")
@user_errors
def cache_rm(
    keys: List[str] = typer.Argument(..., help="Cache keys or unique prefixes."),
    cache_dir: Optional[Path] = CACHE_DIR,
    stores: Optional[List[Path]] = STORES,
) -> None:
    """Remove caches (refuses one that is being written, or read: a distill or RowJoin holds a lease on it)."""
    store = _store(cache_dir, stores)
    for key in keys:
        full = store.resolve(key)
        freed = store.remove(full)
        out.print(f"removed {full} ({human_bytes(freed)})", highlight=False)


@cache_app.command("gc")
@user_errors
def cache_gc(
    max_size: Optional[str] = typer.Option(None, "--max-size", help="Remove least recently used caches until the "
                                                                    "store holds at most this much (200G, 512M)."),
    unused_for: Optional[str] = typer.Option(None, "--unused-for", help="Remove every cache unused for longer than "
                                                                        "this (30d, 12h, 90m)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Say what would be removed and the bytes freed; remove "
                                                          "nothing."),
    cache_dir: Optional[Path] = CACHE_DIR,
) -> None:
    """Free space in one writable store (--cache-dir, default the personal store): least recently used caches
    first, never one being read or written; also removes what crashes left (incoming directories, leases, trash)."""
    import time

    from featcache.cache import CacheStore
    from featcache.cache.gc import collect, parse_duration, parse_size

    limit = parse_size(max_size) if max_size is not None else None
    age = parse_duration(unused_for) if unused_for is not None else None
    store = CacheStore(cache_dir, shared_env=False)
    now = time.time()
    report = collect(store, limit, age, dry_run=dry_run, now=now, on_step=lambda s: _gc_line(s, now, dry_run))
    done = [s for s in report.steps if s.action != "skipped"]
    verb = "would free" if dry_run else "freed"
    line = (f"{verb} {human_bytes(report.freed)} ({len(done)} cache(s)); {store.root} "
            f"{'would hold' if dry_run else 'holds'} {human_bytes(report.remaining)}")
    if limit is not None:
        line += f" (budget {human_bytes(limit)}{', still over it' if report.remaining > limit else ''})"
    if limit is None and age is None:
        line += "; pass --max-size and/or --unused-for to remove caches"
    out.print(escape(line), highlight=False, soft_wrap=True)


def _gc_line(step, now: float, dry_run: bool) -> None:
    from featcache.cache.gc import human_age

    if isinstance(step, str):
        out.print(f"{'would clean' if dry_run else 'cleaned'} {escape(step)}", highlight=False, soft_wrap=True)
        return
    if not hasattr(step, "candidate"):  # a leftover that could not be removed: said, left for the next gc
        out.print(f"[yellow]left[/] {escape(step.text)}", highlight=False, soft_wrap=True)
        return
    c = step.candidate
    used = (f"last used {human_age(now - c.used)} ago" if c.recorded else
            f"never used, extracted {human_age(now - c.used)} ago")
    why = step.detail if step.action == "skipped" else step.reason
    out.print(escape(f"{step.action} {printable(c.key)} ({human_bytes(c.bytes)}, {used}): {why}"), highlight=False,
              soft_wrap=True)


@cache_app.command("publish")
@user_errors
def cache_publish(
    key: str = typer.Argument(..., help="Cache key or unique prefix."),
    to: str = typer.Option(..., "--to", help="The shared store to publish into: a directory, or a URL "
                                             "(s3://bucket/prefix, any fsspec URL that can be written; credentials "
                                             "and endpoint from AWS_* and FEATCACHE_STORAGE_OPTIONS)."),
    cache_dir: Optional[Path] = CACHE_DIR,
    stores: Optional[List[Path]] = STORES,
) -> None:
    """Copy a cache into a shared store: others see nothing, or the complete verified cache. To a URL: the shards
    first (each upload verified), the manifest last; publishing again uploads nothing that is already there."""
    from featcache.cache.publish import publish
    from featcache.util.progress import RichReporter

    store = _store(cache_dir, stores)
    entry = store.locate(key)
    reporter = RichReporter(transient=True)
    reporter.start(entry.manifest.total_bytes() if entry.manifest else 0, f"publish {entry.key}", unit="B")
    try:
        result = publish(store, entry.key, to, progress=reporter.advance)
    finally:
        reporter.stop()
    verb = "published" if result.new else "already published (the same cache; nothing copied)"
    out.print(f"{verb}: {result.key} → {escape(printable(str(result.directory)))} ({human_bytes(result.bytes)})",
              highlight=False, soft_wrap=True)


@cache_app.command("export")
@user_errors
def cache_export(
    key: str = typer.Argument(..., help="Cache key or unique prefix."),
    output: Path = typer.Option(..., "--output", "-o", help="The archive file to write (- for stdout)."),
    cache_dir: Optional[Path] = CACHE_DIR,
    stores: Optional[List[Path]] = STORES,
) -> None:
    """Write a cache into one file (a tar: index, manifest, shards), every shard's sha256 checked as it is read."""
    from featcache.cache.archive import export_cache
    from featcache.cli.app import err
    from featcache.util.progress import RichReporter

    store = _store(cache_dir, stores)
    entry = store.locate(key)
    to_stdout = str(output) == "-"
    reporter = RichReporter(transient=True)
    reporter.start(entry.manifest.total_bytes() if entry.manifest else 0, f"export {entry.key}", unit="B")
    try:
        result = export_cache(store, entry.key, None if to_stdout else output, progress=reporter.advance)
    finally:
        reporter.stop()
    (err if to_stdout else out).print(f"exported {result.key} → {result.path or 'stdout'} "
                                      f"({human_bytes(result.bytes)})", highlight=False)


@cache_app.command("import")
@user_errors
def cache_import(
    archive: Path = typer.Argument(..., help="An archive written by `featcache cache export` (- for stdin)."),
    to: Optional[Path] = typer.Option(None, "--to", help="The store to import into (default: the personal store)."),
    cache_dir: Optional[Path] = CACHE_DIR,
) -> None:
    """Import an archive (from anyone: every member checked) into a store, visible only once verified."""
    from featcache.cache.archive import import_archive
    from featcache.util.fileio import unwritable
    from featcache.util.progress import RichReporter

    target = to
    if target is None:
        target = _store(cache_dir).root
        try:
            target.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise unwritable(target, exc, "store") from None
    reporter = RichReporter(transient=True)
    try:
        size = archive.stat().st_size if archive.is_file() else 0
    except OSError:  # a name too long, no permission: opening it says why, in one line
        size = 0
    reporter.start(size, f"import {printable(archive.name)}", unit="B")
    try:
        result = import_archive(None if str(archive) == "-" else archive, target, progress=reporter.advance)
    finally:
        reporter.stop()
    verb = "imported" if result.new else "already there (the same cache)"
    out.print(f"{verb}: {result.key} → {result.path} ({human_bytes(result.bytes)})", highlight=False)
