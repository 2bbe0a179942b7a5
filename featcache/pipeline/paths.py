"""Where a recipe's errors point and how its values resolve: paths against the recipe file's own folder, weights,
dataset options and class lists checked as their flags are."""

from __future__ import annotations

import os
import typing
from pathlib import Path, PurePosixPath
from typing import Any

from featcache.config.flags import check_type
from featcache.errors import ConfigError
from featcache.util.fileio import printable


def expand(value: str) -> str:
    return os.path.expandvars(os.path.expanduser(value))


def inside_runs(value: str, label: str) -> None:
    """A file a recipe writes ([report] markdown / plot) stays inside its runs folder: a recipe from someone else
    must not choose a file anywhere to replace. Elsewhere is the user's to say, on the command line."""
    name = PurePosixPath(value)
    if (not value.strip() or value.startswith(("/", "~")) or "$" in value or "\\" in value or ".." in name.parts
            or name.name in ("", ".") or value.endswith("/")):
        raise ConfigError(f"{label} {printable(value)!r}: a recipe's report is written inside its runs folder: name "
                          "a file relative to it without '..', '~' or '$' (e.g. 'report.md'); to write one elsewhere, "
                          "run `featcache report RUNS --markdown FILE --plot FILE`")


def check_names(runs_dir: Path, runs_label: str, run_names: dict[str, str], where: str) -> None:
    """Every directory a recipe makes has a name file systems take (at most NAME_MAX bytes): one line now, not an
    OSError once the stages before it have trained. ``run_names``: each run directory's name -> what sets it."""
    from featcache.runs.rundir import NAME_MAX

    def size(name: str) -> int:
        return len(os.fsencode(name))

    for part in runs_dir.parts:
        if size(part) > NAME_MAX:
            raise ConfigError(f"{runs_label} {printable(str(runs_dir), 80)}: its part {printable(part, 40)!r} is "
                              f"{size(part)} bytes long, more than the {NAME_MAX} a file name may have; choose a "
                              "shorter name")
    for name, what in run_names.items():
        if size(name) > NAME_MAX:
            raise ConfigError(f"{where}: the run directory {printable(name, 40)!r} is {size(name)} bytes long, more "
                              f"than the {NAME_MAX} a file name may have; shorten {what}")


def _is_path_type(tp: Any) -> bool:
    return tp is Path or Path in typing.get_args(tp)


_CHECKPOINT_SUFFIXES = (".pt", ".pth", ".ckpt", ".tar", ".bin")  # what resolve_weights takes for a file


class Recipe:
    """Where a recipe's errors point and its relative paths resolve: the recipe file's own folder (a recipe given
    as data, e.g. the demo's, keeps them relative to the working directory)."""

    def __init__(self, path: Path | None) -> None:
        self.where = f"recipe {path}" if path else "recipe"
        self.folder = Path(os.path.abspath(path)).parent if path else None

    def path(self, value: str) -> Path:
        p = Path(expand(value))
        return p if p.is_absolute() or self.folder is None or "$" in str(p) else self.folder / p

    def weights(self, value: str, teacher: str) -> str:
        """``weights``: a file (or a run directory for the ``run`` teacher) resolves against the recipe's folder;
        torchvision weight names, ``random`` and ``teacher:NAME`` stay as written."""
        from featcache.models.registry import get_entry

        expanded = expand(value)
        if value.startswith("teacher:") or value == "random" or "$" in expanded:
            return expanded  # an unset variable is left for --weights' own error
        entry = get_entry("teacher", teacher)
        pathlike = (("/" in expanded or os.sep in expanded or Path(expanded).suffix in _CHECKPOINT_SUFFIXES)
                    or (entry is not None and entry.weights_are_run)
                    or (self.folder is not None and (self.folder / expanded).exists()))
        return str(self.path(expanded)) if pathlike else expanded

    def dataset_options(self, dataset: str, options: dict, label: str) -> dict:
        """Dataset options checked against the builder's declared options and types; path options resolved."""
        from featcache.datasets.registry import dataset_option_types

        declared = dataset_option_types(dataset)
        unknown = sorted(set(options) - set(declared))
        if unknown:
            raise ConfigError(f"{label}: dataset {dataset!r} does not take option {unknown[0]!r}; its options: "
                              f"{', '.join(sorted(declared)) or 'none'}")
        out = {}
        for k, v in options.items():
            v = check_type(declared[k], v, f"{label}.{k}")
            out[k] = str(self.path(v)) if _is_path_type(declared[k]) and isinstance(v, str) else v
        return out

    def ids_file(self, spec: str, label: str) -> str:
        """``labels = "ids:FILE"``: FILE resolves against the recipe's folder, like every path of a recipe, and must
        exist now (not after the stages before its run have trained)."""
        path = self.path(spec[4:])
        if "$" not in str(path) and not path.is_file():
            raise ConfigError(f"{label} {printable(spec)!r}: no file {printable(str(path))}; list the labelled sample "
                              "ids in it, one per line (a relative path is taken from the recipe's folder)")
        return f"ids:{path}"

    def classes(self, value: Any, parts: set[str], label: str) -> Any:
        """A teacher's ``train.classes`` / a task: a part name of [classes], a list of names, or a file of names
        (resolved, and required to exist now rather than after the stages before it have run)."""
        value = check_type(str | list[str], value, label)
        if isinstance(value, list) or value in parts:
            return value
        path = self.path(value)
        if not path.is_file():
            known = f"a part of [classes] ({', '.join(sorted(parts))}), " if parts else ""
            raise ConfigError(f"{label} {value!r}: neither {known}a list of class names nor a file of them")
        return str(path)
