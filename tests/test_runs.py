"""`featcache runs ls`: one line per run directory — what it trains, how far it got, its status.

One real tiny distill run gives the finished state and the config.json every hand-made state is derived from;
interrupted, running, failed, empty and damaged directories are made by hand (and failed/interrupted once more by a
real run stopped mid-way, then resumed).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from featcache.cli import app
from featcache.config import DistillConfig
from featcache.runs import rundir
from featcache.runs.listing import RunInfo, list_runs, planned_epochs
from featcache.util.locks import DirLock, this_host
from helpers import DEEP_JSON, SYN_DISTILL, invoke, one_line_error, within

SYN = {"num_train": 60, "num_test": 20, "num_classes": 4}
runner = CliRunner()


def _cfg(root: Path, name: str, **kw) -> DistillConfig:
    base = dict(student="lenet5", dataset="synthetic", dataset_options=dict(SYN), device="cpu", workers=0,
                batch_size=16, epochs=2, method="ce", labels="4/class", cache_dir=root / "store", run_dir=root / name)
    base.update(kw)
    return DistillConfig(**base)


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """A real run, finished, nested the way recipes nest theirs: <root>/recipe/ce-s0."""
    from featcache.distill.trainer import distill

    root = tmp_path_factory.mktemp("runs")
    distill(_cfg(root, "recipe/ce-s0"))
    shutil.rmtree(root / "store", ignore_errors=True)
    return root / "recipe" / "ce-s0"


def _copy(finished: Path, root: Path, name: str, epochs: int = 0, **info) -> Path:
    """A run directory holding the real run's config.json (``info``: fields changed) and its first ``epochs``
    metrics lines."""
    d = root / name
    d.mkdir(parents=True)
    config = json.loads((finished / rundir.CONFIG).read_text())
    config.update(info)
    (d / rundir.CONFIG).write_text(json.dumps(config))
    lines = (finished / rundir.METRICS).read_text().splitlines(keepends=True)
    (d / rundir.METRICS).write_text("".join(lines[:epochs]))
    return d


def test_a_finished_run_is_listed_with_what_it_trained(finished):
    [run] = list_runs(finished.parents[1])
    accs = [r["test_acc"] for r in rundir.read_metrics(finished)]
    assert run.path == str(finished) and run.status == "finished" and run.note == ""
    assert (run.kind, run.student, run.method, run.teachers) == ("student", "lenet5", "ce", [])
    assert (run.labelled, run.labelled_total, run.labelled_fraction) == (16, 60, 16 / 60)
    assert (run.epochs_done, run.epochs_planned) == (2, 2)
    assert run.best_acc == max(accs) and run.last_acc == accs[-1]
    assert run.started == json.loads((finished / rundir.CONFIG).read_text())["started"]
    assert not (finished / ".lock").read_text()  # released: the probe saw an empty lock file


def test_each_status_is_told_apart(finished, tmp_path):
    _copy(finished, tmp_path, "a-empty")
    interrupted = _copy(finished, tmp_path, "b-interrupted", epochs=1)
    (interrupted / rundir.LAST).write_bytes(b"not read: runs ls never loads a checkpoint")
    _copy(finished, tmp_path, "c-stopped-before-its-first-metrics-line")
    (tmp_path / "c-stopped-before-its-first-metrics-line" / rundir.LAST).write_bytes(b"")
    failed = _copy(finished, tmp_path, "d-failed", epochs=1)
    rundir.record_failure(failed, RuntimeError("CUDA error: an illegal memory access\nwas encountered"))
    running = _copy(finished, tmp_path, "e-running", epochs=1)
    killed = _copy(finished, tmp_path, "f-killed", epochs=1)  # kill -9 leaves its holder line, not its flock
    (killed / ".lock").write_text(f"{os.getpid()} {this_host()}")
    with DirLock(running, "run directory"):
        runs = {Path(r.path).name: r for r in list_runs(tmp_path)}
    assert {k: r.status for k, r in runs.items()} == {
        "a-empty": "empty", "b-interrupted": "interrupted", "c-stopped-before-its-first-metrics-line": "interrupted",
        "d-failed": "failed", "e-running": "running", "f-killed": "interrupted"}
    assert runs["e-running"].note == f"pid {os.getpid()}"
    assert runs["d-failed"].note == "RuntimeError: CUDA error: an illegal memory access was encountered"
    assert runs["b-interrupted"].epochs_cell() == "1/2" and runs["a-empty"].best_acc is None
    assert not (tmp_path / "a-empty" / ".lock").exists()  # the probe creates nothing
    assert list(runs) == sorted(runs)


def test_a_later_attempt_supersedes_a_recorded_failure(finished, tmp_path):
    failed = _copy(finished, tmp_path, "r", epochs=1)
    rundir.record_failure(failed, ValueError("boom"))
    assert list_runs(tmp_path)[0].status == "failed"
    config = json.loads((failed / rundir.CONFIG).read_text())
    (failed / rundir.CONFIG).write_text(json.dumps({**config, "started": "2099-01-01T00:00:00+00:00"}))  # --resume
    assert list_runs(tmp_path)[0].status == "interrupted"


def test_a_real_run_stopped_then_crashed_then_resumed(tmp_path, monkeypatch):
    """Ctrl-C is an interruption, an exception a failure (the loop writes failed.json), and a finished resume is
    finished."""
    from featcache.distill import engine
    from featcache.distill.trainer import distill

    real = engine.TrainingParts.run_step
    stop: list[BaseException] = []

    def step(self, batch, epoch):
        if epoch == 1 and stop:
            raise stop[0]
        return real(self, batch, epoch)

    monkeypatch.setattr(engine.TrainingParts, "run_step", step)
    stop.append(KeyboardInterrupt())
    with pytest.raises(KeyboardInterrupt):
        distill(_cfg(tmp_path, "run"))
    [run] = list_runs(tmp_path / "run")
    assert (run.status, run.epochs_cell()) == ("interrupted", "1/2")
    stop[0] = RuntimeError("the disk went away")
    with pytest.raises(RuntimeError):
        distill(_cfg(tmp_path, "run", resume=True))
    [run] = list_runs(tmp_path / "run")
    assert (run.status, run.note, run.epochs_cell()) == ("failed", "RuntimeError: the disk went away", "1/2")
    stop.clear()
    distill(_cfg(tmp_path, "run", resume=True))
    [run] = list_runs(tmp_path / "run")
    assert (run.status, run.epochs_cell()) == ("finished", "2/2")


def test_names_labels_epochs_of_other_runs(finished, tmp_path):
    teachers = [{"key": "resnet50-synthetic-train-3f2a", "teacher": "resnet50"}, {"key": "convnet-synthetic-9c1d"}]
    _copy(finished, tmp_path, "ts", epochs=2, teachers=teachers, method="ts")
    config = json.loads((finished / rundir.CONFIG).read_text())["config"]
    _copy(finished, tmp_path, "fitnets", method="fitnets", config={**config, "epochs": 3, "hint_epochs": 2})
    teacher = _copy(finished, tmp_path, "recipe/teachers/t", epochs=2, kind="teacher", labels=None)
    (teacher / rundir.SUMMARY).write_text(json.dumps({"epochs": 2, "best_acc": 0.5, "last_acc": 0.5}))
    _copy(finished, tmp_path, ".stale/old")  # moved aside by --rerun-stale: not listed
    runs = {Path(r.path).relative_to(tmp_path).as_posix(): r for r in list_runs(tmp_path)}
    assert list(runs) == ["fitnets", "recipe/teachers/t", "ts"]
    assert runs["ts"].teachers == ["resnet50", "convnet-synthetic-9c1d"] and runs["ts"].method == "ts"
    assert runs["fitnets"].epochs_cell() == "0/5" and runs["fitnets"].status == "empty"
    t = runs["recipe/teachers/t"]
    assert (t.kind, t.labels_cell(), t.labelled_fraction, t.status) == ("teacher", "all", 1.0, "finished")
    assert runs["ts"].labels_cell() == "16/60"


def test_planned_epochs_follow_the_methods():
    assert planned_epochs({"epochs": 4}, "ts") == 4
    assert planned_epochs({"epochs": 4, "hint_epochs": None}, "fitnets") == 8  # FitNets.total_epochs
    assert planned_epochs({"epochs": 4, "hint_epochs": 1}, "fitnets") == 5
    assert planned_epochs({}, "ce") is None


def test_damaged_and_foreign_directories_are_skipped_with_one_line(finished, tmp_path):
    _copy(finished, tmp_path, "good", epochs=2)
    (tmp_path / "torn").mkdir()
    (tmp_path / "torn" / rundir.CONFIG).write_text('{"config": {"stud')
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / rundir.CONFIG).write_text('{"model_type": "bert"}')
    edited = _copy(finished, tmp_path, "edited", epochs=2)
    (edited / rundir.METRICS).write_text('{"epoch": 1, "test_acc": 0.5}\nnot json\n{"epoch": 2, "test_acc": 7}\n')
    notes: list[str] = []
    runs = list_runs(tmp_path, on_skip=notes.append)
    assert [Path(r.path).name for r in runs] == ["good"]
    assert len(notes) == 3 and all("\n" not in n for n in notes)
    assert [n.split(":")[0] for n in notes] == [str(tmp_path / d) for d in ("edited", "foreign", "torn")]


def test_the_command_prints_a_table_and_json(finished, tmp_path):
    _copy(finished, tmp_path, "b-interrupted", epochs=1)
    shutil.copytree(finished, tmp_path / "a-finished")
    (tmp_path / "c-torn").mkdir()
    (tmp_path / "c-torn" / rundir.CONFIG).write_text("{")
    r = runner.invoke(app, ["runs", "ls", str(tmp_path)], env={"COLUMNS": "200"})
    assert r.exit_code == 0, r.output
    lines = r.stdout.splitlines()
    [a] = [ln for ln in lines if "a-finished" in ln]
    [b] = [ln for ln in lines if "b-interrupted" in ln]
    assert a.split()[1:4] == ["finished", "lenet5", "ce"] and "16/60" in a and "2/2" in a
    assert "1/2" in b and "interrupted" in b and "%" in b
    assert "skipped" in r.stderr and "c-torn" in r.stderr and "Traceback" not in r.output

    r = runner.invoke(app, ["runs", "ls", str(tmp_path), "--json"])
    assert r.exit_code == 0, r.output
    listed = json.loads(r.stdout)
    assert [Path(x["path"]).name for x in listed] == ["a-finished", "b-interrupted"]
    assert list(listed[0]) == [f for f in RunInfo.__dataclass_fields__]
    assert listed[0]["status"] == "finished" and listed[0]["epochs_done"] == listed[0]["epochs_planned"] == 2
    assert listed[1]["status"] == "interrupted" and listed[1]["labelled"] == 16


def test_the_command_lists_runs_by_default_and_refuses_a_missing_dir(finished, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    one_line_error(runner.invoke(app, ["runs", "ls"]), "runs: no such directory")
    one_line_error(runner.invoke(app, ["runs", "ls", "elsewhere", "--json"]), "elsewhere: no such directory")
    (tmp_path / "runs").mkdir()
    r = runner.invoke(app, ["runs", "ls"])
    assert r.exit_code == 0 and "no runs under runs" in r.stdout
    assert json.loads(runner.invoke(app, ["runs", "ls", "--json"]).stdout) == []
    shutil.copytree(finished, tmp_path / "runs" / "x")
    assert [x["status"] for x in json.loads(runner.invoke(app, ["runs", "ls", "--json"]).stdout)] == ["finished"]


# -- the run directory's own files: names file systems take, no link or FIFO written through ------------------------
@pytest.mark.parametrize("command", ["distill", "train-teacher"])
@pytest.mark.parametrize("resume", [False, True], ids=["fresh", "resume"])
def test_a_run_dir_name_too_long_for_a_file_system_is_one_line_naming_the_flag(tmp_path, command, resume):
    (tmp_path / "runs").mkdir()  # an existing parent: the lookup of the long name itself fails
    run_dir = tmp_path / "runs" / ("x" * 300)
    args = [command, "-d", "synthetic", "-o", "num_train=60", "-o", "num_test=20", "--epochs", "1", "-b", "16",
            "--workers", "0", "--device", "cpu", "--run-dir", str(run_dir)]
    args += (["-s", "lenet5", "-m", "ce", "--cache-dir", str(tmp_path / "store")] if command == "distill"
             else ["--teacher", "convnet"])
    r = runner.invoke(app, args + (["--resume"] if resume else []))
    one_line_error(r, "--run-dir", "300 bytes long", "more than the 255 a file name may have")
    assert os.listdir(tmp_path / "runs") == []


def test_runs_ls_of_a_name_too_long_for_a_file_system_is_one_line(tmp_path):
    one_line_error(runner.invoke(app, ["runs", "ls", str(tmp_path / ("x" * 300))]), "cannot be read",
                   "File name too long")


@pytest.mark.parametrize("planted", ["symlink", "fifo"])
def test_metrics_are_never_appended_through_a_link_or_into_a_fifo_planted_in_their_place(tmp_path, planted):
    from featcache.errors import StorageError

    victim = tmp_path / "victim.txt"
    victim.write_text("someone else's file\n")
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    if planted == "symlink":
        (run_dir / rundir.METRICS).symlink_to(victim)
    else:
        os.mkfifo(run_dir / rundir.METRICS)
    with within(10), pytest.raises(StorageError, match="symbolic link or not a regular file"):
        rundir.append_metrics(run_dir, {"epoch": 1})  # a FIFO nobody reads: refused at once, not waited on
    assert victim.read_text() == "someone else's file\n"
    (run_dir / rundir.METRICS).unlink()
    rundir.append_metrics(run_dir, {"epoch": 1})
    rundir.append_metrics(run_dir, {"epoch": 2})
    assert [r["epoch"] for r in rundir.read_metrics(run_dir)] == [1, 2]


def test_json_nested_100k_deep_in_a_run_directory_is_one_line_or_one_run_skipped(finished_run, tmp_path):
    """config.json, metrics.jsonl, summary.json or failed.json nested deep: `runs ls` lists the other runs and
    names the damaged ones; report, eval and --resume say which file in one line."""
    import shutil

    runs = tmp_path / "runs"
    files = {"config": "config.json", "metrics": "metrics.jsonl", "summary": "summary.json", "failed": "failed.json"}
    shutil.copytree(finished_run, runs / "good")
    for name, file in files.items():
        shutil.copytree(finished_run, runs / name)
        text = (finished_run / file).read_text() if (finished_run / file).is_file() else ""
        (runs / name / file).write_text(DEEP_JSON + "\n" + text if file == "metrics.jsonl" else DEEP_JSON)
    (runs / "failed" / "summary.json").unlink()  # a finished run's failed.json says nothing: this one is read
    r = invoke("runs", "ls", runs)
    assert r.exit_code == 0 and "Traceback" not in r.output, r.output
    flat = " ".join(r.output.split())
    assert "good" in flat and "finished" in flat
    for name, file in files.items():
        assert f"{runs / name / file}" in flat, (name, flat)
    for name, file in files.items():
        if name != "failed":  # report reads no failed.json
            one_line_error(invoke("report", runs / name), file)
        if name in ("config", "metrics"):
            one_line_error(invoke("distill", *SYN_DISTILL, "--method", "ce", "--epochs", "2", "--run-dir", runs / name,
                                  "--resume"), file)
    one_line_error(invoke("eval", runs / "config"), "config.json")
    one_line_error(invoke("report", runs), "nested deeper than")


@pytest.mark.parametrize("columns", [60, 80, 200])
def test_the_listing_never_drops_the_run_name_or_a_column_at_any_width(finished, tmp_path, columns):
    names = ["cpu-cifar10-pool/convnet_small-ts-translator-resnet18-labels3000-s2",
             "cpu-cifar10-pool/convnet_small-kd-resnet18-labels3000-s0"]
    for name in names:
        _copy(finished, tmp_path, name, epochs=1)
    r = runner.invoke(app, ["runs", "ls", str(tmp_path)], env={"COLUMNS": str(columns)})
    assert r.exit_code == 0, r.output
    lines = r.stdout.splitlines()
    assert all(len(ln.rstrip()) <= columns or any(n in ln for n in names) for ln in lines[1:]), r.stdout
    first = f"{rundir.read_metrics(finished)[0]['test_acc']:.1%}"  # the copies hold the real run's first epoch
    for cell in ("interrupted", "lenet5", "ce", "1/2", first):
        assert r.stdout.count(cell) >= 2, r.stdout  # every column of both runs
    if "status" in lines[1]:  # a table: the name may fold within its column, never be cut or dropped
        width = lines[1].index("status")
        column = "".join(ln[:width].strip() for ln in lines[3:])
        assert all(name in column for name in names), r.stdout
        assert columns != 60  # too narrow for the columns: blocks
    else:  # blocks: each name whole on a line of its own
        assert all(name in lines for name in names), r.stdout
        assert columns != 200  # wide enough: one table
