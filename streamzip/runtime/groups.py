"""Which steps of a pipeline share an actor in the Ray runtime (and so a process per stream in the
manifests :mod:`streamzip.k8s` renders). No Ray here: the manifests are computed without it."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from streamzip.pipeline import Pipeline

__all__ = ["encoder_groups", "group_resources", "stage_groups"]


def group_resources(steps: Sequence[dict[str, float]]) -> dict[str, float]:
    """What one actor running several steps asks of Ray: the sum of the steps' requests."""
    out: dict[str, float] = {"num_cpus": 0.0}
    for res in steps:
        for k, v in {"num_cpus": 0.25, **res}.items():
            out[k] = out.get(k, 0.0) + float(v)
    return out


def stage_groups(pipeline: Pipeline, *, pooled: bool = True, fuse: bool = True) -> list[list[int]]:
    """The steps of ``pipeline`` as the actors that run them: lists of consecutive step indices.

    ``fuse``: consecutive steps share one actor, and packets pass between them in process, as Ray
    Data fuses consecutive map operators: an actor edge costs a few milliseconds per packet on a
    small machine, more than a light stage's work. A step runs alone when it is an encoder of a
    ``pooled`` runtime (its pool serves many streams), when it asks for a GPU (its own placement), and
    a step that produces tokens ends its group (the fidelity meter takes the group's output as its
    originals). ``fuse=False``: one actor per step."""
    from streamzip.registry import get as get_stage

    resources = pipeline.resources()
    groups: list[list[int]] = []
    open_group = False
    for i, step in enumerate(pipeline.steps):
        stage = get_stage(step.op)
        alone = (not fuse or (pooled and stage.kind == "encoder")
                 or bool(resources[step.id].get("num_gpus")))
        if open_group and not alone:
            groups[-1].append(i)
        else:
            groups.append([i])
        open_group = not alone and not stage.cls.produces
    return groups


def encoder_groups(pipeline: Pipeline, groups: Sequence[Sequence[int]]) -> list[int]:
    """The indices of the ``groups`` (from :func:`stage_groups` with ``pooled=True``) that run an
    encoder: each alone in its group, served by a pool shared by every stream."""
    from streamzip.registry import get as get_stage

    return [g for g, steps in enumerate(groups) if get_stage(pipeline.steps[steps[0]].op).kind == "encoder"]
