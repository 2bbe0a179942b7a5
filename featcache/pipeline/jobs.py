"""What a recipe expands to: its teachers (and their draws, one per teacher seed) and its distill runs."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from featcache.errors import ConfigError


@dataclass
class TeacherSpec:
    name: str  # the name distill runs refer to it by (default: the teacher)
    teacher: str
    weights: str | None = None  # extract --weights, when not trained here
    train: dict[str, Any] | None = None  # train-teacher options, when trained here
    extract: dict[str, Any] = field(default_factory=dict)  # extract options (image_size, noise, batch_size, ...)
    seeds: list[int] | None = None  # the teacher seeds the recipe draws (one trained teacher and cache each)
    base: str = ""  # the name the recipe's blocks use: ``name`` itself, or the entry a teacher draw was made from
    draw: int | None = None  # a teacher draw: the seed it trained with (None: the recipe lists no seeds)

    def __post_init__(self) -> None:
        self.base = self.base or self.name


def draw_name(name: str, seed: int) -> str:
    """The name of a teacher's draw: seed 0 keeps the teacher's own name (its run directories and caches stay
    those of the recipe before it listed seeds), seed N is ``<name>-t<N>``."""
    return name if seed == 0 else f"{name}-t{seed}"


@dataclass
class DistillSpec:
    students: list[str]
    methods: list[str]
    teachers: list[str]
    seeds: list[int]
    options: dict[str, Any]
    tag: str = ""  # tells apart blocks with the same students/methods/teachers but other options
    # teacher seed -> the block's teachers as that draw names them; empty when no teacher of the block lists seeds
    draws: dict[int, tuple[str, ...]] = field(default_factory=dict)


def teacher_draws(teachers: list[TeacherSpec], where: str) -> list[TeacherSpec]:
    """The [[teachers]] entries with their draws: an entry with ``seeds`` becomes one teacher per seed (trained
    with it), as does an entry loading its weights (``teacher:NAME``); other entries stay as they are."""
    from dataclasses import replace

    seeded = {t.name: t.seeds for t in teachers if t.seeds}
    out = []
    for t in teachers:
        source = t.weights.split(":", 1)[1] if isinstance(t.weights, str) and t.weights.startswith("teacher:") else ""
        seeds = t.seeds or seeded.get(source)
        if not seeds:
            out.append(t)
            continue
        for seed in seeds:
            out.append(replace(t, name=draw_name(t.name, seed), base=t.name, draw=seed,
                               train={**t.train, "seed": seed} if t.train is not None else None,
                               weights=f"teacher:{draw_name(source, seed)}" if source in seeded else t.weights))
    names = [t.name for t in out]
    clash = next((n for n in names if names.count(n) > 1), None)
    if clash is not None:
        raise ConfigError(f"{where}: the teacher draw {clash!r} (a [[teachers]] entry's seed) has the name of "
                          "another [[teachers]] entry; rename that entry")
    return out


def block_draws(names: list[str], teachers: list[TeacherSpec], w: str) -> dict[int, tuple[str, ...]]:
    """A block's teacher draws: seed -> its teachers as that draw names them. The teachers of one block that list
    seeds are drawn together (student runs of draw N read every teacher's draw N), so they must list the same."""
    seeds: dict[str, list[int]] = {}
    for t in teachers:
        if t.draw is not None and t.base in names:
            seeds.setdefault(t.base, []).append(t.draw)
    if not seeds:
        return {}
    lists = {tuple(v) for v in seeds.values()}
    if len(lists) > 1:
        a, b = list(seeds)[:2]
        raise ConfigError(f"{w}: teachers {a!r} and {b!r} list other seeds ({seeds[a]} vs {seeds[b]}); the teachers "
                          "of one block are drawn together: give them the same seeds")
    return {s: tuple(draw_name(n, s) if n in seeds else n for n in names) for s in next(iter(lists))}


@dataclass(frozen=True)
class DistillJob:
    """One distill run of a recipe: a student × method × seed of a [[distill]] block."""

    student: str
    method: str
    teachers: tuple[str, ...]  # empty for ce, which ignores the block's teachers; a draw's names with seeds
    seed: int
    spec: DistillSpec
    draw: int | None = None  # the teacher seed of the draw it learns from (None: the teachers list no seeds)

    @property
    def name(self) -> str:
        """The run directory's name: <student>-<method>-<teachers or alone>[-<tag>]-s<seed>."""
        who = "+".join(self.teachers) if self.teachers else "alone"
        return f"{self.student}-{self.method}-{who}{'-' + self.spec.tag if self.spec.tag else ''}-s{self.seed}"


def distill_jobs(blocks: list[DistillSpec]):
    """Every run of the recipe's [[distill]] blocks, in recipe order: student × method × teacher draw × seed."""
    for d in blocks:
        for student in d.students:
            for method in d.methods:
                # ce learns from no teacher: one run per seed, whatever the teachers' draws
                draws: list[tuple[int | None, tuple[str, ...]]] = (
                    [(None, ())] if method == "ce" else list(d.draws.items()) or [(None, tuple(d.teachers))])
                for draw, teachers in draws:
                    for seed in d.seeds:
                        yield DistillJob(student, method, teachers, seed, d, draw)
