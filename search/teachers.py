"""The spec's given teachers: where their files are, whether they fit the data, and the graphs workers train.

A teacher's ``checkpoint`` stays as the spec names it in everything the study
records and exports (a graph file re-runs from where the user stands, and the
service never shows a server path); only here is it turned into the file a
process reads, relative to one folder (the command line's: the working folder).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from ktg.errors import KtgError
from ktg.graph import Graph
from search.data_facts import DataFacts, data_facts
from search.spec import SearchSpec

TEACHER_FILES = "teacher_files"  # in a trial's config: checkpoint as the spec names it -> the file to read


def teacher_files(spec: SearchSpec, base: Path | None = None) -> dict[str, str]:
    """Each teacher's checkpoint as named -> its absolute path (a relative name is taken from ``base``,
    default the working folder). Workers get these: Ray may run them in another folder."""
    root = base or Path.cwd()
    return {t.checkpoint: str((root / Path(t.checkpoint).expanduser()).resolve()) for t in spec.teachers}


def spec_facts(spec: SearchSpec, files: dict[str, str] | None = None) -> DataFacts:
    """The study's data facts and its teachers' fit, read once (``search.data_facts``)."""
    files = files if files is not None else teacher_files(spec)
    return data_facts(spec.data_spec(), tuple((t.model, files[t.checkpoint]) for t in spec.teachers))


def teacher_misfits(spec: SearchSpec, files: dict[str, str] | None = None) -> list[tuple[int, str]]:
    """(index in ``spec.teachers``, why) for each teacher that cannot be a node on the study's data;
    the reason names the teacher and its checkpoint as the spec does, never the file read."""
    misfits = spec_facts(spec, files).misfits
    return [(i, f"teacher {t.name!r} ({t.model}, {t.checkpoint}): {why}")
            for i, (t, why) in enumerate(zip(spec.teachers, misfits, strict=True)) if why is not None]


def check_teachers(spec: SearchSpec, field: str = "teachers") -> None:
    """Each given teacher must fit the data (classes, channels, model): one line, ``field`` first,
    naming those that do not."""
    misfits = teacher_misfits(spec)
    if misfits:
        raise KtgError("; ".join(f"{field}: {why}" for _, why in misfits))


def with_teacher_files(graph: Graph, files: dict[str, str]) -> Graph:
    """The graph a worker trains: each teacher node reads its file (``teacher_files``)."""
    nodes = tuple(replace(n, checkpoint=files.get(n.checkpoint, n.checkpoint)) if n.checkpoint else n
                  for n in graph.nodes)
    return replace(graph, nodes=nodes)
