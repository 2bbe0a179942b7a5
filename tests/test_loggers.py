"""--log: TensorBoard event files read back with tensorboard's own reader and compared with metrics.jsonl, hparams,
a lab's own logger (MODULE:CLASS), and one-line errors for what cannot work."""

import json
import os
import re
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from featcache.cli import app
from featcache.config import DistillConfig, TeacherConfig
from featcache.errors import ConfigError
from featcache.runs.loggers import TENSORBOARD_DIR, TensorBoardLogger, scalar_tag, scalars
from helpers import SYN, one_line_error

pytest.importorskip("tensorboard")
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402
from tensorboard.plugins.hparams import plugin_data_pb2  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()


def distill_args(resnet18_store, run_dir, *more):
    return ["distill", "-s", "lenet5", "-d", "synthetic", "-o", "num_train=64", "-o", "num_test=32", "-t", "resnet18",
            "-m", "ts", "--epochs", "2", "-b", "16", "--workers", "0", "--cache-dir", str(resnet18_store),
            "--run-dir", str(run_dir), *more]


@pytest.fixture(scope="module")
def tb_run(resnet18_store, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("tb") / "run"
    r = runner.invoke(app, distill_args(resnet18_store, run_dir, "--log", "tensorboard,jsonl"))
    assert r.exit_code == 0, r.output
    events = EventAccumulator(str(run_dir / TENSORBOARD_DIR))
    events.Reload()
    return run_dir, events


def test_every_number_of_metrics_jsonl_is_a_tensorboard_scalar_of_its_epoch(tb_run):
    run_dir, events = tb_run
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2]
    expected = {}  # tag -> {step: value}
    for r in records:
        for tag, value in scalars(r).items():
            expected.setdefault(tag, {})[r["epoch"]] = value
    # the method's loss terms, the accuracies, the learning rate and the speed are among them
    assert {"loss/train", "loss/mse", "loss/xent", "loss/test", "acc/train", "acc/test", "lr",
            "speed/images_per_s"} <= set(expected)
    assert scalar_tag("train_mse") == "loss/mse" and scalar_tag("test_acc") == "acc/test"
    assert set(events.Tags()["scalars"]) == set(expected) | {"final/best_acc", "final/last_acc"}
    for tag, by_step in expected.items():
        got = {e.step: e.value for e in events.Scalars(tag)}
        assert got == {step: float(np.float32(v)) for step, v in by_step.items()}, tag


def test_the_run_config_is_its_hparams_with_the_final_accuracies(tb_run):
    run_dir, events = tb_run
    summary = json.loads((run_dir / "summary.json").read_text())
    content = events.PluginTagToContent("hparams")
    start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"]).session_start_info
    hp = {k: v.WhichOneof("kind") and getattr(v, v.WhichOneof("kind")) for k, v in start.hparams.items()}
    assert hp["student"] == "lenet5" and hp["method"] == "ts" and hp["epochs"] == 2 and hp["teachers"] == "resnet18"
    assert hp["lr"] == pytest.approx(1e-3) and hp["log"] == "tensorboard,jsonl"
    experiment = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"]).experiment
    assert {m.name.tag for m in experiment.metric_infos} == {"final/best_acc", "final/last_acc"}
    for key in ("best_acc", "last_acc"):
        [event] = events.Scalars(f"final/{key}")
        assert (event.step, event.value) == (2, float(np.float32(summary[key])))


def test_a_resumed_attempt_replaces_what_the_interrupted_one_logged_from_its_epoch_on(tmp_path):
    first = TensorBoardLogger()
    first.start(tmp_path, {"lr": 0.1})
    for epoch in (1, 2, 3):
        first.log_epoch(epoch, {"epoch": epoch, "test_acc": 0.1 * epoch})
    first.close()  # killed after epoch 3, its checkpoint says epoch 1
    second = TensorBoardLogger()
    second.start(tmp_path, {"lr": 0.1})
    for epoch in (2, 3):
        second.log_epoch(epoch, {"epoch": epoch, "test_acc": 0.5 + 0.1 * epoch})
    second.finish({"epochs": 3, "best_acc": 0.8, "last_acc": 0.8})
    events = EventAccumulator(str(tmp_path / TENSORBOARD_DIR))
    events.Reload()
    got = [(e.step, round(e.value, 4)) for e in events.Scalars("acc/test")]
    assert got == [(1, 0.1), (2, 0.7), (3, 0.8)]


@pytest.mark.parametrize("planted", ["symlink", "file"])
def test_tensorboard_never_writes_through_what_is_planted_as_its_folder(tmp_path, planted):
    from featcache.errors import StorageError

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    if planted == "symlink":
        (run_dir / TENSORBOARD_DIR).symlink_to(elsewhere)
    else:
        (run_dir / TENSORBOARD_DIR).write_text("not a folder")
    with pytest.raises(StorageError, match="symbolic link or not a directory"):
        TensorBoardLogger().start(run_dir, {"lr": 0.1})
    assert list(elsewhere.iterdir()) == []


MLFLOW_STUB = """
CALLS = []
def start_run(**kw): CALLS.append(("start_run", kw))
def log_params(params): CALLS.append(("log_params", params))
def log_metrics(metrics, step=None): CALLS.append(("log_metrics", metrics, step))
def end_run(): CALLS.append(("end_run",))
"""


def test_the_documented_mlflow_logger_hears_the_start_every_epoch_and_the_end(resnet18_store, tmp_path, monkeypatch):
    """docs/pipelines.md's example, as written there, plugged in by --log MODULE:CLASS (mlflow replaced by a stub)."""
    from featcache.distill.trainer import distill

    doc = (ROOT / "docs" / "pipelines.md").read_text()
    (tmp_path / "lab_loggers.py").write_text(re.search(r"```python\n(# lab_loggers.py.*?)```", doc, re.S).group(1))
    (tmp_path / "mlflow.py").write_text(MLFLOW_STUB)
    monkeypatch.syspath_prepend(str(tmp_path))
    for name in ("lab_loggers", "mlflow"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    run_dir = tmp_path / "run"
    distill(DistillConfig(student="lenet5", dataset="synthetic", dataset_options=dict(SYN), method="ce", epochs=2,
                          batch_size=32, workers=0, cache_dir=resnet18_store, run_dir=run_dir,
                          log=["lab_loggers:MLflowLogger"]))
    calls = sys.modules["mlflow"].CALLS
    for name in ("lab_loggers", "mlflow"):
        monkeypatch.delitem(sys.modules, name)
    assert [c[0] for c in calls] == ["start_run", "log_params", "log_metrics", "log_metrics", "log_metrics", "end_run"]
    assert calls[0][1] == {"run_name": "run"}
    assert calls[1][1]["student"] == "lenet5" and calls[1][1]["method"] == "ce" and calls[1][1]["epochs"] == 2
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]  # still written
    numbers = [{k: v for k, v in r.items() if isinstance(v, (int, float))} for r in records]
    assert [(c[1], c[2]) for c in calls[2:4]] == [(numbers[0], 1), (numbers[1], 2)]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert calls[4][1] == {"best_acc": summary["best_acc"], "last_acc": summary["last_acc"]}
    assert not (run_dir / TENSORBOARD_DIR).exists()


@pytest.mark.parametrize("name,needles", [
    ("nope", ("--log nope: unknown logger", "jsonl, tensorboard", "MODULE:CLASS")),
    ("no_such_module_xyz:Logger", ("--log no_such_module_xyz:Logger: cannot import no_such_module_xyz",)),
    ("json:loads", ("--log json:loads: not a logger class",)),
])
def test_a_logger_that_cannot_work_is_a_one_line_error_before_anything_runs(tmp_path, name, needles):
    r = runner.invoke(app, distill_args(tmp_path / "store", tmp_path / "run", "--log", f"jsonl,{name}"))
    one_line_error(r, *needles)
    assert not (tmp_path / "run").exists()


BROKEN = """
import os
from featcache.runs.loggers import Logger

def _maybe(where):
    if os.environ["BROKEN_LOGGER_AT"] == where:
        raise ValueError(f"no tracking server \\x1b[31m({where})")

class Broken(Logger):
    def __init__(self): _maybe("__init__")
    def start(self, run_dir, config): _maybe("start")
    def log_epoch(self, epoch, record): _maybe("log_epoch")
    def finish(self, summary): _maybe("finish")
    def close(self): _maybe("close")
"""


@pytest.mark.parametrize("where", ["__init__", "start", "log_epoch", "finish", "close"])
def test_a_logger_that_raises_stops_the_run_in_one_line_naming_it(resnet18_store, tmp_path, monkeypatch, where):
    """A lab's own logger (anyone's code) raising at any point: one line saying which logger, where and what it
    raised (escaped), exit status 2, and the failure recorded in failed.json like any other."""
    (tmp_path / "broken_logger.py").write_text(BROKEN)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "broken_logger", raising=False)
    monkeypatch.setenv("BROKEN_LOGGER_AT", where)
    run_dir = tmp_path / "run"
    r = runner.invoke(app, distill_args(resnet18_store, run_dir, "--log", "broken_logger:Broken"))
    sys.modules.pop("broken_logger", None)
    line = one_line_error(r, "--log broken_logger:Broken", f"raised ValueError in {where}", "no tracking server",
                          "drop it from --log")
    assert "\x1b" not in line and "\\e[31m" in line
    failure = json.loads((run_dir / "failed.json").read_text())
    assert failure["error"] == "ConfigError" and "broken_logger:Broken" in failure["message"]
    metrics = run_dir / "metrics.jsonl"
    epochs = [json.loads(x)["epoch"] for x in metrics.read_text().splitlines()] if metrics.exists() else []
    assert epochs == ([1] if where == "log_epoch" else [1, 2] if where in ("finish", "close") else [])


def test_a_logger_module_that_raises_on_import_is_one_line_before_anything_runs(tmp_path, monkeypatch):
    (tmp_path / "broken_import.py").write_text("raise RuntimeError('needs a token')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "broken_import", raising=False)
    r = runner.invoke(app, distill_args(tmp_path / "store", tmp_path / "run", "--log", "broken_import:Logger"))
    one_line_error(r, "--log broken_import:Logger", "raised RuntimeError in importing broken_import", "needs a token")
    assert not (tmp_path / "run").exists()


def test_without_the_tensorboard_package_the_error_says_what_to_install(monkeypatch):
    import importlib.util

    from featcache.distill.setup import validate

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "tensorboard" else real(name, *a))
    with pytest.raises(ConfigError, match=r"pip install 'featcache\[tensorboard\]'"):
        validate(DistillConfig(log=["tensorboard"]))


def test_train_teacher_and_recipes_take_the_option_too():
    from featcache.config.flags import check_value
    from featcache.teach import validate

    assert DistillConfig().log == ["jsonl"] and TeacherConfig(teacher="resnet18").log == ["jsonl"]
    assert validate(TeacherConfig(teacher="resnet18", dataset="synthetic", log=["tensorboard"])).log == ["tensorboard"]
    with pytest.raises(ConfigError, match="--log nope"):
        validate(TeacherConfig(teacher="resnet18", dataset="synthetic", log=["nope"]))
    assert check_value(DistillConfig, "log", "tensorboard,jsonl", "log") == ["tensorboard", "jsonl"]


@pytest.mark.slow  # a process of its own: ~5 s
def test_a_command_ended_without_the_interpreter_teardown_leaves_every_file_whole(resnet18_store, tmp_path):
    """`python -m featcache distill` ends with os._exit after its exit handlers: the event file, metrics, summary and
    checkpoints it wrote must all be complete on disk (nothing left to a teardown that no longer happens)."""
    import subprocess
    import sys

    from featcache.distill.evaluation import evaluate_run

    run_dir = tmp_path / "run"
    r = subprocess.run([sys.executable, "-m", "featcache", *distill_args(resnet18_store, run_dir, "--log",
                                                                         "tensorboard,jsonl")],
                       capture_output=True, text=True, timeout=300, env={**os.environ, "FEATCACHE_FULL_EXIT": "0"})
    assert r.returncode == 0, r.stderr
    events = EventAccumulator(str(run_dir / TENSORBOARD_DIR))
    events.Reload()
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [e.step for e in events.Scalars("acc/test")] == [1, 2] == [m["epoch"] for m in records]
    assert {"final/best_acc", "final/last_acc"} <= set(events.Tags()["scalars"])  # written last, at the run's end
    summary = json.loads((run_dir / "summary.json").read_text())
    assert evaluate_run(run_dir, checkpoint="last", device="cpu", workers=0).acc == summary["last_acc"]
