"""report.py: plots are real PNGs embedded in the HTML, tables carry the numbers, bad JSONL is named."""

from __future__ import annotations

import base64
import re

import pytest

from vlalign.evaluation.report import (
    Report,
    markdown_table,
    metrics_table,
    plot_bars,
    plot_curves,
    read_metrics_jsonl,
    relative_change,
    series,
    smooth,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_smooth_is_trailing_mean():
    # window 2 over [1, 3, 5, 7]: [1/1, (1+3)/2, (3+5)/2, (5+7)/2] = [1, 2, 4, 6]
    assert smooth([1.0, 3.0, 5.0, 7.0], 2) == [1.0, 2.0, 4.0, 6.0]


def test_series_skips_rows_without_key_and_non_numbers():
    rows = [{"step": 1, "loss": 2.0}, {"step": 2, "eval": 1.0}, {"step": 3, "loss": float("nan")}, {"step": 4, "loss": 1.5}]
    assert series(rows, "loss") == ([1.0, 4.0], [2.0, 1.5])


def test_relative_change_by_hand():
    # (0.12 - 0.30) / 0.30 = -0.6
    assert relative_change(0.30, 0.12) == pytest.approx(-0.6)
    assert relative_change(0.0, 0.1) != relative_change(0.0, 0.1)  # NaN: undefined from a zero baseline


def test_metrics_table_shows_intervals():
    rows = metrics_table({"sft": {"chair_i": 0.25}, "dpo": {"chair_i": 0.10}}, ["chair_i"], "sft",
                         intervals={"dpo": {"chair_i": {"low": 0.05, "high": 0.151}}})
    assert rows[1] == ["chair_i", "0.250", "0.100 [0.050, 0.151]", "-60.0%"]


def test_metrics_table_has_values_and_deltas():
    rows = metrics_table({"sft": {"chair_i": 0.25, "n": 40}, "dpo": {"chair_i": 0.10, "n": 40}}, ["chair_i", "n"], "sft")
    assert rows[0] == ["metric", "sft", "dpo", "dpo vs sft"]
    # (0.10 - 0.25) / 0.25 = -0.6 → "-60.0%"
    assert rows[1] == ["chair_i", "0.250", "0.100", "-60.0%"]
    assert rows[2] == ["n", "40", "40", "+0.0%"]
    md = markdown_table(rows)
    assert md.splitlines()[1] == "|---|---|---|---|"


def test_read_metrics_jsonl_names_bad_line(tmp_path):
    p = tmp_path / "metrics.jsonl"
    p.write_text('{"step": 1, "loss": 1.0}\n\n{"step": 2, "loss": 0.5}\n{oops\n')
    with pytest.raises(ValueError, match=r"metrics.jsonl, line 4"):
        read_metrics_jsonl(p)
    p.write_text('{"step": 1, "loss": 1.0}\n\n{"step": 2, "loss": 0.5}\n')
    assert [r["loss"] for r in read_metrics_jsonl(p)] == [1.0, 0.5]


def test_report_embeds_pngs_and_numbers(tmp_path):
    rows = [{"step": s, "loss": 1.0 / s, "lr": 1e-3} for s in range(1, 21)]
    curves = plot_curves({"dpo": rows, "control": rows[:10]}, ["loss", "missing_key"], smooth_window=3)
    bars = plot_bars({"sft": {"chair_i": 0.3}, "dpo": {"chair_i": 0.1}}, ["chair_i"], title="before/after")
    assert curves.startswith(PNG_MAGIC) and bars.startswith(PNG_MAGIC)

    rep = Report("Demo <run>")
    rep.text("CHAIR_i fell.\n\nSecond paragraph", note=True)
    rep.figure(curves, "training curves").figure(bars, "before / after")
    rep.table(metrics_table({"sft": {"chair_i": 0.3123}, "dpo": {"chair_i": 0.1}}, ["chair_i"], "sft"))
    out = rep.write(tmp_path / "sub" / "report.html")

    page = out.read_text()
    assert "<title>Demo &lt;run&gt;</title>" in page  # escaped, not raw HTML
    imgs = re.findall(r'<img alt="[^"]*" src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert len(imgs) == 2
    assert base64.b64decode(imgs[0]) == curves and base64.b64decode(imgs[1]) == bars
    assert "<td>0.312</td>" in page and "<td>0.100</td>" in page and "-68.0%" in page  # (0.1-0.3123)/0.3123
    assert page.count("<p class=\"note\">") == 2
    assert not (tmp_path / "sub" / "report.html.tmp").exists()
