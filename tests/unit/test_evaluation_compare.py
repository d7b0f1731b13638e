"""`eval compare` on two hand-made run folders: values with intervals, the paired difference over the
common items, the verdict wording, and the examples worth reading."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from vlalign.evaluation.compare import CompareError, write_comparison
from vlalign.evaluation.items import intervals, rate_items, save_items


def _run(path, hits, ids, answers=()):
    path.mkdir(parents=True)
    items = {"rate": rate_items(ids, hits)}
    cis = {k: v.to_dict() for k, v in intervals(items, n_boot=300).items()}
    (path / "metrics.json").write_text(json.dumps({"metrics": {"rate": items["rate"].value(), "n": 3.0},
                                                   "intervals": cis, "no_interval": {"n": "a count"}}))
    save_items(items, path / "items.json")
    (path / "answers.jsonl").write_text("".join(json.dumps(a) + "\n" for a in answers))


def test_paired_difference_over_common_items(tmp_path):
    ids = [f"i{k}" for k in range(40)]
    _run(tmp_path / "a", [0.0] * 40, ids, [{"task": "chair", "id": "i1", "prompt": "p", "answer": "a dog",
                                            "hallucinated": ["dog"]}])
    # run b: the same 40 items all right, plus 5 items run a never saw (left out of the pairing)
    _run(tmp_path / "b", [1.0] * 45, ids + [f"x{k}" for k in range(5)])
    html = write_comparison([tmp_path / "a", tmp_path / "b"], tmp_path / "cmp", n_boot=300)
    rows = json.loads((tmp_path / "cmp" / "compare.json").read_text())["rows"]
    rate = next(r for r in rows if r[0] == "rate")
    assert rate[1] == "0.000 [0.000, 0.000]" and rate[2] == "1.000 [1.000, 1.000]"
    assert rate[3] == "+1.000 [+1.000, +1.000] over 40 common items (detectable)"
    assert next(r for r in rows if r[0] == "n")[3].startswith("–")
    text = html.read_text()
    assert "Examples from a" in text and "[&quot;dog&quot;]" in text


def test_undetectable_difference_is_said_so(tmp_path):
    ids = [str(k) for k in range(10)]
    _run(tmp_path / "a", [1, 0] * 5, ids)
    _run(tmp_path / "b", [0, 1] * 5, ids)
    write_comparison([tmp_path / "a", tmp_path / "b"], tmp_path / "cmp", n_boot=300)
    rate = json.loads((tmp_path / "cmp" / "compare.json").read_text())["rows"][1]
    assert rate[3].startswith("+0.000 [") and "no difference detectable at this sample size" in rate[3]


def test_bad_inputs(tmp_path):
    from vlalign.cli import app

    with pytest.raises(CompareError, match="no metrics.json"):
        write_comparison([tmp_path, tmp_path], tmp_path / "out")
    res = CliRunner().invoke(app, ["eval", "compare", str(tmp_path)])
    assert res.exit_code == 2 and "usage: vlalign eval compare" in res.output
