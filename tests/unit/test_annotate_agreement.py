"""Agreement statistics on examples small enough to work out by hand."""

from __future__ import annotations

import math

import pytest

from vlalign.annotate.agreement import agreement_report, cohen_kappa, fleiss_kappa, item_agreement
from vlalign.annotate.store import Judgement

F, S, T = "first", "second", "tie"
A = [F, F, S, S, F, T]
B = [F, S, S, S, F, F]


def test_cohen_kappa_by_hand():
    # agreements at positions 0, 2, 3, 4 -> p_o = 4/6
    # marginals: A = {F: 3, S: 2, T: 1}, B = {F: 3, S: 3, T: 0}
    # p_e = (3*3 + 2*3 + 1*0) / 6^2 = 15/36
    # kappa = (24/36 - 15/36) / (1 - 15/36) = (9/36) / (21/36) = 3/7
    assert cohen_kappa(A, B) == pytest.approx(3 / 7)
    assert cohen_kappa(A, A) == pytest.approx(1.0)


def test_cohen_kappa_undefined_and_bad_input():
    assert math.isnan(cohen_kappa([F, F], [F, F]))  # p_e = 1: no variation, kappa undefined
    with pytest.raises(ValueError, match="equally long"):
        cohen_kappa([F], [F, S])


def test_fleiss_kappa_by_hand():
    items = [[F, F, F], [F, F, S], [S, S, T], [F, S, T]]
    # P_i = sum n_j(n_j-1) / (3*2): item1 6/6 = 1, item2 2/6, item3 2/6, item4 0/6
    assert [item_agreement(x) for x in items] == pytest.approx([1, 1 / 3, 1 / 3, 0])
    # P_bar = (1 + 1/3 + 1/3 + 0) / 4 = 5/12
    # totals: F = 3+2+0+1 = 6, S = 0+1+2+1 = 4, T = 0+0+1+1 = 2 (12 labels)
    # P_e = (6/12)^2 + (4/12)^2 + (2/12)^2 = (36 + 16 + 4) / 144 = 56/144 = 7/18
    # kappa = (5/12 - 7/18) / (1 - 7/18) = (15/36 - 14/36) / (22/36) = 1/22
    assert fleiss_kappa(items) == pytest.approx(1 / 22)
    assert fleiss_kappa([[F, F], [S, S], [T, T]]) == pytest.approx(1.0)  # perfect agreement


def test_report_from_judgements():
    js = [Judgement(f"i{k}", "ann", a, "first") for k, a in enumerate(A)]
    js += [Judgement(f"i{k}", "bob", b, "first") for k, b in enumerate(B)]
    js.append(Judgement("i9", "ann", "skip", "first"))  # skips are not labels
    js.append(Judgement("i0", "bob", S, "first"))  # a later revision by bob replaces F on i0
    rep = agreement_report(js)
    (pair,) = rep["pairs"]
    # with bob's revision B becomes [S, S, S, S, F, F]: agreements at 2, 3, 4 -> p_o = 3/6
    # A = {F: 3, S: 2, T: 1}, B' = {F: 2, S: 4}: p_e = (3*2 + 2*4) / 36 = 14/36
    # kappa = (18/36 - 14/36) / (22/36) = 4/22 = 2/11
    assert pair["n_items"] == 6 and pair["raw_agreement"] == pytest.approx(0.5)
    assert pair["cohen_kappa"] == pytest.approx(2 / 11, abs=1e-6)
    assert rep["overall"]["n_items_multi"] == 6 and rep["overall"]["raw_agreement"] == pytest.approx(0.5)
    assert rep["per_item"]["i1"]["labels"] == {"ann": F, "bob": S}


def test_krippendorff_alpha_by_hand():
    from vlalign.annotate.agreement import krippendorff_alpha

    # units [a, a] and [a, b]: coincidences o[a,a] = 2 (two ordered pairs, weight 1/(2-1)),
    # o[a,b] = o[b,a] = 1; n_a = 3, n_b = 1, n = 4. Observed sum of o*delta = 2, expected sum of
    # n_c*n_k*delta = 2 * 3 * 1 = 6, alpha = 1 - (n - 1) * 2 / 6 = 1 - 3 * 2 / 6 = 0.
    assert krippendorff_alpha([["a", "a"], ["a", "b"]]) == pytest.approx(0.0)
    assert krippendorff_alpha([[F, F], [S, S, S], [T, T]]) == pytest.approx(1.0)
    assert krippendorff_alpha([[F, F], [S]]) != krippendorff_alpha([[F, F], [S, S]])  # a lone label is not pairable
    assert math.isnan(krippendorff_alpha([[F, F], [F, F]]))  # no variation: undefined
    with pytest.raises(ValueError, match=">= 2 labels"):
        krippendorff_alpha([[F], [S]])


def test_krippendorff_alpha_published_example():
    from vlalign.annotate.agreement import krippendorff_alpha

    # Krippendorff (2011), "Computing Krippendorff's Alpha-Reliability", section C: 4 observers,
    # 12 units, missing values ("."); the paper reports alpha = 0.743 (nominal) and 0.849 (interval).
    rows = ["1 2 3 3 2 1 4 1 2 . . .", "1 2 3 3 2 2 4 1 2 5 . 3", ". 3 3 3 2 3 4 2 2 5 1 .", "1 2 3 3 2 4 4 1 2 5 1 ."]
    table = [r.split() for r in rows]
    units = [[int(obs[u]) for obs in table if obs[u] != "."] for u in range(12)]
    assert krippendorff_alpha(units, "nominal") == pytest.approx(0.743, abs=5e-4)
    assert krippendorff_alpha(units, "interval") == pytest.approx(0.849, abs=5e-4)
