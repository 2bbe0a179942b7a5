"""`featcache bench extract|distill|join|trust|store|scale|peers`: throughput next to its limit, as tables and JSON.

Each command's options are its config's fields (featcache.config.bench), generated, never listed here."""

from __future__ import annotations

from typing import Any

from featcache.cli.app import bench_app, err, out, user_errors, write_json
from featcache.cli.tables import Col, Grid
from featcache.config import (
    BenchDistillConfig,
    BenchExtractConfig,
    BenchJoinConfig,
    BenchPeersConfig,
    BenchScaleConfig,
    BenchStoreConfig,
    BenchTrustConfig,
)
from featcache.config.flags import as_command, cli_parameters, config_from_cli
from featcache.errors import ConfigError


def _load_trend(r: dict) -> str:
    return " → ".join(str(x) for x in r["load_1min"])


def bench_extract_cmd(**values: Any) -> None:
    """Extract images/s vs the bare teacher forward pass (same batch, precision, threads), in one process."""
    from featcache.bench.extract import bench_extract
    from featcache.extract import ExtractConfig
    from featcache.util.progress import RichReporter

    cfg = config_from_cli(BenchExtractConfig, values)
    results = []
    for name in cfg.teachers or ["resnet50"]:
        config = ExtractConfig(
            teacher=name, dataset=cfg.dataset, data_root=cfg.data_root, split=cfg.split,
            dataset_options=cfg.dataset_options, weights=cfg.weights, image_size=cfg.image_size,
            batch_size=cfg.batch_size, workers=cfg.workers, device=cfg.device, precision=cfg.precision,
        )
        results.append(bench_extract(config, iters=cfg.iters, rounds=cfg.rounds, min_seconds=cfg.min_seconds,
                                     reporter=RichReporter(err, transient=True)))
    _extract_table(results).print()
    write_json(cfg.json_out, results if len(results) > 1 else results[0])


def _extract_table(results: list[dict]) -> Grid:
    r0 = results[0]
    table = Grid(f"extract on {r0['dataset']} ({r0['images']:,} images), {r0['device']}, "
                 f"batch {r0['batch_size']}, {r0['precision']}, {r0['workers']} workers, "
                 f"{r0['threads']} threads; median of {r0['rounds']} rounds, load {_load_trend(r0)}",
                 [Col("teacher", give="fold")] + [Col(c, right=True) for c in (
                     "forward img/s", "decode img/s", "extract img/s", "extract / forward", "extract / decode",
                     "extract / (forward ∘ decode)")])
    for r in results:
        table.add(f"{r['teacher']}@{r['image_size']}", f"{r['forward_images_per_s']:,.0f}",
                      f"{r['decode_images_per_s']:,.0f}", f"{r['extract_images_per_s']:,.0f}", f"{r['ratio']:.2f}",
                      f"{r['ratio_to_decode']:.2f}", f"{r['ratio_to_serial']:.2f}")
    table.caption = ("forward ∘ decode: 1 / (1/forward + 1/decode), the serial limit where decoding and the teacher "
                     "share the same cores (on a CPU without workers); medians of per-round ratios")
    return table


as_command(bench_extract_cmd, cli_parameters(BenchExtractConfig))
bench_app.command("extract")(user_errors(bench_extract_cmd))


def bench_distill_cmd(**values: Any) -> None:
    """Student training images/s and peak memory: a bare PyTorch loop (the limit) vs the student alone vs with
    cached teacher rows vs with the teachers online, interleaved in one process."""
    from featcache.bench.distill import bench_distill
    from featcache.distill.trainer import DistillConfig
    from featcache.util.progress import RichReporter

    cfg = config_from_cli(BenchDistillConfig, values)
    config = DistillConfig(
        student=cfg.student, dataset=cfg.dataset, data_root=cfg.data_root, dataset_options=cfg.dataset_options,
        method=cfg.method, image_size=cfg.image_size, batch_size=cfg.batch_size, workers=cfg.workers,
        device=cfg.device, precision=cfg.precision, resident=cfg.resident, compile=cfg.compile,
    )
    names = [] if cfg.teachers == ["none"] else list(cfg.teachers or ["resnet50"])
    r = bench_distill(config, teachers=names, weights=cfg.weights, steps=cfg.steps, warmup=cfg.warmup,
                      rounds=cfg.rounds, e2e_epochs=cfg.e2e_epochs, reporter=RichReporter(err, transient=True))
    _distill_table(r, names).print()
    write_json(cfg.json_out, r)


def _distill_table(r: dict, names: list[str]) -> Grid:
    cpu = r["device"] == "cpu"
    table = Grid(f"distill: {r['student']}{' with ' + ' + '.join(names) if names else ''} "
                 f"@ {r['image_size']} px on {r['dataset']}, {r['device']}, batch {r['batch_size']}, "
                 f"{r['precision']}{', compile ' + r['compile'] if r['compile'] != 'none' else ''}; "
                 f"median of {r['rounds']} rounds, load {_load_trend(r)}",
                 [Col("setting", give="fold")] + [Col(c, right=True) for c in (
                     "images/s", "vs bare loop", "vs alone", "peak RSS" if cpu else "peak memory", "vs alone ")])
    bare_rate = r["results"].get("bare-student", {}).get("images_per_s")
    if bare_rate:
        table.caption = (f"vs bare loop: each setting / a plain PyTorch loop of its own student timed next to it in "
                         f"the same round (the student alone's: {bare_rate:,.0f} img/s); online settings / the "
                         "cached one's")
    for key, x in r["results"].items():
        if key.startswith("bare"):
            continue  # each setting's limit: its ratio is in "vs bare loop"; the bare rates are in the JSON
        mem, ratio = ((x["peak_rss_bytes"], x["rss_vs_student"]) if cpu
                      else (x["peak_memory_bytes"], x["memory_vs_student"]))
        table.add(
            _distill_label(r, key, x, names), f"{x['images_per_s']:,.0f}",
            f"{x['speed_vs_bare']:.3f}" if "speed_vs_bare" in x else "–", f"{x['speed_vs_student']:.3f}",
            f"{mem / 2**20:,.0f} MiB" if mem is not None else "n/a",
            f"{ratio:.3f}" if ratio is not None else "n/a",
        )
    _end_to_end_rows(table, r.get("end_to_end"))
    return table


def _end_to_end_rows(table: Grid, e: dict | None) -> None:
    """The real `distill` run's rows (training, and the whole call) and its per-epoch rates in the caption."""
    if not e:
        return
    n = e["epochs"]
    for what, label in (("train", f"distill, {n} epochs: training"), ("wall", f"distill, {n} epochs: wall")):
        table.add(label, f"{e[f'{what}_images_per_s']:,.0f}",
                  f"{e[f'{what}_vs_bare']:.3f}" if f"{what}_vs_bare" in e else "–",
                  f"{e[f'{what}_vs_student']:.3f}", "", "")
    per_epoch = ", ".join(f"{x:,.0f}" for x in e["epochs_images_per_s"])
    vs_bare = (" (vs bare loop " + ", ".join(f"{x:.2f}" for x in e["epochs_vs_bare"]) + ")"
               if "epochs_vs_bare" in e else "")
    table.caption = (table.caption + "\n" if table.caption else "") + (
        f"distill, {n} epochs: the real run (the student alone) end to end, once per round; training: its epochs' "
        f"steps, wall: the whole call (set-up, decode, evaluation, checkpoints); per epoch: {per_epoch} img/s{vs_bare}")


def _distill_label(r: dict, key: str, x: dict, names: list[str]) -> str:
    if key == "student":
        label = "student alone (ce)"
    else:
        kind, k = key.split("-")
        who = " + ".join(names[: int(k)])
        label = f"+ {who} {'cached' if kind == 'cached' else 'online'} ({r['methods'][key]})"
    if key != "bare" and x["resident"]:
        label += ", resident"
    return label


as_command(bench_distill_cmd, cli_parameters(BenchDistillConfig))
bench_app.command("distill")(user_errors(bench_distill_cmd))


def bench_join_cmd(**values: Any) -> None:
    """Rows/s of the feature join (in RAM, out of core), each next to its limit (np.take, a sequential read), and
    the naive peers (h5py fancy indexing, one .pt file per sample)."""
    from featcache.bench.join import bench_join
    from featcache.util.progress import RichReporter

    cfg = config_from_cli(BenchJoinConfig, values)
    r = bench_join(rows=cfg.rows, dim=cfg.dim, classes=cfg.classes, batch_size=cfg.batch_size, pt_files=cfg.pt_files,
                   limit_s=cfg.limit, directory=cfg.scratch, cold=cfg.cold, reporter=RichReporter(err, transient=True))
    _join_table(r).print()
    if r["results"]["ram"].get("load_seconds") is not None:
        out.print(f"loading the in-RAM table took {r['results']['ram']['load_seconds']:.2f} s")
    write_json(cfg.json_out, r)


def _join_table(r: dict) -> Grid:
    table = Grid(f"join: {r['rows']:,} rows of {r['dim']}-d fp16 + {r['classes']} fp32 logits "
                 f"({r['table_bytes'] / 2**30:.2f} GiB), shuffled batches of {r['batch_size']}, "
                 f"{'cold' if r['cold'] else 'warm'} page cache; load {_load_trend(r)}",
                 [Col("method", give="fold")] + [Col(c, right=True) for c in ("rows/s", "vs its limit",
                                                                               "vs h5py fancy")])
    labels = {"ram": "featcache in-RAM table", "np_take": "  limit: np.take into a reused buffer",
              "library": "featcache.api.RowJoin (your loop)",
              "disk": "featcache out-of-core table", "sequential_read": "  limit: sequential read of the shards",
              "h5py_fancy": "naive h5py fancy indexing", "pt_per_sample": "one .pt file per sample"}
    for key, label in labels.items():
        x = r["results"][key]
        table.add(label, f"{x['rows_per_s']:,.0f}", f"{x['vs_limit']:.2f}" if "vs_limit" in x else "",
                  f"{x['vs_h5py_fancy']:.2f}")
    return table


as_command(bench_join_cmd, cli_parameters(BenchJoinConfig))
bench_app.command("join")(user_errors(bench_join_cmd))


def bench_trust_cmd(**values: Any) -> None:
    """Cost of the trust checks (fingerprint, content re-check, shard hashes) as a fraction of the extract's time."""
    from featcache.bench.trust import bench_trust
    from featcache.extract import ExtractConfig
    from featcache.util.progress import RichReporter

    cfg = config_from_cli(BenchTrustConfig, values)
    if cfg.repeats < 1:
        raise ConfigError(f"--repeats must be >= 1, got {cfg.repeats}")
    config = ExtractConfig(
        teacher=cfg.teacher, dataset=cfg.dataset, data_root=cfg.data_root, split=cfg.split, weights="random",
        dataset_options=cfg.dataset_options, image_size=cfg.image_size, batch_size=cfg.batch_size,
        workers=cfg.workers, device=cfg.device,
    )
    r = bench_trust(config, repeats=cfg.repeats, reporter=RichReporter(err, transient=True))
    _trust_table(r).print()
    write_json(cfg.json_out, r)


def _trust_table(r: dict) -> Grid:
    table = Grid(f"trust checks on {r['dataset']} ({r['images']:,} images): extract of {r['teacher']}@"
                 f"{r['image_size']} took {r['extract_seconds']:.1f} s on {r['device']}; median of "
                 f"{r['repeats']}, load {r['load_1min']}",
                 [Col("check", give="fold"), Col("when", give="wrap"), Col("seconds", right=True),
                  Col("of the extract", right=True)])
    when = {"fingerprint": "every extract/distill (stat of every file)",
            "content_sample": f"every distill and reuse ({r['content_sample_rows']} files)",
            "content_full": "distill --content-check full",
            "shard_sha256": "first read of each shard per process"}
    for key, x in r["results"].items():
        table.add(key, when[key], f"{x['seconds']:.3f}", f"{x['fraction_of_extract']:.2%}")
    return table


as_command(bench_trust_cmd, cli_parameters(BenchTrustConfig))
bench_app.command("trust")(user_errors(bench_trust_cmd))


def bench_store_cmd(**values: Any) -> None:
    """`cache export` / `cache import` MB/s next to shutil.copyfile of the same files (bare, and + fsync), in one
    process, warm page cache; and `cache ls` over many keys."""
    from featcache.bench.store import bench_store
    from featcache.util.progress import RichReporter

    cfg = config_from_cli(BenchStoreConfig, values)
    r = bench_store(size_mib=cfg.size_mib, repeats=cfg.repeats, keys=cfg.keys, directory=cfg.scratch,
                    reporter=RichReporter(err, transient=True), pull=cfg.pull, distill_images=cfg.distill_images)
    _store_table(r).print()
    if r["pull"]:
        _pull_table(r["pull"]).print()
    if r["distill_pull"]:
        _distill_pull_table(r["distill_pull"]).print()
    ls = r["ls"]
    out.print(f"cache ls over {ls['keys']:,} caches: {ls['cli_seconds']:.2f} s for the command in a fresh process "
              f"(listing the store: {ls['entries_seconds']:.2f} s); cache gc --dry-run over them: "
              f"{ls['gc_dry_run_seconds']:.2f} s", highlight=False)
    write_json(cfg.json_out, r)


def _store_table(r: dict) -> Grid:
    table = Grid(f"store: a {r['cache_bytes'] / 2**20:,.0f} MiB cache ({r['shards']} shards), "
                 f"{r['cpus']} CPUs, warm page cache; median of {r['repeats']} rounds, load {_load_trend(r)}",
                 [Col("operation", give="fold")] + [Col(c, right=True) for c in ("MB/s", "seconds", "vs copyfile",
                                                                                  "vs copyfile + fsync")])
    labels = {"copy": "limit: shutil.copyfile of its files", "copy_fsync": "  the same + fsync of every copy",
              "export": "featcache cache export (sha256 checked)", "import": "featcache cache import (all checks)"}
    for key, label in labels.items():
        x = r["results"][key]
        table.add(label, f"{x['mb_per_s']:,.0f}", f"{x['seconds']:.3f}",
                  f"{x['vs_copy']:.2f}" if "vs_copy" in x else "", f"{x['vs_copy_fsync']:.2f}" if "vs_copy" in x
                  else "")
    return table


def _pull_table(p: dict) -> Grid:
    table = Grid(f"pull: {p['bytes'] / 2**20:,.0f} MiB in {p['files']} files from {p['server']}; median of "
                 f"{len(p['plain']['all_seconds'])} rounds, load {', '.join(map(str, p['load_1min']))}",
                 [Col("operation", give="fold")] + [Col(c, right=True) for c in ("MB/s", "seconds", "vs plain",
                                                                                  "vs + fsync")])
    table.add("limit: urllib download of its files", f"{p['plain']['mb_per_s']:,.0f}", f"{p['plain']['seconds']:.3f}",
              "", "")
    table.add("  the same + fsync of every file", f"{p['plain_fsync']['mb_per_s']:,.0f}",
              f"{p['plain_fsync']['seconds']:.3f}", "", "")
    at_once = f", {p['connections']} files at once" if p.get("connections") else ""
    table.add(f"featcache cache pull{at_once} (sha256 checked, fsync, verified install)",
              f"{p['pull']['mb_per_s']:,.0f}", f"{p['pull']['seconds']:.3f}", f"{p['pull_vs_plain']:.2f}",
              f"{p['pull_vs_plain_fsync']:.2f}")
    return table


def _distill_pull_table(d: dict) -> Grid:
    table = Grid(f"a 1-epoch distill from an HTTP mirror ({d['images']:,} images, a {d['cache_bytes'] / 2**20:,.1f} "
                 f"MiB cache), each command in a fresh process; median of {len(d['on_use']['all_seconds'])} rounds, "
                 f"load {', '.join(map(str, d['load_1min']))}", [Col("arm", give="fold"), Col("seconds", right=True)])
    table.add("distill --store URL (pulled on use, empty personal store)", f"{d['on_use']['seconds']:.2f}")
    table.add("cache pull, then distill from the local copy", f"{d['pull_first']['seconds']:.2f}")
    table.add("  of which cache pull", f"{d['pull']['seconds']:.2f}")
    return table


as_command(bench_store_cmd, cli_parameters(BenchStoreConfig))
bench_app.command("store")(user_errors(bench_store_cmd))


def bench_scale_cmd(**values: Any) -> None:
    """An ImageNet-sized synthetic cache (real format, no teacher): its write and resume after kill -9, the
    out-of-core join and the in-RAM load next to a sequential read, verify, ls, the re-extract answer and the store
    commands, each next to its limit in one process."""
    from featcache.bench.scale_life import STEPS, bench_scale
    from featcache.bench.synth import SynthSpec, remove_cache
    from featcache.util.progress import RichReporter

    cfg = config_from_cli(BenchScaleConfig, values)
    steps = tuple(cfg.only or STEPS)
    bad = [s for s in steps if s not in STEPS]
    if bad or cfg.repeats < 1 or not 0 <= cfg.kill_at < 1:
        raise ConfigError(f"--only takes {', '.join(STEPS)}; --repeats >= 1; 0 <= --kill-at < 1 (got {bad}, "
                          f"{cfg.repeats}, {cfg.kill_at})")
    spec = SynthSpec(rows=cfg.rows, dim=cfg.dim, classes=cfg.classes, views=cfg.views, dtype=cfg.dtype, seed=cfg.seed)
    try:
        r = bench_scale(cfg.store, spec, steps=steps, batch_sizes=tuple(cfg.batch_size or (128, 256)),
                        repeats=cfg.repeats, temps=("warm", "cold") if cfg.cold else ("warm",),
                        kill_at=cfg.kill_at if "write" in steps else 0, reporter=RichReporter(err, transient=True))
    finally:
        if not cfg.keep and steps != ("write",):
            remove_cache(cfg.store, spec.key)
    for line in scale_lines(r):
        out.print(line, highlight=False)
    write_json(cfg.json_out, r)


as_command(bench_scale_cmd, cli_parameters(BenchScaleConfig))
bench_app.command("scale")(user_errors(bench_scale_cmd))


def scale_lines(r: dict) -> list[str]:
    """One line per figure of `bench scale` (medians of the rounds; every round is in the JSON)."""
    from featcache.bench.scale import median

    gib = (r.get("cache_bytes") or 0) / 2**30
    lines = [f"scale: {r['key']} ({gib:.2f} GiB), {r['spec']['rows']:,} rows x {r['spec']['dim']} {r['spec']['dtype']} "
             f"x {r['spec']['views']} view(s); load {r['load']}"]
    if "write" in r:
        w = r["write"]
        lines.append(f"write: {w['bytes'] / 1e6:,.0f} MB in {w['seconds']:.1f} s"
                     + (f" ({w['bytes_per_s'] / 1e6:,.0f} MB/s)" if w["bytes_per_s"] else " (already there)"))
    if "resume" in r and r["resume"].get("finished_before_kill"):
        lines.append("resume after kill -9: not measured, the writer finished before the kill (a cache too small)")
    elif "resume" in r:
        x = r["resume"]
        lines.append(f"resume after kill -9: {x['recorded_at_kill']}/{x['total_shards']} shards recorded at the kill "
                     f"({x['files_at_kill']} files, {x['tmp_at_kill']} unfinished); the resumed write kept "
                     f"{x['kept']}, wrote {x['rewritten']} in {x['resume_seconds']:.1f} s; verify "
                     f"{'ok' if x['verify_ok'] else 'FAILED'} ({x['verify_seconds']:.1f} s)")
    rounds = r.get("join", {}).get("rounds", [])
    for bs in sorted({g["batch_size"] for g in rounds}):
        for temp in r["temps"]:
            g = [x for x in rounds if x["batch_size"] == bs and x["temp"] == temp]
            lines.append(f"join out of core, batch {bs}, {temp}: {median([x['run']['rows_per_s'] for x in g]):,.0f} "
                         f"rows/s, {median([x['ratio'] for x in g]):.2f} of a sequential read "
                         f"({median([x['limit_rows_per_s'] for x in g]):,.0f} rows/s); peak RSS +"
                         f"{max(x['run']['rss_above_baseline'] for x in g) / 2**20:,.0f} MiB")
    for temp in r["temps"]:
        g = r.get("join", {}).get(f"first_epoch_{temp}")
        if g:
            lines.append(f"join, first epoch of a process ({temp}; shards hashed on first read): "
                         f"{g['run']['rows_per_s']:,.0f} rows/s, {g['ratio']:.2f} of a sequential read + sha256")
    for d in r.get("auto", []):
        what = d.get("message") or d["decision"]
        lines.append(f"--cache-mode auto{' with views' if d['views'] else ''}: {what} (tables "
                     f"{d['table_bytes'] / 2**30:.2f} GiB, budget {d['budget_bytes'] / 2**30:.2f} GiB)")
        for temp in r["temps"]:
            g = [x for x in d.get("load", {}).get("rounds", []) if x["temp"] == temp]
            if g:
                lines.append(f"  in-RAM load, {temp}: {median([x['run']['seconds'] for x in g]):.1f} s, "
                             f"{median([x['ratio'] for x in g]):.2f} of a sequential read + sha256; peak RSS +"
                             f"{max(x['run']['rss_above_baseline'] for x in g) / 2**30:.2f} GiB")
    return lines + life_lines(r)


def life_lines(r: dict) -> list[str]:
    from featcache.bench.scale import median

    lines = []
    if "ram_join" in r:
        g = r["ram_join"]["rounds"]
        lines.append(f"join in RAM, batch {r['ram_join']['batch_size']}: {median([x['rows_per_s'] for x in g]):,.0f} "
                     f"rows/s, {median([x['ratio'] for x in g]):.2f} of np.take")
    for temp in r["temps"]:
        g = [x for x in r.get("verify", []) if x["temp"] == temp]
        if g:
            lines.append(f"cache verify, {temp}: {median([x['verify_seconds'] for x in g]):.1f} s, "
                         f"{median([x['ratio'] for x in g]):.2f} of a sequential read + sha256")
    if "commands" in r:
        c = r["commands"]
        lines.append(f"cache ls: {median(c['ls_seconds']):.2f} s (fresh process; listing "
                     f"{median(c['entries_seconds']):.3f} s); cache gc --dry-run: "
                     f"{median(c['gc_dry_run_seconds']):.2f} s; featcache --help {c['help_seconds']:.2f} s")
    if "reuse" in r:
        g = r["reuse"]
        lines.append(f"re-extract answer (remembered request): {median([x['recall_seconds'] for x in g]):.2f} s, "
                     f"{median([x['ratio'] for x in g]):.2f} of a sequential read + sha256; locate "
                     f"{median([x['locate_seconds'] for x in g]):.3f} s + intact "
                     f"{median([x['intact_seconds'] for x in g]):.2f} s")
    if "store" in r:
        g = r["store"]
        for name in ("publish", "export", "import"):
            lines.append(f"cache {name}: {median([x[name + '_seconds'] for x in g]):.1f} s, "
                         f"{median([x[name + '_vs_copy_fsync'] for x in g]):.2f} of copyfile + fsync, "
                         f"{median([x[name + '_vs_copy'] for x in g]):.2f} of a bare copyfile")
    return lines


def bench_peers_cmd(**values: Any) -> None:
    """featcache next to torchdistill 1.1.4 (the peers extra of featcache's install) on one task: KD of a resnet18
    teacher into mobilenet_v3_small, each arm in its own process, interleaved; wall, images/s, peak RSS, cache on
    disk and accuracy under one common evaluation; then whether each tool's cache describes the augmented view the
    student sees. Without torchdistill 1.1.4: one line, exit status 2 (docs/comparison.md)."""
    from featcache.bench.peers import bench_peers
    from featcache.util.progress import RichReporter

    cfg = config_from_cli(BenchPeersConfig, values)
    if cfg.data_root is None:
        raise ConfigError("bench peers needs --data-root DIR: a folder holding train/ and test/ class folders of "
                          "images (CIFAR-10 as JPEGs: cifar10-jpg/)", flag="--data-root")
    r = bench_peers(cfg.data_root, images=cfg.images, test_images=cfg.test_images, epochs=cfg.epochs,
                    repeats=cfg.repeats, students=cfg.students, threads=cfg.threads,
                    teacher_checkpoint=cfg.teacher_checkpoint, view_samples=cfg.view_samples, views=cfg.views,
                    scratch=cfg.scratch, keep=cfg.keep, reporter=RichReporter(err, transient=True))
    peers_table(r).print()
    for line in peers_lines(r):
        out.print(line, highlight=False)
    write_json(cfg.json_out, r)


def peers_table(r: dict) -> Grid:
    """The measured table; the arm's label names each row and is never dropped (cli/tables.py's Grid)."""
    from featcache.bench.peers.report import table_rows

    rows = table_rows(r["summary"], r["students"])
    grid = Grid(title=f"peers: {r['images']:,} images @ {r['image_size']} px, {r['epochs']} epochs, batch 128, "
                      f"{r['threads']} thread(s) per process, {r['cpus']} CPUs; median of {r['repeats']} "
                      f"interleaved repeats, load {_load_trend(r)}; teacher {r['teacher']}",
                cols=[Col(name, right=i > 0, give="wrap") for i, name in enumerate(rows[0])],
                caption="accuracy: every run's final student, batch-norm statistics re-estimated on the same 1,024 "
                        "training images, top-1 on the same test images (range over the runs); cached arms: the "
                        "total is the fill (or extract) + the other students' warm runs")
    for row in rows[1:]:
        grid.add(*row)
    return grid


def peers_lines(r: dict) -> list[str]:
    from featcache.bench.peers.report import goal_lines, view_lines

    return goal_lines(r["summary"]) + view_lines(r["views"]) + (
        [f"runs, logs and caches kept in {r['scratch']}"] if r.get("scratch") else [])


as_command(bench_peers_cmd, cli_parameters(BenchPeersConfig))
bench_app.command("peers")(user_errors(bench_peers_cmd))
