"""The command line: thin wrappers, one-line errors, exit codes."""

import json
from functools import partial
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from featcache.cli import app
from helpers import one_line_error as _one_line_error
from helpers import shows_whole

runner = CliRunner()
one_line_error = partial(_one_line_error, alone=True)  # here the error line is all a command prints
SYN = ["--dataset", "synthetic", "-o", "num_train=48", "-o", "num_test=16", "--image-size", "32", "--workers", "0"]


def invoke(*args):
    return runner.invoke(app, list(args))


@pytest.mark.slow
def test_extract_then_cache_commands(home):
    r = invoke("extract", "--teacher", "resnet18", "--weights", "random", *SYN, "--noise", "8")
    assert r.exit_code == 0, r.output
    assert "48 rows + 8 noise" in r.output and "img/s" in r.output
    key = r.output.split("cache ")[1].split(":")[0].strip()
    again = invoke("extract", "--teacher", "resnet18", "--weights", "random", *SYN, "--noise", "8")
    assert again.exit_code == 0 and "nothing to do" in again.output

    ls = invoke("cache", "ls", "--json")
    assert ls.exit_code == 0
    listed = json.loads(ls.output)
    assert listed[0]["key"] == key and listed[0]["rows"] == {"data": 48, "noise": 8}
    assert invoke("cache", "ls").exit_code == 0

    info = invoke("cache", "info", key[:18], "--json")
    assert info.exit_code == 0 and json.loads(info.output)["teacher"]["num_features"] == 512
    human = invoke("cache", "info", key)
    assert human.exit_code == 0 and "resnet18" in human.output

    ok = invoke("cache", "verify", key)
    assert ok.exit_code == 0 and "ok" in ok.output
    shard = next((home / key).glob("data-*.h5"))
    shard.write_bytes(shard.read_bytes()[:-10] + b"0123456789")
    bad = invoke("cache", "verify")
    assert bad.exit_code == 1 and "corrupt" in bad.output

    rm = invoke("cache", "rm", key)
    assert rm.exit_code == 0 and not (home / key).exists()
    assert "no caches" in invoke("cache", "ls").output


def test_unknown_teacher(home):
    one_line_error(invoke("extract", "--teacher", "resnet5000", *SYN), "unknown teacher 'resnet5000'", "--teacher")


def test_missing_data_root(home, tmp_path):
    one_line_error(invoke("extract", "--teacher", "resnet18", "--dataset", "cifar10"), "--data-root")
    one_line_error(
        invoke("extract", "--teacher", "resnet18", "--dataset", "cifar10", "--data-root", str(tmp_path / "nope")),
        str(tmp_path / "nope"),
    )


def test_unreadable_checkpoint(home, tmp_path):
    bad = tmp_path / "teacher.pt"
    bad.write_text("garbage")
    one_line_error(invoke("extract", "--teacher", "resnet18", "--weights", str(bad), *SYN), str(bad), "checkpoint")


@pytest.mark.slow
def test_checkpoint_for_another_architecture(home, tmp_path):
    import torchvision

    path = tmp_path / "r18.pt"
    torch.save(torchvision.models.resnet18(num_classes=3).state_dict(), path)
    one_line_error(invoke("extract", "--teacher", "resnet50", "--weights", str(path), *SYN), "does not fit")


@pytest.mark.parametrize(
    "args,needle",
    [
        (["--dataset", "imagenet22k"], "unknown dataset"),
        (["--split", "val", *SYN], "--split"),
        (["--precision", "fp8", *SYN], "--precision"),
        (["--dtype", "int4", *SYN], "--dtype"),
        (["-o", "nonsense", *SYN], "--dataset-opt"),
        (["--image-size", "10", "--dataset", "synthetic"], "--image-size"),
        (["--device", "cuda:0", *SYN], "--device"),
    ],
)
def test_flag_errors_are_one_line(home, args, needle):
    if needle == "--device" and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    one_line_error(invoke("extract", "--teacher", "resnet18", "--weights", "random", *args), needle)


def test_cache_commands_on_missing_keys(home):
    one_line_error(invoke("cache", "info", "nothing-here"), "no cache 'nothing-here'")
    one_line_error(invoke("cache", "rm", "nothing-here"), "featcache cache ls")


def test_debug_env_shows_traceback(home, monkeypatch):
    monkeypatch.setenv("FEATCACHE_DEBUG", "1")
    result = invoke("extract", "--teacher", "resnet5000", *SYN)
    assert result.exit_code != 0 and result.exception is not None


def test_listings():
    r = invoke("teachers")
    assert r.exit_code == 0 and "nts-net" in r.output and "inceptionv3" in r.output
    r = invoke("datasets")
    assert r.exit_code == 0 and all(n in r.output for n in ("cifar10", "cub200", "sod", "folder", "synthetic"))


@pytest.mark.parametrize("columns", [60, 80, 200])
def test_the_listings_keep_every_name_and_its_description_at_any_width(columns):
    from featcache.models.registry import get_entry
    from featcache.models.students import list_students

    names = list_students()
    r = CliRunner().invoke(app, ["students"], env={"COLUMNS": str(columns)})
    assert r.exit_code == 0, r.output
    assert shows_whole(r.output, names), r.output
    prose = " ".join(r.output.split())
    assert all(" ".join(get_entry("student", n).description.split()) in prose for n in names), r.output
    assert all(len(ln) <= columns for ln in r.output.splitlines() if ln not in names), r.output
    r = CliRunner().invoke(app, ["datasets"], env={"COLUMNS": str(columns)})
    assert shows_whole(r.output, ("cifar10", "folder", "synthetic")), r.output
    assert "train_per_class=None" in r.output and all(len(ln) <= columns for ln in r.output.splitlines()), r.output


def test_python_dash_m_entry_point():
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-m", "featcache", "--help"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "extract" in r.stdout


def test_distill_help_names_every_registered_student():
    from featcache.cli import STUDENTS_HELP
    from featcache.models.students import list_students

    named = {w.strip(" ,.") for w in STUDENTS_HELP.split("(")[0].split(",")}
    assert named == set(list_students())


def test_distill_help_names_every_registered_method():
    from featcache.config import METHODS_HELP
    from featcache.distill.methods import METHODS

    named = {w.strip(" ,.") for w in METHODS_HELP.split("(")[0].split(",")}
    assert named == set(METHODS)


@pytest.mark.parametrize("command,args,needle", [
    ("distill", ["--seed", "-1", "-o", "num_train=20"], "--seed must lie in [0, 4294967295], got -1"),
    ("train-teacher", ["--teacher", "convnet", "--init", "random", "--seed", "-3"], "--seed must lie in"),
    ("extract", ["--teacher", "convnet", "--weights", "random", "--seed", "-1"], "--seed must lie in"),
    ("extract", ["--teacher", "convnet", "--weights", "random", "--noise-seed", "-1"], "--noise-seed must lie in"),
    ("extract", ["--teacher", "convnet", "--weights", "random", "--view-seed", str(2**32)], "--view-seed must lie in"),
    ("split-classes", ["--seed", "-1", "-o", "num_classes=4"], "--seed must lie in"),
])
def test_a_seed_numpy_cannot_take_is_one_line(home, tmp_path, command, args, needle):
    """A negative seed used to reach numpy's seeding deep inside data loading and end in a ValueError traceback."""
    one_line_error(invoke(command, *args, *(["--out", str(tmp_path)] if command == "split-classes" else [])), needle)
    assert not list(tmp_path.glob("part*.txt"))


def test_amalgamate_refuses_a_seed_numpy_cannot_take():
    from featcache.distill.amalgamate import AmalgamateConfig, amalgamate
    from featcache.errors import ConfigError

    with pytest.raises(ConfigError, match=r"--seed must lie in \[0, 4294967295\], got -1"):
        amalgamate(AmalgamateConfig(teachers=["x"], parts={"a": ["c0"]}, seed=-1), log=lambda m: None)


def test_every_config_field_is_reachable_from_the_cli_and_from_recipes():
    """Every field of ExtractConfig / DistillConfig / TeacherConfig is an option of its command as the user sees it
    (the click command typer builds), under the flag its Flag declares, and is accepted by recipes unless it says the
    recipe sets it itself; the few exceptions are named here, so a field added without a flag fails."""
    from dataclasses import fields

    import typer

    from featcache import pipeline
    from featcache.config import DistillConfig, ExtractConfig, TeacherConfig
    from featcache.config.flags import flag_name, flag_of

    library_only = {"channels_last"}  # a layout switch for experiments, not a user flag
    set_by_recipes = {"tag", "classes"}  # a distill block's tag; amalgamate's component-net class lists
    recipe_sets = {"teacher", "dataset", "data_root", "split", "dataset_options", "weights", "student", "teachers",
                   "method", "seed", "cache_dir", "run_dir", "resume", "force", "wait", "device", "workers",
                   "stores"}  # [pipeline] stores
    group = typer.main.get_command(app)
    for name, cls, recipe_fields in (
        ("extract", ExtractConfig, pipeline.EXTRACT_FIELDS),
        ("distill", DistillConfig, pipeline.DISTILL_FIELDS),
        ("train-teacher", TeacherConfig, pipeline.TRAIN_FIELDS),
    ):
        command = group.commands[name]
        options = {opt for p in command.params for opt in p.opts}
        for f in fields(cls):
            if f.name in library_only or (cls is DistillConfig and f.name in set_by_recipes):
                assert not flag_of(f).cli, f"{cls.__name__}.{f.name} is listed as having no flag"
                continue
            assert flag_of(f).cli and flag_name(f) in options, f"{cls.__name__}.{f.name} has no CLI flag"
            assert f.name in recipe_fields or f.name in recipe_sets, f"{cls.__name__}.{f.name} is refused by recipes"
            if f.name in recipe_fields:
                assert flag_of(f).recipe


def test_a_generated_option_round_trips_into_its_config(tmp_path, monkeypatch):
    """What the user types reaches the config field unchanged in meaning: repeatable, comma-list, key=value and
    negatable flags, through the generated options (the library is replaced by a recorder)."""
    import featcache.distill.trainer as trainer
    from featcache.distill.trainer import DistillSummary

    seen = {}

    def record(config, reporter=None):
        seen["config"] = config
        return DistillSummary(tmp_path, 0.5, 1, 0.5, 1, 1.0, 1.0, [], "ts", config.student)

    monkeypatch.setattr(trainer, "distill", record)
    r = invoke("distill", "-s", "lenet5", "-t", "a", "--teacher", "b", "-o", "num_train=50", "-o", "tag=x",
               "--student-blocks", "layer2, layer3", "--no-views", "--no-small-input", "--lr", "0.5",
               "--split-file", str(tmp_path / "s.txt"), "--epochs", "3")
    assert r.exit_code == 0, r.output
    c = seen["config"]
    assert c.student == "lenet5" and c.teachers == ["a", "b"] and c.epochs == 3 and c.lr == 0.5
    assert c.dataset_options == {"num_train": 50, "tag": "x", "split_file": tmp_path / "s.txt"}
    assert c.student_blocks == ["layer2", "layer3"] and c.views is False and c.small_input is False


def test_extract_command_line_reproduces_its_config():
    from featcache.config import ExtractConfig

    c = ExtractConfig(teacher="resnet18", dataset="cifar10", blocks=["layer2", "layer3"], pool=2, views=4,
                      dataset_options={"train_per_class": 30}, workers=3, cache_dir=Path("/x"), wait=False)
    line = c.command()
    assert line.startswith("featcache extract --teacher resnet18 --dataset cifar10")
    assert "--blocks layer2,layer3" in line and "--pool 2" in line and "--views 4" in line
    assert "--dataset-opt train_per_class=30" in line
    # how and where it ran is not part of what it produced
    assert "--workers" not in line and "--cache-dir" not in line and "--no-wait" not in line



def test_a_dataset_option_the_dataset_does_not_declare_is_one_line_naming_it_and_the_options():
    r = invoke("extract", "-t", "resnet18", "-w", "random", "-o", "num_trian=50")
    assert r.exit_code == 2, r.output
    assert "'num_trian'" in r.output and "num_train" in r.output and "Traceback" not in r.output
    r = invoke("datasets")
    assert r.exit_code == 0 and "train_per_class" in r.output and "holdout" in r.output


@pytest.mark.parametrize("exc", [
    RuntimeError("[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate memory: you tried "
                 "to allocate 30000000000 bytes. Error code 12 (Cannot allocate memory)"),
    MemoryError("Unable to allocate 27.9 GiB for an array with shape (20, 3, 100000, 100000)"),
    torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB"),
])
def test_running_out_of_memory_is_one_line_that_says_what_to_lower(home, monkeypatch, exc):
    """An allocation failure deep in torch or numpy was a page of traceback; it is one line with what to change."""
    import featcache.distill.trainer as trainer

    def oom(*a, **k):
        raise exc

    monkeypatch.setattr(trainer, "distill", oom)
    monkeypatch.delenv("FEATCACHE_DEBUG", raising=False)
    line = one_line_error(invoke("distill", "--epochs", "1", "-o", "num_train=20"), "out of memory", "--batch-size")
    assert "allocate" in line
    monkeypatch.setattr(trainer, "distill", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("shape mismatch")))
    assert isinstance(invoke("distill", "--epochs", "1", "-o", "num_train=20").exception, RuntimeError)


def test_an_image_size_above_the_pixel_limit_is_one_line(home):
    for command, args in (("distill", ["--image-size", "100000"]), ("extract", ["--teacher", "convnet", "--weights",
                                                                                 "random", "--resize", "20000"])):
        one_line_error(invoke(command, *args, "-o", "num_train=20"), "above the 89,478,485-pixel limit")


def test_a_worker_count_that_would_fork_the_machine_down_is_one_line(home, tmp_path):
    """--workers 100000 used to start forking (torch only warns); eval --batch-size 0 was a traceback."""
    for command, args in (("distill", []), ("extract", ["--teacher", "convnet", "--weights", "random"])):
        one_line_error(invoke(command, *args, "--workers", "100000", "-o", "num_train=20"), "--workers 100000: at most")
    run = tmp_path / "run"
    assert invoke("distill", "--epochs", "1", "-o", "num_train=20", "-o", "num_test=20", "--run-dir", str(run),
                  "--workers", "0").exit_code == 0
    one_line_error(invoke("eval", str(run), "--workers", "100000"), "--workers 100000: at most")
    one_line_error(invoke("eval", str(run), "--batch-size", "0"), "--batch-size must be >= 1, got 0")


def test_a_command_line_parses_back_to_its_config_and_nothing_else_does():
    """flags.parse_command_line is command_line's inverse: what it writes parses back to the same config (so a
    recorded command can be shown as command_line of what it parses to); anything else is None."""
    from featcache.config import ExtractConfig
    from featcache.config.flags import parse_command_line

    cfg = ExtractConfig(teacher="timm:vit_tiny", dataset="folder", data_root=Path("/d a/t"), dtype="int8",
                        blocks=["layer1", "layer2"], dataset_options={"holdout": 0.1, "x": "a b"}, noise=8, views=2)
    back = parse_command_line(ExtractConfig, "extract", cfg.command())
    assert back is not None and back.command() == cfg.command() and back.blocks == ["layer1", "layer2"]
    assert back.noise == 8 and back.dataset_options == {"holdout": 0.1, "x": "a b"}
    short = parse_command_line(ExtractConfig, "extract", "featcache extract -t convnet -o num_train=4 --noise=3")
    assert (short.teacher, short.dataset_options, short.noise) == ("convnet", {"num_train": 4}, 3)
    for text in ("rm -rf ~", "featcache distill --teacher x", "featcache extract --teacher x; rm -rf ~",
                 "featcache extract --teacher x --unknown 1", "featcache extract --noise many",
                 "featcache extract --teacher", "featcache extract stray", "featcache extract --teacher 'x"):
        assert parse_command_line(ExtractConfig, "extract", text) is None, text


def test_the_command_line_sets_a_short_openmp_spin_unless_given():
    """The CLI (not the library: tests/test_api.py) sets GOMP_SPINCOUNT before torch loads."""
    import os
    import subprocess
    import sys

    code = "import featcache.cli, os; print(os.environ.get('GOMP_SPINCOUNT'), os.environ.get('OMP_WAIT_POLICY'))"
    env = {k: v for k, v in os.environ.items() if k not in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY")}
    run = lambda extra: subprocess.run([sys.executable, "-c", code], env={**env, **extra}, capture_output=True,  # noqa: E731
                                       text=True, check=True).stdout.split()
    assert run({}) == ["10000", "None"]  # docs/benchmarks.md, "Distill end to end"
    assert run({"OMP_WAIT_POLICY": "ACTIVE"}) == ["None", "ACTIVE"]  # an explicit choice wins


@pytest.mark.parametrize("cli", [False, True])
def test_library_warnings_reach_stderr_through_logging_except_under_the_cli(cli):
    import subprocess
    import sys

    code = ("import logging\n" + ("import featcache.cli\n" if cli else "")
            + "logging.getLogger('featcache.distill.loop').warning('no teacher: the student trains alone')")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and ("no teacher" in r.stderr) is not cli, r.stderr


def test_cache_info_prints_the_whole_view(home, folder_tree):
    from helpers import FOLDER_EXTRACT, folder_extract_key

    assert FOLDER_EXTRACT[1] == "convnet"
    key = folder_extract_key("--data-root", folder_tree / "train", "--resize", "40", "--resize-mode", "shorter")
    info = " ".join(invoke("cache", "info", key).output.replace("│", " ").split())  # the table's wrapping undone
    assert "32 px: resize 40 (shorter side, bilinear) + centre crop 32, ImageNet mean/std" in info


class _Ended(Exception):
    pass


def _fake_exit(status: int):
    raise _Ended(status)


@pytest.mark.parametrize("code, status", [(None, 0), (0, 0), (2, 2), ("a message", 1)])
def test_a_finished_command_ends_without_the_interpreter_teardown(monkeypatch, capsys, code, status):
    import featcache.cli as cli

    monkeypatch.delenv("FEATCACHE_FULL_EXIT", raising=False)
    monkeypatch.setattr(cli, "_observed", lambda: False)  # (a coverage run of the suite watches this process)
    ran = []
    monkeypatch.setattr(cli.atexit, "_run_exitfuncs", lambda: ran.append(True))
    monkeypatch.setattr(cli.os, "_exit", _fake_exit)
    with pytest.raises(_Ended) as ended:
        cli.finish(code)
    assert ended.value.args == (status,) and ran == [True]  # the exit handlers ran first
    assert ("a message" in capsys.readouterr().err) == (code == "a message")


def test_a_live_writer_thread_or_the_env_gets_the_normal_exit(monkeypatch):
    import threading

    import featcache.cli as cli

    monkeypatch.setattr(cli.os, "_exit", _fake_exit)
    release = threading.Event()
    writer = threading.Thread(target=release.wait)
    writer.start()
    try:
        with pytest.raises(SystemExit) as stop:
            cli.finish(3)
        assert stop.value.code == 3
    finally:
        release.set()
        writer.join()
    monkeypatch.setenv("FEATCACHE_FULL_EXIT", "1")
    with pytest.raises(SystemExit):
        cli.finish(0)


def test_the_entry_point_flushes_a_piped_output_and_keeps_the_exit_code(tmp_path):
    import subprocess
    import sys

    # torch imported: the fast end is taken; a pipe's buffered output must still arrive whole
    code = ("import torch, sys; from featcache.cli import main; sys.argv = ['featcache'] + sys.argv[1:]; main()")
    ok = subprocess.run([sys.executable, "-c", code, "cache", "ls", "--cache-dir", str(tmp_path)], capture_output=True,
                        text=True, timeout=120)
    assert ok.returncode == 0 and str(tmp_path) in ok.stdout and ok.stdout.endswith("\n"), ok.stdout
    bad = subprocess.run([sys.executable, "-c", code, "cache", "info", "nokey", "--cache-dir", str(tmp_path)],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "nokey" in bad.stderr


def test_a_profiled_command_returns_to_its_profiler(tmp_path):
    import subprocess
    import sys

    out = tmp_path / "prof.out"
    code = ("import torch, sys, cProfile; from featcache.cli import main; "
            f"sys.argv = ['featcache', 'cache', 'ls', '--cache-dir', {str(tmp_path)!r}]; "
            f"cProfile.run('main()', {str(out)!r})")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and out.stat().st_size > 0, r.stderr
