"""A self-contained HTML report: training curves, before/after bars and metric tables.

Why one file with the PNGs embedded as base64: a report must survive being copied, mailed or
attached to an issue without a folder of images travelling with it. Every experiment builds its
report the same way::

    rep = Report("DPO on Shapes")
    rep.text("What was run and why.")
    rep.figure(plot_curves(read_metrics_jsonl(run / "metrics.jsonl"), ["loss"]), "training loss")
    rep.figure(plot_bars({"sft": m_sft, "dpo": m_dpo}, ["chair_i", "pope_f1"]), "before / after")
    rep.table(metrics_table({"sft": m_sft, "dpo": m_dpo}, ["chair_i", "pope_f1"]))
    rep.write(out / "report.html")

Plots are drawn with matplotlib's non-interactive Agg backend (no display needed).
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# ----------------------------------------------------------------------------- reading metrics


def read_metrics_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """Rows of a trainer's ``metrics.jsonl`` (one JSON object per line; blank lines skipped).

    A corrupt line fails with the file and line number rather than silently truncating the curve.
    """
    p = Path(path)
    rows: list[dict[str, Any]] = []
    for i, line in enumerate(p.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{p}, line {i}: not valid JSON ({exc.msg}); fix or delete that line") from None
        if not isinstance(row, dict):
            raise ValueError(f"{p}, line {i}: expected a JSON object, got {type(row).__name__}")  # noqa: TRY004
        rows.append(row)
    return rows


def series(rows: Sequence[Mapping[str, Any]], key: str, x_key: str = "step") -> tuple[list[float], list[float]]:
    """The (x, y) points of one metric; rows without ``key`` (e.g. eval-only rows) are skipped.

    When rows carry no ``x_key`` the row index is used, so any JSONL of dicts can be plotted.
    """
    xs: list[float] = []
    ys: list[float] = []
    for i, row in enumerate(rows):
        v = row.get(key)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            continue
        xs.append(float(row.get(x_key, i)))
        ys.append(float(v))
    return xs, ys


def smooth(ys: Sequence[float], window: int) -> list[float]:
    """Trailing moving average; noisy per-step losses are unreadable without it."""
    out: list[float] = []
    acc = 0.0
    for i, y in enumerate(ys):
        acc += y
        if i >= window:
            acc -= ys[i - window]
        out.append(acc / min(i + 1, window))
    return out


# ----------------------------------------------------------------------------- plots (PNG bytes)


def _png(fig: Any) -> bytes:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    return buf.getvalue()


def _figure(n_panels: int, width_per_panel: float = 4.2, height: float = 3.0) -> tuple[Any, list[Any]]:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, n_panels, figsize=(width_per_panel * n_panels, height), squeeze=False)
    return fig, list(axes[0])


def plot_curves(
    runs: Mapping[str, Sequence[Mapping[str, Any]]] | Sequence[Mapping[str, Any]],
    keys: Sequence[str],
    x_key: str = "step",
    smooth_window: int = 1,
) -> bytes:
    """One panel per metric key, one line per run (``{"dpo": rows, "control": rows}`` or bare rows).

    Keys that no run logged get an empty panel saying so, instead of a silently missing plot.
    """
    named = {"run": runs} if not isinstance(runs, Mapping) else runs
    fig, axes = _figure(max(1, len(keys)))
    for ax, key in zip(axes, keys):
        drawn = False
        for name, rows in named.items():
            xs, ys = series(rows, key, x_key)
            if xs:
                ax.plot(xs, smooth(ys, smooth_window) if smooth_window > 1 else ys, label=name)
                drawn = True
        ax.set_title(key)
        ax.set_xlabel(x_key)
        if drawn and len(named) > 1:
            ax.legend(fontsize=8)
        if not drawn:
            ax.text(0.5, 0.5, f"no '{key}' logged", ha="center", va="center", transform=ax.transAxes)
        ax.grid(alpha=0.3)
    return _png(fig)


def plot_bars(groups: Mapping[str, Mapping[str, Any]], keys: Sequence[str], title: str = "") -> bytes:
    """Grouped bars: one panel per metric, one bar per group (e.g. sft / dpo / control).

    One panel per metric because metrics live on different scales (CHAIR_i ~0.1, length ~20).
    """
    fig, axes = _figure(max(1, len(keys)), width_per_panel=2.8)
    names = list(groups)
    for ax, key in zip(axes, keys):
        vals = [_as_float(groups[n].get(key)) for n in names]
        bars = ax.bar(range(len(names)), [0.0 if math.isnan(v) else v for v in vals], color=_colours(len(names)))
        for b, v in zip(bars, vals):
            ax.annotate(fmt_value(v), (b.get_x() + b.get_width() / 2, b.get_height()), ha="center", va="bottom", fontsize=8)
        ax.set_xticks(range(len(names)), names, fontsize=8)
        ax.set_title(key, fontsize=10)
        ax.margins(y=0.15)
    if title:
        fig.suptitle(title)
    return _png(fig)


def plot_errorbars(agg: Mapping[str, Mapping[str, Any]], sft: Mapping[str, float], keys: Sequence[str]) -> bytes:
    """One panel per metric: mean ± std over seeds per method, each seed as a dot, SFT as a dashed line.
    ``agg[method]`` holds ``key``, ``key_std`` and ``spread[key]["per_seed"]`` (the experiments' aggregates)."""
    fig, axes = _figure(len(keys), width_per_panel=2.9)
    names = list(agg)
    for ax, key in zip(axes, keys):
        ax.bar(range(len(names)), [agg[n][key] for n in names], yerr=[agg[n][f"{key}_std"] for n in names],
               color=_colours(len(names)), capsize=4, alpha=0.8)  # fmt: skip
        for i, n in enumerate(names):
            per = agg[n]["spread"][key]["per_seed"]
            ax.scatter([i] * len(per), per, color="black", s=10, zorder=3)
        if key in sft:
            ax.axhline(sft[key], ls="--", color="grey")
        ax.set_xticks(range(len(names)), names, fontsize=8)
        ax.set_title(key, fontsize=10)
    return _png(fig)


def _colours(n: int) -> list[str]:
    base = ["#4C72B0", "#DD8452", "#55A868", "#C44E52", "#8172B3", "#937860"]
    return [base[i % len(base)] for i in range(n)]


# ----------------------------------------------------------------------------- tables


def _as_float(v: Any) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return float("nan")
    return float(v)


def fmt_value(v: Any) -> str:
    if v is None:
        return "–"
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return str(v)
    if isinstance(v, int):
        return str(v)
    if math.isnan(v):
        return "–"
    return f"{v:.3f}" if abs(v) < 1000 else f"{v:.0f}"


def relative_change(before: float, after: float) -> float:
    """(after − before) / |before|; NaN when ``before`` is 0 (a relative change is undefined)."""
    if before == 0 or math.isnan(before) or math.isnan(after):
        return float("nan")
    return (after - before) / abs(before)


def fmt_interval(value: Any, ci: Mapping[str, Any] | None) -> str:
    """``0.172 [0.151, 0.195]`` when a 95% interval (a dict with ``low``/``high``) is given, else the value."""
    if not ci:
        return fmt_value(value)
    return f"{fmt_value(value)} [{fmt_value(ci.get('low'))}, {fmt_value(ci.get('high'))}]"


def metrics_table(
    groups: Mapping[str, Mapping[str, Any]], keys: Sequence[str], baseline: str | None = None,
    intervals: Mapping[str, Mapping[str, Mapping[str, Any]]] | None = None,
) -> list[list[str]]:
    """Rows ``[metric, g1, g2, ...]`` (+ a "Δ vs baseline" column per other group when asked).

    ``intervals`` (group → metric → ``{"low", "high", ...}``, e.g. each run's ``metrics.json``
    "intervals") puts each value's 95% interval beside it."""
    names = list(groups)
    intervals = intervals or {}
    others = [n for n in names if baseline is not None and n != baseline]
    header = ["metric", *names, *[f"{n} vs {baseline}" for n in others]]
    rows = [header]
    for key in keys:
        row = [key, *[fmt_interval(groups[n].get(key), intervals.get(n, {}).get(key)) for n in names]]
        for n in others:
            rc = relative_change(_as_float(groups[baseline].get(key)), _as_float(groups[n].get(key)))
            row.append("–" if math.isnan(rc) else f"{rc:+.1%}")
        rows.append(row)
    return rows


def markdown_table(rows: Sequence[Sequence[str]]) -> str:
    """First row is the header. Used for summary.md files and the console."""
    if not rows:
        return ""
    head, *body = rows
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in body]
    return "\n".join(lines)


def html_table(rows: Sequence[Sequence[str]]) -> str:
    if not rows:
        return ""
    head, *body = rows
    th = "".join(f"<th>{html.escape(str(c))}</th>" for c in head)
    trs = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>" for r in body)
    return f"<table><thead><tr>{th}</tr></thead><tbody>{trs}</tbody></table>"


# ----------------------------------------------------------------------------- the report

_CSS = """
body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 10px;text-align:right}
th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}
figure{margin:1em 0}figcaption{color:#555;font-size:90%}img{max-width:100%}
.note{background:#fff8e1;border-left:4px solid #f0b400;padding:.5em 1em}
pre{background:#f6f6f6;padding:.6em;overflow:auto}
"""


@dataclass
class Report:
    """An ordered list of HTML blocks; ``write`` puts them in one standalone page."""

    title: str
    blocks: list[str] = field(default_factory=list)

    def heading(self, text: str, level: int = 2) -> Report:
        self.blocks.append(f"<h{level}>{html.escape(text)}</h{level}>")
        return self

    def text(self, text: str, note: bool = False) -> Report:
        cls = ' class="note"' if note else ""
        paras = "".join(f"<p{cls}>{html.escape(p)}</p>" for p in text.split("\n\n") if p.strip())
        self.blocks.append(paras)
        return self

    def figure(self, png: bytes, caption: str = "") -> Report:
        b64 = base64.b64encode(png).decode("ascii")
        cap = f"<figcaption>{html.escape(caption)}</figcaption>" if caption else ""
        self.blocks.append(f'<figure><img alt="{html.escape(caption)}" src="data:image/png;base64,{b64}"/>{cap}</figure>')
        return self

    def table(self, rows: Sequence[Sequence[str]]) -> Report:
        self.blocks.append(html_table(rows))
        return self

    def code(self, text: str) -> Report:
        self.blocks.append(f"<pre>{html.escape(text)}</pre>")
        return self

    def render(self) -> str:
        body = "\n".join(self.blocks)
        t = html.escape(self.title)
        return (
            f'<!doctype html><html><head><meta charset="utf-8"><title>{t}</title>'
            f"<style>{_CSS}</style></head><body><h1>{t}</h1>\n{body}\n</body></html>\n"
        )

    def write(self, path: str | Path) -> Path:
        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        tmp = p.with_suffix(p.suffix + ".tmp")
        tmp.write_text(self.render(), encoding="utf-8")
        tmp.replace(p)
        return p
