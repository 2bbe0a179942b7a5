"""Recipes: parsing and validation, the plan, skipping what is done, resuming, the report."""

import contextlib
import json
import logging
import os
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from featcache.cli import app
from featcache.errors import ConfigError, FeatcacheError
from featcache.pipeline import load_pipeline, parse_pipeline, plan, run_pipeline
from featcache.runs.report import build_rows, load_record, markdown_table, plot_curves
from helpers import one_line_error, shows_whole, within

ROOT = Path(__file__).resolve().parents[1]

TINY = {
    "pipeline": {"name": "tiny"},
    "dataset": {"name": "synthetic", "options": {"num_train": 64, "num_test": 32, "num_classes": 4}},
    "teachers": [
        {"teacher": "convnet", "train": {"epochs": 1, "init": "random", "batch_size": 32},
         "extract": {"image_size": 32}},
        {"name": "r18", "teacher": "resnet18", "weights": "random", "extract": {"image_size": 32, "noise": 8}},
    ],
    "distill": [
        {"students": ["lenet5"], "methods": ["ce", "kd"], "teachers": ["convnet"], "seeds": [0, 1],
         "options": {"epochs": 2, "batch_size": 32}},
        {"students": ["lenet5"], "methods": ["ts"], "teachers": ["r18"],
         "options": {"epochs": 1, "batch_size": 32, "noise_per_batch": 4}},
    ],
    "report": {"title": "tiny", "plot": "curves.png"},
}


def tiny(tmp_path, **changes):
    data = json.loads(json.dumps(TINY))
    data.update(changes)
    return parse_pipeline(data, runs_dir=tmp_path / "runs")


@pytest.mark.slow
def test_recipe_runs_then_skips_everything_it_has_done(tmp_path, monkeypatch):
    monkeypatch.setenv("FEATCACHE_HOME", str(tmp_path / "home"))
    p = tiny(tmp_path)
    first = plan(p, workers=0)
    assert [(s.kind, s.state) for s in first] == [
        ("teacher", "run"), ("extract", "waits"), ("extract", "run"),
        ("distill", "run"), ("distill", "run"), ("distill", "run"), ("distill", "run"), ("distill", "run"),
        ("report", "run"),
    ]
    logs = []
    result = run_pipeline(p, workers=0, log=logs.append)
    assert (tmp_path / "runs" / "teachers" / "convnet" / "teacher.pt").is_file()
    assert len(result["runs"]) == 5 and result["markdown"].is_file() and result["plot"].is_file()
    md = result["markdown"].read_text()
    assert "| lenet5 | kd | convnet | synthetic | 2 | 2 |" in md and "| lenet5 | ce | — |" in md
    # ce runs do not depend on teachers, so they are named "alone".
    assert (tmp_path / "runs" / "lenet5-ce-alone-s1" / "summary.json").is_file()
    # Everything is done now: a second run only reports.
    second = plan(p, workers=0)
    assert all(s.state == "done" for s in second if s.kind != "report")
    logs.clear()
    run_pipeline(p, workers=0, log=logs.append)
    assert (all(" reused" in m for m in logs if m.startswith("[extract]"))
            and not any(m.startswith("[distill]") for m in logs))


@pytest.mark.slow
def test_interrupted_runs_resume(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("FEATCACHE_HOME", str(tmp_path / "home"))
    data = json.loads(json.dumps(TINY))
    data["teachers"] = data["teachers"][1:]
    data["distill"] = [{"students": ["lenet5"], "methods": ["ce"], "options": {"epochs": 2, "batch_size": 32}}]
    p = parse_pipeline(data, runs_dir=tmp_path / "runs")
    run_pipeline(p, workers=0, log=lambda m: None)
    run_dir = tmp_path / "runs" / "lenet5-ce-alone-s0"
    (run_dir / "summary.json").unlink()  # as if it had been killed after its last checkpoint
    assert [s.state for s in plan(p, workers=0) if s.kind == "distill"] == ["resume"]
    with caplog.at_level(logging.INFO, logger="featcache"):
        run_pipeline(p, workers=0)  # without log=, a library call's stage lines go to logging
    logs = [r.getMessage() for r in caplog.records if r.name == "featcache.pipeline.run"]
    assert any("resuming" in m for m in logs) and (run_dir / "summary.json").is_file()


@pytest.mark.parametrize(
    "change,needle",
    [
        ({"dataset": {"name": "imagenet"}}, "[dataset] name 'imagenet'"),
        ({"teachers": [{"teacher": "resnet1000"}]}, "unknown teacher 'resnet1000'"),
        ({"distill": [{"students": ["lenet6"], "methods": ["ce"]}]}, "unknown student 'lenet6'"),
        ({"distill": [{"students": ["lenet5"], "methods": ["magic"]}]}, "unknown method 'magic'"),
        ({"distill": [{"students": ["lenet5"], "methods": ["ts"], "teachers": ["nobody"]}]}, "teacher 'nobody'"),
        ({"distill": [{"students": ["lenet5"], "methods": ["ce"], "options": {"epoch": 3}}]}, "unknown field 'epoch'"),
        ({"extras": 1}, "unknown field 'extras'"),
        ({"teachers": [{"teacher": "resnet18", "weights": "random", "train": {"epochs": 1}}]}, "not both"),
    ],
)
def test_recipe_errors_name_the_field(tmp_path, change, needle):
    with pytest.raises(ConfigError) as err:
        tiny(tmp_path, **change)
    assert needle in str(err.value)


def test_shipped_recipes_parse():
    recipes = sorted((ROOT / "pipelines").glob("*.toml"))
    assert len(recipes) >= 8
    for path in recipes:
        p = load_pipeline(path, data_root=Path("/data"))
        assert (p.distill or p.amalgamate) and p.teachers, path
        assert p.report.get("title"), path  # every shipped recipe titles its report
    listed = (ROOT / "pipelines" / "README.md").read_text()
    assert [r.name for r in recipes if f"`{r.name}`" not in listed] == []  # the recipes' table names every one


def _small_recipe(tmp_path, methods: str):
    """A recipe of one random resnet18 teacher and lenet5 students on a tiny synthetic set."""
    recipe = tmp_path / "r.toml"
    recipe.write_text(
        '[pipeline]\nname = "r"\n[dataset]\nname = "synthetic"\noptions = {num_train = 32, num_test = 16}\n'
        '[[teachers]]\nteacher = "resnet18"\nweights = "random"\nextract = {image_size = 32}\n'
        f'[[distill]]\nstudents = ["lenet5"]\nmethods = {methods}\nteachers = ["resnet18"]\nseeds = [0, 1]\n'
    )
    return recipe


def test_cli_dry_run_prints_the_plan_only(tmp_path, monkeypatch):
    monkeypatch.setenv("FEATCACHE_HOME", str(tmp_path / "home"))
    recipe = _small_recipe(tmp_path, '["ce", "ts"]')
    r = CliRunner().invoke(app, ["run", str(recipe), "--dry-run", "--runs-dir", str(tmp_path / "runs")])
    assert r.exit_code == 0, r.output
    assert "plan for r (6 stages" in r.output and "lenet5-ts-resnet18-s1" in r.output
    assert not (tmp_path / "runs").exists() and not (tmp_path / "home").exists()
    bad = CliRunner().invoke(app, ["run", str(tmp_path / "missing.toml")])
    assert bad.exit_code == 2 and "not found" in bad.output
    recipe.write_text("[dataset\n")
    bad = CliRunner().invoke(app, ["run", str(recipe)])
    assert bad.exit_code == 2 and "invalid TOML" in bad.output


@pytest.mark.parametrize("columns", [60, 80, 200])
def test_the_plan_never_drops_a_stage_name_at_any_width(tmp_path, monkeypatch, columns):
    monkeypatch.setenv("FEATCACHE_HOME", str(tmp_path / "home"))
    recipe = _small_recipe(tmp_path, '["ts-translator"]')
    r = CliRunner().invoke(app, ["run", str(recipe), "--dry-run", "--runs-dir", str(tmp_path / "runs")],
                           env={"COLUMNS": str(columns)})
    assert r.exit_code == 0, r.output
    names = ["resnet18", "lenet5-ts-translator-resnet18-s0", "lenet5-ts-translator-resnet18-s1", "r"]
    assert shows_whole(r.output, names), r.output
    assert r.output.count("distill") == 2, r.output
    assert "".join(r.output.split()).count("resnet18-synthetic-train-") == 1, r.output  # the cache key, maybe folded
    assert all(len(ln) <= columns for ln in r.output.splitlines() if ln not in names), r.output


def _fake_run(root: Path, name: str, accs, *, method="ce", seed=0, teachers=(), finished=True, student="lenet5",
              head=None, key="k"):
    d = root / name
    d.mkdir(parents=True)
    cfg = {"config": {"student": student, "dataset": "synthetic", "seed": seed, "method": method},
           "method": method, "teachers": [{"key": f"{t}-{key}", "teacher": t} for t in teachers]}
    if head:
        cfg.update(head_classes=head, kind="teacher", dataset={"test": {"params": {"class_subset": head}}})
    (d / "config.json").write_text(json.dumps(cfg))
    (d / "metrics.jsonl").write_text("".join(json.dumps({"epoch": i + 1, "test_acc": a}) + "\n"
                                             for i, a in enumerate(accs)))
    if finished:
        (d / "summary.json").write_text(json.dumps({"epochs": len(accs)}))
    return d


def test_report_tells_two_caches_of_one_teacher_apart(tmp_path):
    """float16 vs int8 rows of one teacher are two arms: the table and the legend must not show them alike."""
    _fake_run(tmp_path, "f", [0.5], method="ts", teachers=["resnet18"], key="cifar10-train-0c31dd2d4da4")
    _fake_run(tmp_path, "q", [0.4], method="ts", teachers=["resnet18"], key="cifar10-train-50355f6b8f70")
    rows = build_rows([load_record(tmp_path / n) for n in ("f", "q")])
    assert [r.cells()["teachers"] for r in rows] == ["resnet18@0c31dd", "resnet18@50355f"]
    one = build_rows([load_record(tmp_path / "f")])
    assert one[0].cells()["teachers"] == "resnet18"  # one cache per teacher: the name alone


def test_report_groups_seeds_and_writes_markdown_and_png(tmp_path):
    _fake_run(tmp_path, "a0", [0.1, 0.5, 0.4], seed=0)
    _fake_run(tmp_path, "a1", [0.2, 0.3, 0.7], seed=1)
    _fake_run(tmp_path, "b0", [0.6, 0.8], method="ts", teachers=["resnet50"])
    records = [load_record(tmp_path / n) for n in ("a0", "a1", "b0")]
    rows = build_rows(records)
    assert len(rows) == 2
    cells = rows[0].cells()
    assert cells["seeds"] == "2" and cells["best acc %"] == "60.00 ± 14.14" and cells["final acc %"] == "55.00 ± 21.21"
    assert rows[1].cells()["teachers"] == "resnet50" and rows[1].cells()["best acc %"] == "80.00"
    md = markdown_table(rows)
    assert md.count("\n") == 4 and "| lenet5 | ts | resnet50 |" in md
    png = plot_curves(records, tmp_path / "out" / "c.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    r = CliRunner().invoke(app, ["report", str(tmp_path), "--markdown", str(tmp_path / "r.md"), "--per-seed"])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "r.md").read_text().count("| lenet5 |") == 3


def test_report_table_keeps_names_whole_on_a_narrow_terminal(tmp_path, monkeypatch):
    from featcache import cli
    from featcache.cli.tables import print_rows

    for seed, acc in enumerate((0.5917, 0.3200, 0.6975)):
        _fake_run(tmp_path, f"s{seed}", [0.25, acc], seed=seed, method="ts-translator",
                  teachers=["inceptionv3", "resnet50"], student="mobilenetv3_small")
    monkeypatch.setattr(cli.out, "_width", 80)  # restored after the test (setting .width would pin it for the rest)
    with cli.out.capture() as cap:
        print_rows(build_rows([load_record(tmp_path / f"s{i}") for i in range(3)]), "narrow")
    text = cap.get()
    assert "…" not in text and "mobilenetv3_small" in text and "ts-translator" in text
    assert "inceptionv3+resnet50" in text or "inceptionv3, resnet50" in text
    assert max(len(line) for line in text.splitlines()) <= 80


@pytest.mark.parametrize("columns", [60, 80, 200])
def test_report_table_never_drops_a_model_or_a_column_at_any_width(tmp_path, columns):
    """Arms whose student names differ only at their end: each name whole (folded within its column, or a block's
    heading), every accuracy of every row there, one row per arm."""
    students = ["timm:mobilenetv3_large_100.miil_in21k_ft_in1k", "timm:mobilenetv3_large_100.ra_in1k"]
    for k, student in enumerate(students):
        _fake_run(tmp_path, f"r{k}", [0.25, 0.4 + k / 10], method="ts-translator", student=student,
                  teachers=["inceptionv3", "resnet50"])
    r = CliRunner().invoke(app, ["report", str(tmp_path)], env={"COLUMNS": str(columns)})
    assert r.exit_code == 0, r.output
    assert shows_whole(r.output, students), r.output
    assert r.output.count("50.00") == 2 and r.output.count("40.00") == 2, r.output  # best and final of each arm
    assert r.output.count("ts-translator") == 2 and r.output.count("synthetic") == 2, r.output
    assert all(len(ln) <= columns for ln in r.output.splitlines() if ln not in students), r.output


def _record(run_dir: Path, **changes) -> None:
    """Edit a fake run's config.json: top-level fields, and ``config`` fields given as config=dict(...)."""
    info = json.loads((run_dir / "config.json").read_text())
    info["config"].update(changes.pop("config", {}))
    info.update(changes)
    (run_dir / "config.json").write_text(json.dumps(info))


def _identity(fingerprint: str) -> dict:
    return {"name": "synthetic", "split": "train", "num_samples": 64, "ids_sha256": "a" * 64,
            "fingerprint": fingerprint}


def test_report_keeps_runs_on_different_data_apart_and_says_so(tmp_path):
    """Two seeds on one dataset and one on another (config.json records other train fingerprints) are two rows, each
    marked with its fingerprint, and a line under the table says what was kept apart; a run whose record predates
    the fingerprint joins the row it otherwise agrees with."""
    for seed, fingerprint in ((0, "1" * 64), (1, "2" * 64), (2, "1" * 64), (3, None)):
        d = _fake_run(tmp_path, f"s{seed}", [0.5 + seed / 10], seed=seed)
        if fingerprint is not None:
            _record(d, dataset={"train": _identity(fingerprint)})
        else:
            _record(d, dataset={"train": {k: v for k, v in _identity("x").items() if k != "fingerprint"}})
    rows = build_rows([load_record(tmp_path / f"s{i}") for i in range(4)])
    assert [r.cells()["seeds"] for r in rows] == ["3", "1"]
    assert [r.cells()["method"] for r in rows] == ["ce [train fingerprint 111111]", "ce [train fingerprint 222222]"]
    md = markdown_table(rows)
    assert "\n\n- kept apart: 4 runs of lenet5 ce on synthetic differ in train fingerprint: 2 rows" in md
    r = CliRunner().invoke(app, ["report", str(tmp_path)])
    assert r.exit_code == 0, r.output
    assert "kept apart: 4 runs of lenet5 ce" in r.output
    assert re.search(r"ce \(1\).*ce \(2\).*\(1\) train fingerprint 111111.*\(2\) train fingerprint 222222", r.output,
                     re.S), r.output  # the terminal's table numbers the rows and says their values below it
    assert re.search(r"best( acc %)?\s+final", r.output), r.output  # the accuracy columns stay in view
    one = build_rows([load_record(tmp_path / "s0"), load_record(tmp_path / "s2")])
    assert len(one) == 1 and one[0].cells()["method"] == "ce" and "kept apart" not in markdown_table(one)


def test_report_keeps_runs_with_other_labels_or_flags_apart(tmp_path):
    """Runs that differ in a recorded flag (no tag) or read other labelled samples (same count) are never one mean;
    runs that chose the same samples by other specs, or whose record predates a flag set to its default, are."""
    subset = {"labeled": 20, "total": 60, "ids_sha256": "c" * 64}
    for name, seed, config, labels in (("a", 0, {"labels": "5/class"}, subset),
                                       ("b", 1, {"labels": "ids:/x/first.txt"}, subset),
                                       ("c", 2, {"labels": "ids:/x/other.txt"}, {**subset, "ids_sha256": "d" * 64}),
                                       ("d", 3, {"labels": "5/class", "lr": 0.5}, subset)):
        _record(_fake_run(tmp_path, name, [0.5], seed=seed), config=config, labels=labels)
    rows = build_rows([load_record(tmp_path / n) for n in "abcd"])
    assert [r.cells()["seeds"] for r in rows] == ["2", "1", "1"]
    methods = [r.cells()["method"] for r in rows]
    assert len(set(methods)) == 3 and "lr 0.5" in methods[2] and "ids dddddd" in methods[1], methods
    assert "differ in labels, lr" in markdown_table(rows)
    # A run recorded before --labels and --labeled-share existed read every label: the same arm as one saying so.
    _fake_run(tmp_path, "old", [0.4], seed=0)
    _record(_fake_run(tmp_path, "new", [0.6], seed=1), config={"labels": "all", "labeled_share": None},
            labels={"labeled": 60, "total": 60, "ids_sha256": "e" * 64})
    assert [r.cells()["seeds"] for r in build_rows([load_record(tmp_path / n) for n in ("old", "new")])] == ["2"]


def test_report_table_shows_labels_from_disk_as_text_not_markup(tmp_path):
    _record(_fake_run(tmp_path, "a", [0.5]), config={"tag": "[/x]"})
    _record(_fake_run(tmp_path, "b", [0.5]), config={"tag": "[bold]"})
    r = CliRunner().invoke(app, ["report", str(tmp_path)])
    assert r.exit_code == 0, r.output
    assert "[/x]" in r.output and "[bold]" in r.output


def test_report_errors(tmp_path, monkeypatch):
    r = CliRunner().invoke(app, ["report", str(tmp_path / "nothing")])
    assert r.exit_code == 2 and "no such run directory" in r.output
    (tmp_path / "empty").mkdir()
    r = CliRunner().invoke(app, ["report", str(tmp_path / "empty")])
    assert r.exit_code == 2 and "neither a run directory" in r.output
    d = _fake_run(tmp_path, "x", [0.5])
    import builtins

    real_import = builtins.__import__

    def no_matplotlib(name, *a, **k):
        if name.startswith("matplotlib"):
            raise ImportError(name)
        return real_import(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    r = CliRunner().invoke(app, ["report", str(d), "--plot", str(tmp_path / "p.png")])
    assert r.exit_code == 2 and 'pip install -e ".[plot]"' in r.output


# -- the report's files: written inside the runs folder, through a new temporary file, never through a link -------
@pytest.mark.parametrize("key", ["markdown", "plot"])
@pytest.mark.parametrize("value", ["/tmp/elsewhere.md", "../x.md", "a/../../x.md", "~/x.md", "$HOME/x.md", "", ".",
                                   "sub/", "a\\..\\x.md"])
def test_a_recipes_report_files_must_stay_inside_its_runs_folder(tmp_path, key, value):
    with pytest.raises(ConfigError) as err:
        tiny(tmp_path, report={"title": "t", key: value})
    message = str(err.value)
    assert f"[report] {key}" in message and "inside its runs folder" in message and "\n" not in message
    assert "featcache report RUNS --markdown FILE" in message


def test_a_recipes_report_files_may_name_a_subfolder_of_its_runs(tmp_path):
    p = tiny(tmp_path, report={"title": "t", "markdown": "tables/report.md", "plot": "./figures/curves.png"})
    assert p.report["markdown"] == "tables/report.md"


def _reported(tmp_path, monkeypatch, **report):
    """A recipe whose report reads two hand-made runs (no training): ``write_report``'s inputs without the stages."""
    from featcache.pipeline import run as run_module

    p = tiny(tmp_path, report={"title": "t", **report})
    runs = [_fake_run(tmp_path / "made", n, [0.5, 0.6], seed=i) for i, n in enumerate(("a", "b"))]
    monkeypatch.setattr(run_module, "distill_runs", lambda p: runs)
    return p


@pytest.mark.parametrize("planted", ["symlink", "fifo", "linked folder"])
def test_a_recipes_report_is_never_written_through_what_is_planted_in_the_runs_folder(tmp_path, monkeypatch, planted):
    from featcache.pipeline.run import write_report

    p = _reported(tmp_path, monkeypatch, markdown="out/report.md")
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "report.md").write_text("someone else's file\n")
    (tmp_path / "runs").mkdir()
    if planted == "linked folder":
        (tmp_path / "runs" / "out").symlink_to(victim)
    else:
        (tmp_path / "runs" / "out").mkdir()
        target = tmp_path / "runs" / "out" / "report.md"
        target.symlink_to(victim / "report.md") if planted == "symlink" else os.mkfifo(target)
    with within(30), pytest.raises(FeatcacheError) as err:
        write_report(p)
    assert "\n" not in str(err.value) and ("not a regular file" in str(err.value) or "leads out" in str(err.value))
    assert [f.name for f in victim.iterdir()] == ["report.md"]
    assert (victim / "report.md").read_text() == "someone else's file\n"


def test_a_recipes_report_replaces_its_own_files_whole(tmp_path, monkeypatch):
    from featcache.pipeline.run import write_report

    p = _reported(tmp_path, monkeypatch, markdown="report.md", plot="figures/curves.png")
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "report.md").write_text("an older report\n")
    out = write_report(p)
    assert out["markdown"].read_text().startswith("# t\n") and out["plot"].read_bytes()[:4] == b"\x89PNG"
    assert sorted(f.name for f in (tmp_path / "runs").rglob("*")) == ["curves.png", "figures", "report.md"]


@pytest.mark.parametrize("flag", ["--markdown", "--plot"])
@pytest.mark.parametrize("planted", ["symlink", "fifo", "directory"])
def test_the_report_command_refuses_an_output_that_is_not_a_regular_file(tmp_path, flag, planted):
    _fake_run(tmp_path / "runs", "a", [0.5])
    victim = tmp_path / "victim.txt"
    victim.write_text("someone else's file\n")
    target = tmp_path / "out"
    plant = {"symlink": lambda: target.symlink_to(victim), "fifo": lambda: os.mkfifo(target), "directory": target.mkdir}
    plant[planted]()
    with within(30):  # opening a FIFO for writing would wait for a reader forever
        r = CliRunner().invoke(app, ["report", str(tmp_path / "runs"), flag, str(target)])
    one_line_error(r, f"{flag} {target}", "not a regular file")
    assert victim.read_text() == "someone else's file\n"


def test_the_report_command_reading_a_name_too_long_for_a_file_system_is_one_line(tmp_path):
    r = CliRunner().invoke(app, ["report", str(tmp_path / ("x" * 300))])
    one_line_error(r, "cannot be read", "File name too long")


def test_the_report_command_writes_wherever_its_flags_say(tmp_path):
    _fake_run(tmp_path / "runs", "a", [0.5])
    (tmp_path / "elsewhere").mkdir()
    md, png = tmp_path / "elsewhere" / "r.md", tmp_path / "elsewhere" / "c.png"
    md.write_text("an older table\n")
    r = CliRunner().invoke(app, ["report", str(tmp_path / "runs"), "--markdown", str(md), "--plot", str(png)])
    assert r.exit_code == 0, r.output
    assert "| lenet5 |" in md.read_text() and png.read_bytes()[:4] == b"\x89PNG"
    assert sorted(f.name for f in (tmp_path / "elsewhere").iterdir()) == ["c.png", "r.md"]


def test_recipe_directory_names_too_long_for_a_file_system_are_refused_when_parsed(tmp_path):
    with pytest.raises(ConfigError, match=r"^--runs-dir .*300 bytes long, more than the 255"):
        parse_pipeline(json.loads(json.dumps(TINY)), runs_dir=tmp_path / ("r" * 300))
    with pytest.raises(ConfigError, match=r"run directory 'lenet5-ce-alone-t+.*319 bytes long.*shorten .*tag"):
        tiny(tmp_path, distill=[{**TINY["distill"][0], "tag": "t" * 300}])
    teachers = [{**TINY["teachers"][0], "name": "n" * 256}]
    with pytest.raises(ConfigError, match=r"256 bytes long.*shorten the teacher's name"):
        tiny(tmp_path, teachers=teachers, distill=[{**TINY["distill"][0], "teachers": ["n" * 256]}])


IDS_RECIPE = """
[pipeline]
name = "ids"
[dataset]
name = "synthetic"
options = {num_train = 60, num_test = 20, num_classes = 4}
[[distill]]
students = ["lenet5"]
methods = ["ce"]
options = {epochs = 1, batch_size = 16, labels = "ids:ids.txt"}
"""


def _ids_recipe(folder: Path, numbers) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "ids.txt").write_text("".join(f"synthetic/train/{i:06d}\n" for i in numbers))
    (folder / "recipe.toml").write_text(IDS_RECIPE)
    return folder / "recipe.toml"


def test_a_recipes_ids_file_resolves_against_the_recipes_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "ids.txt").write_text("synthetic/train/000001\n")  # the working directory's: not the recipe's
    recipe = _ids_recipe(tmp_path / "proj", range(0, 60, 3))
    p = load_pipeline(recipe, runs_dir=tmp_path / "runs")
    assert p.distill[0].options["labels"] == f"ids:{tmp_path / 'proj' / 'ids.txt'}"
    (tmp_path / "proj" / "ids.txt").unlink()
    with pytest.raises(ConfigError, match=r"options.labels 'ids:ids.txt': no file .*proj/ids.txt"):
        load_pipeline(recipe, runs_dir=tmp_path / "runs")


def test_an_edited_ids_file_makes_the_run_stale(tmp_path, monkeypatch):
    """What a run read from ``labels = "ids:FILE"`` is the file's contents: an edit makes the run stale, the same
    contents elsewhere (the recipe's folder moved) do not; a run recorded without the file's hash is compared by
    the path it resolved to."""
    monkeypatch.setenv("FEATCACHE_HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    runs = tmp_path / "runs"
    recipe = _ids_recipe(tmp_path / "proj", range(0, 60, 3))
    run_pipeline(load_pipeline(recipe, runs_dir=runs), workers=0, device="cpu", log=lambda _: None)

    def state(path: Path) -> tuple[str, str]:
        stage = next(s for s in plan(load_pipeline(path, runs_dir=runs), workers=0) if s.kind == "distill")
        return stage.state, stage.detail

    assert state(recipe)[0] == "done"
    _ids_recipe(tmp_path / "proj", range(0, 60, 2))
    got = state(recipe)
    assert got[0] == "stale" and f"ids file {tmp_path / 'proj' / 'ids.txt'} edited since the run" in got[1], got
    with pytest.raises(ConfigError, match="edited since the run"):
        run_pipeline(load_pipeline(recipe, runs_dir=runs), workers=0, device="cpu", log=lambda _: None)
    _ids_recipe(tmp_path / "proj", range(0, 60, 3))
    moved = _ids_recipe(tmp_path / "moved", range(0, 60, 3))
    assert state(recipe)[0] == "done" and state(moved)[0] == "done"
    config = runs / "lenet5-ce-alone-s0" / "config.json"
    record = json.loads(config.read_text())
    del record["labels"]["file_sha256"]  # as recorded before the file's hash was
    config.write_text(json.dumps(record))
    assert state(recipe)[0] == "done" and state(moved)[0] == "stale"


def test_tags_keep_runs_with_other_options_apart(tmp_path):
    block = {"students": ["lenet5"], "methods": ["ts"], "teachers": ["r18"], "options": {"epochs": 1}}
    data = json.loads(json.dumps(TINY))
    data["distill"] = [block, {**block, "options": {"epochs": 1, "noise_per_batch": 4}}]
    with pytest.raises(ConfigError, match="different 'tag'"):
        parse_pipeline(data, runs_dir=tmp_path)
    data["distill"][1]["tag"] = "noise"
    p = parse_pipeline(data, runs_dir=tmp_path)
    names = [s.name for s in plan(p, workers=0) if s.kind == "distill"]
    assert names == ["lenet5-ts-r18-s0", "lenet5-ts-r18-noise-s0"]
    data["distill"][1]["tag"] = "a b"
    with pytest.raises(ConfigError, match="tag"):
        parse_pipeline(data, runs_dir=tmp_path)


def test_report_keeps_runs_that_differ_beyond_the_seed_apart(tmp_path):
    a = _fake_run(tmp_path, "a", [0.5], method="ts", teachers=["r50"])
    b = _fake_run(tmp_path, "b", [0.6], method="ts", teachers=["r50"])
    cfg = json.loads((b / "config.json").read_text())
    cfg["config"].update(noise_per_batch=8, tag="noise")
    (b / "config.json").write_text(json.dumps(cfg))
    rows = build_rows([load_record(a), load_record(b)])
    assert [r.cells()["method"] for r in rows] == ["ts", "ts +8 noise/batch [noise]"]


AKA_RECIPE = """
[pipeline]
name = "aka"
[dataset]
name = "synthetic"
options = {num_train = 64, num_test = 32, num_classes = 4}
[classes]
parts = 2
seed = 0
[[teachers]]
name = "c1"
teacher = "convnet"
train = {epochs = 1, init = "random", batch_size = 32, classes = "part1"}
extract = {image_size = 32}
[[teachers]]
name = "c2"
teacher = "convnet"
train = {epochs = 1, init = "random", batch_size = 32, classes = "part2"}
extract = {image_size = 32}
[amalgamate]
teachers = ["c1", "c2"]
student = "lenet5"
epochs = 1
options = {batch_size = 16}
"""


@pytest.mark.slow
def test_recipe_with_class_parts_and_amalgamation(tmp_path, monkeypatch):
    monkeypatch.setenv("FEATCACHE_HOME", str(tmp_path / "home"))
    recipe = tmp_path / "aka.toml"
    recipe.write_text(AKA_RECIPE)
    p = load_pipeline(recipe, runs_dir=tmp_path / "runs")
    assert [s.kind for s in plan(p, workers=0)][-2:] == ["amalgamate", "report"]
    r = CliRunner().invoke(app, ["run", str(recipe), "--runs-dir", str(tmp_path / "runs"), "--workers", "0"])
    assert r.exit_code == 0, r.output
    assert "per-task test accuracy" in r.output
    assert (tmp_path / "runs" / "amalgamate" / "target" / "summary.json").is_file()
    import torch

    parts = p.parts()
    for k, name in ((1, "c1"), (2, "c2")):
        record = torch.load(tmp_path / "runs" / "teachers" / name / "teacher.pt", weights_only=True)["featcache"]
        assert record["classes"] == parts[f"part{k}"]
    again = plan(p, workers=0)
    assert all(s.state == "done" for s in again if s.kind not in ("report",))
    bad = AKA_RECIPE.replace('teachers = ["c1", "c2"]', 'teachers = ["c3"]')
    recipe.write_text(bad)
    with pytest.raises(ConfigError, match="teacher 'c3'"):
        load_pipeline(recipe)


@pytest.mark.slow
def test_an_amalgamation_recipe_with_seeds_trains_every_net_per_seed_and_reports_mean_and_std(tmp_path, monkeypatch):
    monkeypatch.setenv("FEATCACHE_HOME", str(tmp_path / "home"))
    recipe = tmp_path / "aka.toml"
    recipe.write_text(AKA_RECIPE.replace("epochs = 1\noptions", "epochs = 1\nseeds = [0, 2]\noptions"))
    p = load_pipeline(recipe, runs_dir=tmp_path / "runs")
    assert [s.name for s in plan(p, workers=0) if s.kind == "amalgamate"] == [
        "components → target, seed 0", "components → target, seed 2"]
    result = run_pipeline(p, workers=0, log=lambda m: None)
    runs = tmp_path / "runs"
    import torch

    for seed, root in ((0, runs / "amalgamate"), (2, runs / "amalgamate-s2")):
        for net in ("component-part1", "component-part2", "target"):
            assert json.loads((root / net / "config.json").read_text())["config"]["seed"] == seed, (root, net)
    w0 = torch.load(runs / "amalgamate" / "target" / "checkpoint-best.pt", weights_only=True)["student"]
    w2 = torch.load(runs / "amalgamate-s2" / "target" / "checkpoint-best.pt", weights_only=True)["student"]
    assert any(not torch.equal(w0[k], w2[k]) for k in w0 if w0[k].is_floating_point())
    from featcache.distill.amalgamate import summarize
    from featcache.runs.report import percent

    rows = result["amalgamate"]
    assert [r.task for r in rows] == ["part1", "part2"] and all(set(r.seeds) == {0, 2} for r in rows)
    targets = [r.target for r in rows[0].seeds.values()]
    assert rows[0].cells()[4] == percent(targets) and " ± " in rows[0].cells()[4]
    text = result["amalgamate_markdown"].read_text()
    assert "Mean ± std over seeds 0, 2" in text and text.count("\n| part1 |") == 1
    assert "| 0 | part1 |" in text and "| 2 | part2 |" in text
    assert summarize({0: [rows[0].seeds[0]]})[0].cells()[4] == f"{100 * targets[0]:.2f}"
    assert all(s.state == "done" for s in plan(p, workers=0) if s.kind != "report")
    # A seed's nets moved into another seed's directory are not that seed's results.
    (runs / "amalgamate-s2").rename(runs / "amalgamate-s1")
    recipe.write_text(recipe.read_text().replace("seeds = [0, 2]", "seeds = [0, 1]"))
    moved = [s for s in plan(load_pipeline(recipe, runs_dir=runs), workers=0) if s.kind == "amalgamate"][1]
    assert moved.state == "stale" and any("seed 2 → 1" in d for d in moved.differs), moved.differs


@pytest.mark.slow
def test_amalgamation_recipe_with_block_bridges(tmp_path, monkeypatch):
    monkeypatch.setenv("FEATCACHE_HOME", str(tmp_path / "home"))
    text = AKA_RECIPE.replace('extract = {image_size = 32}',
                              'extract = {image_size = 32, blocks = ["body.5", "body.12"], pool = 2}')
    text = text.replace('options = {batch_size = 16}',
                        'options = {batch_size = 16, student_blocks = ["conv1", "conv2"]}')
    recipe = tmp_path / "aka.toml"
    recipe.write_text(text)
    p = load_pipeline(recipe, runs_dir=tmp_path / "runs")
    result = run_pipeline(p, workers=0, log=lambda m: None)
    assert len(result["amalgamate"]) == 2
    assert result["amalgamate_markdown"].read_text().count("| part") == 2
    from featcache.cache import CacheStore

    components = [e for e in CacheStore(tmp_path / "home").entries() if e.manifest.teacher.name == "run"]
    assert len(components) == 2 and all([b.name for b in e.manifest.blocks] == ["conv1", "conv2"]
                                        for e in components)


@pytest.mark.slow
def test_recipe_teacher_reusing_trained_weights_with_views(tmp_path, monkeypatch):
    monkeypatch.setenv("FEATCACHE_HOME", str(tmp_path / "home"))
    data = json.loads(json.dumps(TINY))
    data["teachers"] = [
        {"name": "c", "teacher": "convnet", "train": {"epochs": 1, "init": "random", "batch_size": 32},
         "extract": {"image_size": 32}},
        {"name": "c-views", "teacher": "convnet", "weights": "teacher:c", "extract": {"image_size": 32, "views": 2}},
    ]
    data["distill"] = [{"students": ["lenet5"], "methods": ["ts"], "teachers": ["c-views"],
                        "options": {"epochs": 1, "batch_size": 32}}]
    p = parse_pipeline(data, runs_dir=tmp_path / "runs")
    assert [s.state for s in plan(p, workers=0) if s.kind == "extract"] == ["waits", "waits"]
    run_pipeline(p, workers=0, log=lambda m: None)
    import json as _json

    cfg = _json.loads((tmp_path / "runs" / "lenet5-ts-c-views-s0" / "config.json").read_text())
    assert cfg["views"]["count"] == 2
    data["teachers"][1]["weights"] = "teacher:nobody"
    with pytest.raises(ConfigError, match="trained here"):
        parse_pipeline(data, runs_dir=tmp_path / "runs")


@pytest.mark.parametrize("recipe", sorted(p.name for p in (ROOT / "pipelines").glob("cpu-cifar10-*.toml")))
def test_cpu_cifar10_recipes_plan_against_a_tiny_cifar_tree(tmp_path, recipe):
    """The issue-14 recipes keep planning (--dry-run) against CIFAR-10's image-folder layout, so they do not rot."""
    from helpers import CIFAR10_NAMES, write_image

    root = tmp_path / "cifar10-jpg"
    for split, n in (("train", 3), ("test", 1)):
        for c, name in enumerate(CIFAR10_NAMES):
            for k in range(n):
                write_image(root / split / name / f"{k:04d}.jpg", 10 * c + k, size=(32, 32))
    r = CliRunner().invoke(app, ["run", str(ROOT / "pipelines" / recipe), "--data-root", str(root), "--dry-run",
                                 "--runs-dir", str(tmp_path / "runs")])
    assert r.exit_code == 0, r.output
    out = " ".join(r.output.split())
    assert "plan for cpu-cifar10-" in out and "report" in out
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").rglob("*.pt"))  # planned, not run


def test_train_per_class_keeps_the_first_images_of_each_class(tmp_path):
    from featcache.datasets import get_dataset
    from featcache.errors import DatasetError
    from helpers import CIFAR10_NAMES, write_image

    root = tmp_path / "c"
    for split in ("train", "test"):
        for c, name in enumerate(CIFAR10_NAMES):
            for k in range(3):
                write_image(root / split / name / f"{k:04d}.png", 10 * c + k, size=(32, 32))
    small = get_dataset("cifar10", root, "train", train_per_class=2)
    assert len(small) == 20 and small.params["per_class"] == 2
    assert [i for i in small.sample_ids if i.startswith("cat/")] == ["cat/0000.png", "cat/0001.png"]
    assert len(get_dataset("cifar10", root, "test", train_per_class=2)) == 30  # the test split stays whole
    full = get_dataset("cifar10", root, "train")
    assert small.identity() != full.identity()
    with pytest.raises(DatasetError, match="train_per_class"):
        get_dataset("cifar10", root, "train", train_per_class=0)


def test_a_bad_option_value_in_a_recipe_is_named_as_the_recipe_spells_it(tmp_path, monkeypatch):
    """The library words errors for the CLI (--cache-ram); a recipe user never typed that flag, so the recipe layer
    names the block and key instead — at plan time, before anything trains."""
    monkeypatch.setenv("FEATCACHE_HOME", str(tmp_path / "home"))
    with pytest.raises(ConfigError) as info:
        tiny(tmp_path, teachers=[TINY["teachers"][1]], distill=[
            {"students": ["lenet5"], "methods": ["ts"], "teachers": ["r18"],
             "options": {"epochs": 1, "batch_size": 32, "cache_ram": "lots"}}])
    message = str(info.value)
    assert "options.cache_ram 'lots'" in message and "[[distill]]" in message and "--cache-ram" not in message
    with pytest.raises(ConfigError, match="--optimizer 'adagrad'"):  # the CLI's own wording is unchanged
        from featcache.distill.trainer import DistillConfig, distill

        distill(DistillConfig(student="lenet5", optimizer="adagrad", epochs=1,
                              dataset_options={"num_train": 16, "num_test": 8}, run_dir=tmp_path / "r"))


def test_teachers_of_different_class_parts_are_two_rows_not_one_mean(tmp_path):
    """A train-teacher --classes run subsets the dataset (config.classes stays unset): the report must still keep
    two teachers of two class parts apart, and say which part each covers."""
    _fake_run(tmp_path, "t1", [0.5, 0.7], method="teacher", student="resnet18", head=["bird", "cat", "deer"])
    _fake_run(tmp_path, "t2", [0.6, 0.8], method="teacher", student="resnet18", head=["dog", "ship", "truck"])
    rows = build_rows([load_record(tmp_path / "t1"), load_record(tmp_path / "t2")])
    assert len(rows) == 2
    assert "[3 classes: bird, cat, …]" in load_record(tmp_path / "t1").label


# -- recipe values are checked like their flags, at plan time -------------------------------------------------------


def _block(**options):
    return [{"students": ["lenet5"], "methods": ["ce"], "options": {"epochs": 1, **options}}]


@pytest.mark.parametrize(
    "change,needle",
    [
        # a string is not a list of seeds (it used to be iterated: "12" ran seeds 1 and 2)
        ({"distill": [{"students": ["lenet5"], "methods": ["ce"], "seeds": "12"}]},
         "[[distill]] #1 seeds: expected a list of integers or an integer, got '12'"),
        ({"distill": _block(epochs="three")},
         "[[distill]] #1 options.epochs: expected an integer (or unset), got 'three'"),
        ({"distill": _block(epochs=True)}, "[[distill]] #1 options.epochs: expected an integer (or unset), got True"),
        ({"distill": _block(lr=-1)}, "[[distill]] #1 options.lr must be a finite number > 0"),
        ({"distill": _block(optimizer="adagrad")}, "[[distill]] #1 options.optimizer 'adagrad': choose one of"),
        ({"distill": _block(temperature=0)}, "[[distill]] #1 options.temperature must be"),
        ({"distill": _block(student_blocks=[1])}, "options.student_blocks: item 1: expected a string"),
        ({"distill": _block(device="cpu")}, "options.device: the machine a recipe runs on is `featcache run`'s"),
        ({"distill": _block(epoch=3)}, "[[distill]] #1 options: unknown field 'epoch'"),
        ({"distill": [{"students": "lenet5", "methods": ["ce"]}]},
         "[[distill]] #1 students: expected a list of strings, got 'lenet5'"),
        ({"distill": [{"students": ["lenet5"], "methods": ["kd"]}]},
         "method 'kd' takes at least 1 teacher(s) but 'teachers' lists 0"),
        ({"teachers": [{"teacher": "convnet", "train": {"epochs": "1"}}]},
         "[[teachers]] #1 train.epochs: expected an integer, got '1'"),
        ({"teachers": [{"teacher": "convnet", "train": {"lr": 0}}]}, "[[teachers]] #1 train.lr must be"),
        ({"teachers": [{"teacher": "convnet", "train": {"augment": "rotate"}}]},
         "[[teachers]] #1 train.augment 'rotate'"),
        ({"teachers": [{"teacher": "convnet", "train": {"classes": "nowhere.txt"}}]},
         "[[teachers]] #1 train.classes 'nowhere.txt': neither"),
        ({"teachers": [{"teacher": "resnet18", "weights": "random", "extract": {"views": 0}}]},
         "[[teachers]] #1 extract.views must be >= 1, got 0"),
        ({"teachers": [{"teacher": "resnet18", "weights": "random", "extract": {"noise": 1.5}}]},
         "[[teachers]] #1 extract.noise: expected an integer, got 1.5"),
        ({"teachers": [{"teacher": "resnet18", "weights": 3}]}, "[[teachers]] #1 weights: expected a string, got 3"),
        ({"dataset": {"name": "synthetic", "options": {"num_train": "many"}}},
         "[dataset] options.num_train: expected an integer, got 'many'"),
        ({"dataset": {"name": "synthetic", "options": {"num_trian": 8}}}, "does not take option 'num_trian'"),
        ({"classes": {"parts": 2, "seed": "0"}}, "[classes] seed: expected an integer, got '0'"),
        ({"report": {"title": 7}}, "[report] title: expected a string, got 7"),
    ],
)
def test_recipe_values_are_checked_at_parse_time_like_their_flags(tmp_path, change, needle):
    with pytest.raises(ConfigError) as err:
        tiny(tmp_path, **change)
    message = str(err.value)
    assert needle in message and message.startswith("recipe") and "\n" not in message


def test_amalgamate_values_are_checked(tmp_path):
    recipe = tmp_path / "aka.toml"
    for old, new, needle in [
        ("epochs = 1", 'epochs = "1"', "[amalgamate] epochs: expected an integer, got '1'"),
        ("epochs = 1", "epochs = 0", "[amalgamate] epochs must be >= 1"),
        ("options = {batch_size = 16}", "options = {batch_size = 16, epochs = 3}", "set [amalgamate] epochs"),
        ("options = {batch_size = 16}", "options = {batch_size = -1}", "[amalgamate] options.batch_size must be >= 1"),
        ('teachers = ["c1", "c2"]', 'teachers = "c1"', "[amalgamate] teachers: expected a list of strings"),
        ("epochs = 1", 'epochs = 1\nseeds = "12"', "[amalgamate] seeds: expected"),
        ("epochs = 1", "epochs = 1\nseeds = [1, 1]", "seeds lists 1 twice"),
        ("epochs = 1", "epochs = 1\nseeds = [0, -1]", "seeds must lie in [0, 4294967295], got -1"),
        ("epochs = 1", "epochs = 1\nseeds = []", "'seeds' must list at least one seed"),
    ]:
        recipe.write_text(AKA_RECIPE.replace(f"\n{old}\n", f"\n{new}\n"))
        with pytest.raises(ConfigError, match=re.escape(needle)):
            load_pipeline(recipe, runs_dir=tmp_path / "runs")


def test_dry_run_catches_a_bad_value_with_one_line(tmp_path, monkeypatch):
    """`options = { epochs = "three" }` used to pass --dry-run and die with a TypeError after the teacher trained."""
    monkeypatch.setenv("FEATCACHE_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("FEATCACHE_DEBUG", raising=False)
    recipe = tmp_path / "x.toml"
    recipe.write_text(
        '[dataset]\nname = "synthetic"\n[[teachers]]\nteacher = "convnet"\ntrain = {epochs = 1}\n'
        '[[distill]]\nstudents = ["lenet5"]\nmethods = ["ts"]\nteachers = ["convnet"]\n'
        'options = { epochs = "three" }\n')
    one_line_error(CliRunner().invoke(app, ["run", str(recipe), "--dry-run", "--runs-dir", str(tmp_path / "r")]),
                    f"recipe {recipe}: [[distill]] #1 options.epochs: expected an integer (or unset), got 'three'")
    assert not (tmp_path / "r").exists()
    recipe.write_text(recipe.read_text().replace('epochs = "three"', "lr = -1"))
    one_line_error(CliRunner().invoke(app, ["run", str(recipe), "--dry-run", "--runs-dir", str(tmp_path / "r")]),
                    "[[distill]] #1 options.lr must be a finite number > 0")


# -- stale runs: outputs made with other values than the recipe now asks ---------------------------------------------


def _finish(config, *, accs=(0.5,)):
    """A finished distill run as distill leaves it: config.json records the config, then metrics and summary."""
    d = Path(config.run_dir)
    d.mkdir(parents=True, exist_ok=True)
    (d / "config.json").write_text(json.dumps({"config": config.to_dict(), "method": config.method, "teachers": []}))
    (d / "metrics.jsonl").write_text("".join(json.dumps({"epoch": i + 1, "test_acc": a}) + "\n"
                                             for i, a in enumerate(accs)))
    (d / "summary.json").write_text(json.dumps({"epochs": len(accs)}))
    return d


def test_a_run_recorded_before_bn_recalibrate_is_stale_until_the_recipe_pins_what_it_did(tmp_path, monkeypatch):
    """Runs made before --bn-recalibrate kept the running averages: a recipe asking the new default calls them stale
    (their numbers were made otherwise), one that sets bn_recalibrate = 0 keeps them, and the message says so."""
    from featcache.pipeline import distill_jobs, job_config

    monkeypatch.setenv("FEATCACHE_HOME", str(tmp_path / "home"))
    data = json.loads(json.dumps(TINY))
    data["teachers"], data["distill"] = [], _block(epochs=3)
    p = parse_pipeline(data, runs_dir=tmp_path / "runs")
    job = next(distill_jobs(p.distill))
    run = _finish(job_config(p, job, run_dir=tmp_path / "runs" / job.name))
    recorded = json.loads((run / "config.json").read_text())
    del recorded["config"]["bn_recalibrate"]  # as written by featcache before the flag
    (run / "config.json").write_text(json.dumps(recorded))
    [stage] = [s for s in plan(p) if s.kind == "distill"]
    assert stage.state == "stale" and stage.differs == ["bn_recalibrate 0 → 1024"]
    with pytest.raises(ConfigError, match="set the values they were made with in the recipe"):
        run_pipeline(p, workers=0, log=lambda m: None)
    data["distill"] = _block(epochs=3, bn_recalibrate=0)
    assert [s.state for s in plan(parse_pipeline(data, runs_dir=tmp_path / "runs")) if s.kind == "distill"] == ["done"]


def test_a_recipe_that_leaves_augment_and_epochs_out_keeps_what_they_meant(tmp_path, monkeypatch):
    """distill's --augment auto and per-student --epochs are the command's defaults; a recipe's student-alone arm stays
    un-augmented like its teacher arms, for 30 epochs, and the runs it finished stay done."""
    from featcache.pipeline import distill_jobs, job_config

    monkeypatch.setenv("FEATCACHE_HOME", str(tmp_path / "home"))
    data = json.loads(json.dumps(TINY))
    data["teachers"], data["distill"] = [], [{"students": ["mobilenetv3"], "methods": ["ce"]}]
    p = parse_pipeline(data, runs_dir=tmp_path / "runs")
    job = next(distill_jobs(p.distill))
    assert (job_config(p, job).augment, job_config(p, job).epochs) == ("none", 30)
    _finish(job_config(p, job, run_dir=tmp_path / "runs" / job.name))
    assert [s.state for s in plan(p) if s.kind == "distill"] == ["done"]
    data["distill"][0]["options"] = {"augment": "auto", "epochs": 2}  # asked for: what the command would do
    p = parse_pipeline(data, runs_dir=tmp_path / "runs")
    assert job_config(p, next(distill_jobs(p.distill))).augment == "auto"


def test_a_finished_run_is_stale_once_the_recipe_asks_for_other_values(tmp_path, monkeypatch):
    from featcache.pipeline import distill_jobs, distill_runs, job_config, stale_message

    monkeypatch.setenv("FEATCACHE_HOME", str(tmp_path / "home"))
    data = json.loads(json.dumps(TINY))
    data["teachers"], data["distill"] = [], _block(epochs=3)
    p = parse_pipeline(data, runs_dir=tmp_path / "runs")
    job = next(distill_jobs(p.distill))
    run = _finish(job_config(p, job, run_dir=tmp_path / "runs" / job.name))
    assert [s.state for s in plan(p) if s.kind == "distill"] == ["done"]
    # runtime flags do not change what a run produced: not stale
    data["distill"] = _block(epochs=3, cache_mode="disk", compile="default")
    assert [s.state for s in plan(parse_pipeline(data, runs_dir=tmp_path / "runs")) if s.kind == "distill"] == ["done"]

    data["distill"] = _block(epochs=5, lr=0.01)
    p = parse_pipeline(data, runs_dir=tmp_path / "runs")
    [stage] = [s for s in plan(p) if s.kind == "distill"]
    assert stage.state == "stale" and "epochs 3 → 5" in stage.differs and "lr 0.001 → 0.01" in stage.differs
    assert distill_runs(p) == []  # never mixed into the report
    with pytest.raises(ConfigError) as err:
        run_pipeline(p, workers=0, log=lambda m: None)
    assert str(err.value) == stale_message(p, [stage])
    assert "epochs 3 → 5" in str(err.value) and "--rerun-stale" in str(err.value) and run.is_dir()

    # --rerun-stale moves it under RUNS/.stale (kept) and runs it again (distill itself is stubbed here)
    import featcache.distill.trainer as trainer

    ran = []

    def fake_distill(config, reporter=None):
        ran.append(config)
        return _finish(config, accs=(0.6,)) and type("S", (), {"line": lambda self: "ok"})()

    monkeypatch.setattr(trainer, "distill", fake_distill)
    logs = []
    run_pipeline(p, workers=0, log=logs.append, rerun_stale=True)
    assert [c.epochs for c in ran] == [5] and any(m.startswith("[stale]") for m in logs)
    assert [d.name.rsplit("-", 2)[0] for d in (tmp_path / "runs" / ".stale").iterdir()] == [job.name]
    assert [s.state for s in plan(p) if s.kind == "distill"] == ["done"] and distill_runs(p) == [run]


def test_a_trained_teacher_is_stale_once_its_train_table_changes(tmp_path, monkeypatch):
    import torch

    from featcache.pipeline import teacher_config
    from featcache.teach import validate

    monkeypatch.setenv("FEATCACHE_HOME", str(tmp_path / "home"))
    data = json.loads(json.dumps(TINY))
    data["teachers"] = [TINY["teachers"][0]]
    data["distill"] = [{"students": ["lenet5"], "methods": ["kd"], "teachers": ["convnet"], "options": {"epochs": 1}}]
    p = parse_pipeline(data, runs_dir=tmp_path / "runs")
    d = tmp_path / "runs" / "teachers" / "convnet"
    d.mkdir(parents=True)
    config = validate(teacher_config(p, p.teachers[0], run_dir=d))
    (d / "config.json").write_text(json.dumps({"config": config.to_dict(), "dataset": {"train": {"params": {}}}}))
    torch.save({"state_dict": {}, "featcache": {"init": "random"}}, d / "teacher.pt")
    assert [s.state for s in plan(p) if s.kind == "teacher"] == ["done"]
    data["teachers"][0]["train"]["epochs"] = 4
    p = parse_pipeline(data, runs_dir=tmp_path / "runs")
    stages = {s.kind: s for s in plan(p)}
    assert stages["teacher"].state == "stale" and stages["teacher"].differs == ["epochs 1 → 4"]
    assert stages["extract"].state == "waits"  # its cache will come from the retrained teacher
    with pytest.raises(ConfigError, match="teacher convnet: epochs 1 → 4"):
        run_pipeline(p, workers=0, log=lambda m: None)


# -- relative paths resolve against the recipe's own folder ----------------------------------------------------------


def test_relative_paths_in_a_recipe_resolve_against_its_folder(tmp_path, monkeypatch):
    folder = tmp_path / "exp"
    (folder / "lists").mkdir(parents=True)
    (folder / "lists" / "birds.txt").write_text("0\n1\n")
    (folder / "init.pt").write_bytes(b"")
    recipe = folder / "r.toml"
    recipe.write_text(
        '[pipeline]\nname = "r"\nruns_dir = "out"\n'
        '[dataset]\nname = "synthetic"\ndata_root = "data"\n'
        '[[teachers]]\nname = "t"\nteacher = "convnet"\n'
        'train = {epochs = 1, classes = "lists/birds.txt", init = "init.pt"}\n'
        '[[teachers]]\nname = "w"\nteacher = "resnet18"\nweights = "ckpt/r18.pt"\n'
        '[[teachers]]\nname = "tv"\nteacher = "resnet18"\nweights = "IMAGENET1K_V1"\n'
        '[[distill]]\nstudents = ["lenet5"]\nmethods = ["ce"]\n')
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    p = load_pipeline(Path("..") / "exp" / "r.toml")
    assert p.runs_dir.resolve() == folder / "out" and p.data_root.resolve() == folder / "data"
    t, w, tv = p.teachers
    assert Path(t.train["classes"]).resolve() == folder / "lists" / "birds.txt"
    assert Path(t.train["init"]).resolve() == folder / "init.pt"
    assert Path(w.weights).resolve() == folder / "ckpt" / "r18.pt" and tv.weights == "IMAGENET1K_V1"
    # flags stay relative to the working directory; without runs_dir the default is runs/<name> there too
    p = load_pipeline(recipe, data_root=Path("flag-data"), runs_dir=Path("flag-runs"))
    assert p.data_root == Path("flag-data") and p.runs_dir == Path("flag-runs")
    recipe.write_text(recipe.read_text().replace('runs_dir = "out"\n', ""))
    assert load_pipeline(recipe).runs_dir == Path("runs") / "r"


@contextlib.contextmanager
def _held_by_another_process(run_dir: Path):
    """``run_dir`` locked by another process (as a second `featcache run` training it would), until the block ends."""
    import subprocess
    import sys

    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from featcache.util.locks import DirLock; "
         f"DirLock({str(run_dir)!r}, 'run directory').acquire(wait=False); print('held', flush=True); time.sleep(120)"],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        yield
    finally:
        holder.kill()
        holder.wait()


def test_two_runs_of_one_recipe_share_its_work(tmp_path, monkeypatch):
    """A second `featcache run` of a recipe (another GPU, another node on a shared filesystem) skips the run another
    process is training and goes on with the next, instead of stopping at the first locked run directory."""
    monkeypatch.setenv("FEATCACHE_HOME", str(tmp_path / "home"))
    data = {"pipeline": {"name": "two"},
            "dataset": {"name": "synthetic", "options": {"num_train": 32, "num_test": 16, "num_classes": 4}},
            "distill": [{"students": ["lenet5"], "methods": ["ce"], "seeds": [0, 1],
                         "options": {"epochs": 1, "batch_size": 16}}]}
    p = parse_pipeline(data, runs_dir=tmp_path / "runs")
    held = tmp_path / "runs" / "lenet5-ce-alone-s0"
    with _held_by_another_process(held):
        lines: list[str] = []
        result = run_pipeline(p, workers=0, log=lines.append)
        skipped = "lenet5-ce-alone-s0: skipped, another featcache process (pid"
        assert any(skipped in ln and str(held) in ln for ln in lines), lines
        assert any("1 stage(s) were being trained by another process" in ln for ln in lines), lines
        assert [Path(r).name for r in result["runs"]] == ["lenet5-ce-alone-s1"]
        assert not (held / "summary.json").exists()
    result = run_pipeline(p, workers=0, log=lambda m: None)  # the holder is gone: the skipped run is trained now
    assert sorted(Path(r).name for r in result["runs"]) == ["lenet5-ce-alone-s0", "lenet5-ce-alone-s1"]


@pytest.mark.slow
def test_a_second_run_trains_another_teacher_draw_while_the_first_trains_one(tmp_path, monkeypatch):
    """Teacher stages are shared like distill runs: a teacher another process holds is skipped, and its cache, the
    teachers taking its weights and its students wait; the other draws are trained, extracted and distilled."""
    monkeypatch.setenv("FEATCACHE_HOME", str(tmp_path / "home"))
    data = {"pipeline": {"name": "draws"},
            "dataset": {"name": "synthetic", "options": {"num_train": 32, "num_test": 16, "num_classes": 4}},
            "teachers": [{"name": "c", "teacher": "convnet", "seeds": [0, 1],
                          "train": {"epochs": 1, "init": "random", "batch_size": 32}, "extract": {"image_size": 32}},
                         {"name": "c-views", "teacher": "convnet", "weights": "teacher:c",
                          "extract": {"image_size": 32, "views": 2}}],
            "distill": [{"students": ["lenet5"], "methods": ["kd"], "teachers": ["c"],
                         "options": {"epochs": 1, "batch_size": 16}}]}
    p = parse_pipeline(data, runs_dir=tmp_path / "runs")
    held = tmp_path / "runs" / "teachers" / "c"
    with _held_by_another_process(held):
        lines: list[str] = []
        result = run_pipeline(p, workers=0, log=lines.append)
        assert any("[teacher] c: skipped, another featcache process (pid" in ln for ln in lines), lines
        assert any("[extract] c: waits for its teacher" in ln for ln in lines), lines
        assert any("[extract] c-views: waits for its teacher" in ln for ln in lines), lines
        assert any("lenet5-kd-c-s0: waits for its teacher" in ln for ln in lines), lines
        assert [Path(r).name for r in result["runs"]] == ["lenet5-kd-c-t1-s0"]  # the other draw went on
        assert not (held / "teacher.pt").exists()


@pytest.mark.parametrize("text, needle", [
    (b"x = " + b"[" * 100_000 + b"]" * 100_000, "nested too deep"),
    (b"[pipeline]\nname = \"\xff\xfe\"\n", "invalid TOML"),
])
def test_a_recipe_nested_too_deep_or_not_utf8_is_one_line(tmp_path, text, needle):
    recipe = tmp_path / "recipe.toml"
    recipe.write_bytes(text)
    one_line_error(CliRunner().invoke(app, ["run", str(recipe), "--dry-run"]), "recipe.toml", needle)


def test_recipe_stores_keep_a_url_and_resolve_a_folder_against_the_recipe(tmp_path):
    from featcache.cache.remote import store_url

    data = json.loads(json.dumps(TINY))
    data.setdefault("pipeline", {})["stores"] = ["https://host:8080/caches", "s3://bucket/prefix", "shared"]
    p = parse_pipeline(data, path=tmp_path / "recipe.toml", runs_dir=tmp_path / "runs")
    assert [store_url(s) for s in p.stores] == ["https://host:8080/caches", "s3://bucket/prefix", None]
    assert p.stores[2] == tmp_path / "shared"


# -- teacher draws: seeds of a trained teacher, its recorded threads and versions -------------------------------------


def _drawn(tmp_path, seeds=(0, 1, 2), **block):
    data = json.loads(json.dumps(TINY))
    data["teachers"][0]["seeds"] = list(seeds)
    data["teachers"].append({"name": "q8", "teacher": "convnet", "weights": "teacher:convnet",
                             "extract": {"image_size": 32, "dtype": "int8"}})
    data["distill"] = [{"students": ["lenet5"], "methods": ["ce", "kd"], "teachers": ["convnet"], "seeds": [0, 1],
                        **block},
                       {"students": ["lenet5"], "methods": ["kd"], "teachers": ["q8"], "tag": "int8"}]
    return parse_pipeline(data, runs_dir=tmp_path / "runs")


def test_teacher_seeds_draw_one_teacher_and_cache_each_and_name_the_student_runs_by_it(tmp_path):
    from featcache.pipeline import distill_jobs

    p = _drawn(tmp_path)
    assert [(t.name, t.draw, (t.train or {}).get("seed"), t.weights) for t in p.teachers] == [
        ("convnet", 0, 0, None), ("convnet-t1", 1, 1, None), ("convnet-t2", 2, 2, None),
        ("r18", None, None, "random"),  # no seeds: as it was
        ("q8", 0, None, "teacher:convnet"), ("q8-t1", 1, None, "teacher:convnet-t1"),
        ("q8-t2", 2, None, "teacher:convnet-t2")]  # a teacher loading a drawn teacher's weights follows its draws
    jobs = list(distill_jobs(p.distill))
    assert [j.name for j in jobs] == [
        "lenet5-ce-alone-s0", "lenet5-ce-alone-s1",  # ce learns from no teacher: not once per draw
        "lenet5-kd-convnet-s0", "lenet5-kd-convnet-s1", "lenet5-kd-convnet-t1-s0", "lenet5-kd-convnet-t1-s1",
        "lenet5-kd-convnet-t2-s0", "lenet5-kd-convnet-t2-s1",
        "lenet5-kd-q8-int8-s0", "lenet5-kd-q8-t1-int8-s0", "lenet5-kd-q8-t2-int8-s0"]
    assert [j.draw for j in jobs[2:5]] == [0, 0, 1] and jobs[4].teachers == ("convnet-t1",)
    stages = [(s.kind, s.name) for s in plan(p) if s.kind == "teacher"]
    assert stages == [("teacher", "convnet"), ("teacher", "convnet-t1"), ("teacher", "convnet-t2")]
    assert (tmp_path / "runs" / "teachers" / "convnet-t1") == next(
        s.run_dir for s in plan(p) if s.name == "convnet-t1" and s.kind == "teacher")


def test_a_recipe_without_teacher_seeds_keeps_its_stage_and_run_names(tmp_path):
    from featcache.pipeline import distill_jobs

    p = tiny(tmp_path)
    assert [t.name for t in p.teachers] == ["convnet", "r18"] and all(t.draw is None for t in p.teachers)
    assert [j.name for j in distill_jobs(p.distill)] == [
        "lenet5-ce-alone-s0", "lenet5-ce-alone-s1", "lenet5-kd-convnet-s0", "lenet5-kd-convnet-s1",
        "lenet5-ts-r18-s0"]


@pytest.mark.parametrize("change, needle", [
    (lambda d: d["teachers"][0]["train"].update(seed=3), "either 'seeds'"),
    (lambda d: d["teachers"][1].update(seeds=[0, 1]), "give a 'train' table"),
    (lambda d: d["teachers"][0].update(seeds=[0, 0]), "seeds lists 0 twice"),
    (lambda d: d["teachers"].append({"name": "convnet-t1", "teacher": "convnet", "weights": "random"}),
     "the teacher draw 'convnet-t1'"),
])
def test_teacher_seeds_errors_name_the_field(tmp_path, change, needle):
    data = json.loads(json.dumps(TINY))
    data["teachers"][0]["seeds"] = [0, 1]
    change(data)
    with pytest.raises(ConfigError, match=needle) as info:
        parse_pipeline(data, runs_dir=tmp_path / "runs")
    assert "\n" not in str(info.value)


def test_the_teachers_of_one_block_are_drawn_together(tmp_path):
    from featcache.pipeline import distill_jobs

    data = json.loads(json.dumps(TINY))
    data["teachers"].append({"name": "c2", "teacher": "convnet", "seeds": [0, 1],
                             "train": {"epochs": 1, "init": "random", "batch_size": 32}})
    data["teachers"][0]["seeds"] = [0, 1]
    data["distill"] = [{"students": ["lenet5"], "methods": ["multi"], "teachers": ["convnet", "c2", "r18"]}]
    p = parse_pipeline(data, runs_dir=tmp_path / "runs")
    assert [j.teachers for j in distill_jobs(p.distill)] == [("convnet", "c2", "r18"), ("convnet-t1", "c2-t1", "r18")]
    data["teachers"][0]["seeds"] = [0, 2]
    with pytest.raises(ConfigError, match="drawn together"):
        parse_pipeline(data, runs_dir=tmp_path / "runs")


def _trained_teacher(tmp_path, data, draw: dict):
    """A teacher stage made done without training: config.json and teacher.pt as train-teacher writes them."""
    import torch

    from featcache.pipeline import teacher_config
    from featcache.teach import validate

    p = parse_pipeline(data, runs_dir=tmp_path / "runs")
    d = tmp_path / "runs" / "teachers" / "convnet"
    d.mkdir(parents=True, exist_ok=True)
    config = validate(teacher_config(p, p.teachers[0], run_dir=d))
    (d / "config.json").write_text(json.dumps({"config": config.to_dict(), "dataset": {"train": {"params": {}}},
                                               "threads": 2}))
    torch.save({"state_dict": {}, "featcache": {"init": "random", "draw": draw}}, d / "teacher.pt")


def test_a_trained_teacher_is_stale_once_its_recorded_threads_or_torch_differ(tmp_path, monkeypatch):
    import torch
    import torchvision

    monkeypatch.setenv("FEATCACHE_HOME", str(tmp_path / "home"))
    data = json.loads(json.dumps(TINY))
    data["teachers"] = [TINY["teachers"][0]]
    data["distill"] = [{"students": ["lenet5"], "methods": ["kd"], "teachers": ["convnet"], "options": {"epochs": 1}}]
    now = {"seed": 0, "threads": 2, "torch": str(torch.__version__), "torchvision": str(torchvision.__version__)}
    _trained_teacher(tmp_path, data, now)

    def teacher_stage():
        return next(s for s in plan(parse_pipeline(data, runs_dir=tmp_path / "runs")) if s.kind == "teacher")

    assert teacher_stage().state == "done"  # no pin: the recipe asks for no thread count
    data["teachers"][0]["train"]["threads"] = 2
    assert teacher_stage().state == "done"
    data["teachers"][0]["train"]["threads"] = 1
    stage = teacher_stage()
    assert stage.state == "stale" and stage.differs == ["threads 2 → 1"]
    stages = plan(parse_pipeline(data, runs_dir=tmp_path / "runs"))
    assert [s.state for s in stages if s.kind == "extract"] == ["waits"]  # its cache comes from the new teacher
    data["teachers"][0]["train"]["threads"] = 2
    _trained_teacher(tmp_path, data, {**now, "torch": "1.0.0"})
    assert teacher_stage().differs == [f"torch 1.0.0 → {torch.__version__}"]
    _trained_teacher(tmp_path, data, {})  # recorded before teacher.pt kept its draw: config.json's threads
    assert teacher_stage().state == "done"
    data["teachers"][0]["train"]["threads"] = 3
    assert teacher_stage().differs == ["threads 2 → 3"]


@pytest.mark.slow
def test_a_recipe_with_teacher_seeds_reports_each_draw_and_the_spread_between_teachers(tmp_path, monkeypatch):
    monkeypatch.setenv("FEATCACHE_HOME", str(tmp_path / "home"))
    data = json.loads(json.dumps(TINY))
    data["teachers"] = [{**TINY["teachers"][0], "seeds": [0, 1]}]
    data["distill"] = [{"students": ["lenet5"], "methods": ["kd"], "teachers": ["convnet"], "seeds": [0, 1],
                        "options": {"epochs": 1, "batch_size": 32}}]
    data["report"] = {"title": "draws"}
    p = parse_pipeline(data, runs_dir=tmp_path / "runs")
    result = run_pipeline(p, workers=0, log=lambda m: None)
    shown = {s.name: s.detail for s in plan(p) if s.kind == "distill"}
    assert shown["lenet5-kd-convnet-t1-s0"].startswith("teacher draw convnet-t1 seed 1, weights ")
    assert shown["lenet5-kd-convnet-s0"].startswith("teacher draw convnet seed 0, weights ")
    assert len(result["rows"]) == 2 and len(result["draws"]) == 1  # a row per draw, one arm over both
    cells = result["draws"][0].cells()
    assert cells["draws"] == "2" and cells["runs"] == "4" and cells["teachers"] == "convnet"
    md = result["markdown"].read_text()
    assert "## Over teacher draws" in md and "convnet (seed 1, " in md
    r = CliRunner().invoke(app, ["report", str(tmp_path / "runs"), "--markdown", str(tmp_path / "r.md")])
    assert r.exit_code == 0, r.output
    assert "over teacher draws" in r.output and "## Over teacher draws" in (tmp_path / "r.md").read_text()
