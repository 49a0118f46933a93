"""The results schema (pandera) and the derived numbers, on hand-made tables."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from evaluation.errors import ResultsInvalid
from evaluation.results import normalized_average, primary_scores, retention, to_frame, validate_results
from evaluation.suites import MaterializedSuite, TaskSpec

SUITE = MaterializedSuite(
    name="t", suite_hash="0" * 64, include_dir=Path("/nonexistent"), max_gen_toks=16,
    tasks=(TaskSpec(name="zoo_rev", domain="rev", metrics=("exact_match",), primary="exact_match", n=20),
           TaskSpec(name="zoo_sort", domain="sort", metrics=("exact_match",), primary="exact_match", n=20)))
# merged, and two specialists each strong on its own domain
SCORES = {"merged": {"rev": 0.6, "sort": 0.45}, "rev": {"rev": 0.8, "sort": 0.1}, "sort": {"rev": 0.2, "sort": 0.9}}


def _rows(scores=SCORES, n=20):
    rows = []
    for model, by_domain in scores.items():
        for domain, value in by_domain.items():
            rows.append({"content_id": f"{abs(hash(model)):064x}"[-64:], "model": model,
                         "role": "merged" if model == "merged" else "parent", "domain": domain,
                         "task": f"zoo_{domain}", "metric": "exact_match", "value": value, "stderr": 0.1, "n": n})
    return rows


def test_complete_table_passes():
    df = validate_results(to_frame(_rows()), SUITE)
    assert list(df.columns) == ["content_id", "model", "role", "domain", "task", "metric", "value", "stderr", "n"]
    assert len(df) == 6


def test_missing_domain_is_rejected():
    rows = [r for r in _rows() if not (r["model"] == "rev" and r["domain"] == "sort")]
    with pytest.raises(ResultsInvalid, match="every model needs exactly one row"):
        validate_results(to_frame(rows), SUITE)


def test_truncated_sample_count_is_rejected():
    rows = _rows()
    rows[0]["n"] = 5  # as if lm-eval ran with limit=5
    with pytest.raises(ResultsInvalid, match="n must equal the suite's sample count"):
        validate_results(to_frame(rows), SUITE)


def test_unknown_role_and_nan_value_are_rejected():
    rows = _rows()
    rows[0]["role"] = "champion"
    with pytest.raises(ResultsInvalid):
        validate_results(to_frame(rows), SUITE)
    rows = _rows()
    rows[1]["value"] = float("nan")
    with pytest.raises(ResultsInvalid):
        validate_results(to_frame(rows), SUITE)


def test_retention_and_normalized_average_golden_numbers():
    scores = primary_scores(to_frame(_rows()), SUITE)
    assert list(scores.columns)[0] == "merged"
    ret = retention(scores, "merged", ["rev", "sort"])
    assert ret == pytest.approx({"rev": 0.6 / 0.8, "sort": 0.45 / 0.9})
    # FusionBench normalised score: merged / specialist per domain, averaged
    assert normalized_average(scores, "merged", {"rev": "rev", "sort": "sort"}) == pytest.approx((0.75 + 0.5) / 2)
    assert retention(scores, "merged", []) == {}


def test_retention_is_undefined_where_every_parent_scores_zero():
    zero = {"merged": {"rev": 0.0, "sort": 0.5}, "rev": {"rev": 0.0, "sort": 0.5}}
    scores = primary_scores(to_frame(_rows(zero)), SUITE)
    assert retention(scores, "merged", ["rev"]) == {"rev": None, "sort": 1.0}
    assert normalized_average(scores, "merged", {"rev": "rev"}) is None
    assert isinstance(scores, pd.DataFrame)
