"""Labels against the Shapes ground truth, shared by the experiments that judge labellers: ground-truth
comparison of two answers, label agreement, and the metric-vs-label-budget plot.

WHY here and not in one recipe: every experiment that compares *labels* (reward sources, active
learning) against the Shapes ground truth must mean the same thing by "agreement". The rest of the
experiments' shared base (stages, trainer configs, the evaluator, run helpers) is in
:mod:`vlalign.experiments.base` and :mod:`vlalign.experiments.evaluator`.

Ground truth of an answer (:func:`gt_key`) is the judgement the CHAIR metric itself makes: the
distinct object types the answer claims (the eval parser :func:`caption_objects`) split into
hallucinated (absent from the scene) and correct. Answer A is better than B when it hallucinates
fewer types; with as many hallucinations, when it names more of the present types (recall).
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import matplotlib

from vlalign.data.shapes.scene import objects_of
from vlalign.evaluation.hallucination import caption_objects

# ------------------------------------------------------------------------------ ground truth + labels


def gt_key(response: str, scene: Mapping[str, Any]) -> tuple[int, int]:
    """(−#hallucinated types, #correct types): larger is better, compared lexicographically."""
    said = caption_objects(response)
    truth = set(objects_of(scene))
    return (-len(said - truth), len(said & truth))


def gt_preference(a: str, b: str, scene: Mapping[str, Any]) -> int:
    """+1 if the ground truth prefers ``a``, −1 if it prefers ``b``, 0 if it cannot tell them apart."""
    ka, kb = gt_key(a, scene), gt_key(b, scene)
    return (ka > kb) - (ka < kb)


@dataclass
class Agreement:
    """How often a labeller's preferred side is the ground-truth-better one.

    ``agreement`` = agree / (agree + disagree): pairs the ground truth cannot separate (``ties``) are
    left out of it and reported as ``gt_tie_rate`` — a labeller that spends its budget on such pairs
    wastes labels even though it is never "wrong" on them.
    """

    n_pairs: int
    agree: int
    disagree: int
    ties: int

    @property
    def agreement(self) -> float:
        decided = self.agree + self.disagree
        return self.agree / decided if decided else float("nan")

    @property
    def gt_tie_rate(self) -> float:
        return self.ties / self.n_pairs if self.n_pairs else float("nan")

    def to_dict(self) -> dict[str, float]:
        return {"n_pairs": self.n_pairs, "agree": self.agree, "disagree": self.disagree, "ties": self.ties,
                "agreement": self.agreement, "gt_tie_rate": self.gt_tie_rate}  # fmt: skip


def label_agreement(pairs: Sequence[Any]) -> Agreement:
    """Agreement of preference records (``chosen``, ``rejected``, ``meta["scene"]``) with the ground truth."""
    votes = []
    for i, p in enumerate(pairs):
        scene = (p.meta or {}).get("scene")
        if not scene:
            raise ValueError(f"label_agreement: pair {i} (id {p.id!r}) has no meta.scene; agreement needs the ground truth")
        votes.append(gt_preference(p.chosen, p.rejected, scene))
    return Agreement(len(votes), votes.count(1), votes.count(-1), votes.count(0))


# ------------------------------------------------------------------------------ plots


def plot_vs_budget(curves: Mapping[str, Mapping[int, float]], metric: str, baseline: float | None = None,
                   controls: Mapping[str, Mapping[int, float]] | None = None) -> bytes:  # fmt: skip
    """One line per source of ``metric`` against the label budget (log x); the SFT start as a
    dashed line and same-budget controls as hollow markers. Returns PNG bytes."""
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.2, 3.4))
    for i, (name, pts) in enumerate(curves.items()):
        xs = sorted(pts)
        line = ax.plot(xs, [pts[x] for x in xs], marker="o", label=name)[0]
        for x, y in sorted((controls or {}).get(name, {}).items()):
            ax.scatter([x], [y], facecolors="none", edgecolors=line.get_color(), s=70,
                       label="control (SFT on chosen)" if i == 0 else None)  # fmt: skip
    if baseline is not None:
        ax.axhline(baseline, ls="--", color="grey", label="SFT start")
    ax.set_xscale("log")
    ax.set_xlabel("labelled pairs (budget)")
    ax.set_ylabel(metric)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return buf.getvalue()
