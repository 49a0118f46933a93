"""The tidy results table, its pandera schema, and what is derived from it.

One row per (model, task, metric): ``content_id, model, role, domain, task, metric, value, stderr, n``.
The schema is built per suite, because what makes a table *complete* depends on the suite: every
model has a row for every task and metric, and ``n`` equals the suite's sample count - a run with
lm-eval's ``limit`` (or a truncated eval file) cannot pass for a gating run.

Derived numbers read each domain's primary metric (exact match for zoo domains):
* retention[d] = merged[d] / max over parents of parent[d]  (None when every parent scores 0);
* normalised average = mean over domains of merged[d] / specialist[d], the specialist being the
  model fine-tuned for d (the zoo's, else the best-scoring parent on d) - FusionBench's
  "normalized score" (Tang et al. 2024, arXiv:2406.03280).
"""

from __future__ import annotations

import pandas as pd
import pandera.pandas as pa
from pandera.errors import SchemaError, SchemaErrors

from evaluation.errors import ResultsInvalid
from evaluation.suites import MaterializedSuite

COLUMNS = ["content_id", "model", "role", "domain", "task", "metric", "value", "stderr", "n"]
ROLES = ("parent", "merged")


def _complete(suite: MaterializedSuite):
    expected = {(t.name, m) for t in suite.tasks for m in t.metrics}

    def check(df: pd.DataFrame) -> bool:
        for _, group in df.groupby("model"):
            have = set(zip(group["task"], group["metric"]))
            if have != expected or len(group) != len(expected):
                return False
        return True

    return pa.Check(check, error=f"every model needs exactly one row per task and metric of suite "
                                 f"{suite.name!r}, covering domains {', '.join(suite.domains)}")


def _full_counts(suite: MaterializedSuite, n_expected: dict[str, int]):
    def check(df: pd.DataFrame) -> pd.Series:
        return df["n"] == df["task"].map(n_expected)

    pinned = ", ".join(f"{k}={v}" for k, v in sorted(n_expected.items()))
    return pa.Check(check, error=f"n must equal the suite's sample count ({pinned}); was `limit` set?")


def results_schema(suite: MaterializedSuite, n_expected: dict[str, int] | None = None) -> pa.DataFrameSchema:
    """The schema a results table of ``suite`` must pass. ``n_expected`` fills in counts the suite
    does not pin (built-in tasks: lm-eval's dataset size)."""
    counts = {t.name: t.n for t in suite.tasks if t.n is not None} | (n_expected or {})
    return pa.DataFrameSchema(
        {
            "content_id": pa.Column(str, pa.Check.str_matches(r"^[0-9a-f]{64}$")),
            "model": pa.Column(str),
            "role": pa.Column(str, pa.Check.isin(ROLES)),
            "domain": pa.Column(str, pa.Check.isin(suite.domains)),
            "task": pa.Column(str, pa.Check.isin([t.name for t in suite.tasks])),
            "metric": pa.Column(str),
            "value": pa.Column(float, pa.Check(lambda s: s.notna() & (s.abs() != float("inf")))),
            "stderr": pa.Column(float, pa.Check.ge(0), nullable=True),
            "n": pa.Column(int, pa.Check.gt(0)),
        },
        checks=[_complete(suite), _full_counts(suite, counts),
                pa.Check(lambda df: (df["role"] == "merged").groupby(df["model"]).all().sum() <= 1,
                         error="at most one model has role 'merged'")],
        strict=True,
        ordered=True,
        coerce=False,
    )


def validate_results(df: pd.DataFrame, suite: MaterializedSuite, n_expected: dict[str, int] | None = None) -> pd.DataFrame:
    """``df`` when it passes the suite's schema; else ResultsInvalid naming the first failure."""
    try:
        return results_schema(suite, n_expected).validate(df, lazy=False)
    except (SchemaError, SchemaErrors) as exc:
        first = str(exc).strip().splitlines()[0]
        raise ResultsInvalid(f"results table of suite {suite.name!r} rejected: {first}") from None


def to_frame(rows: list[dict]) -> pd.DataFrame:
    df = pd.DataFrame(rows, columns=COLUMNS)
    df["value"] = df["value"].astype(float)
    df["stderr"] = df["stderr"].astype(float)
    df["n"] = df["n"].astype(int)
    for col in ("content_id", "model", "role", "domain", "task", "metric"):
        df[col] = df[col].astype(str)
    return df.sort_values(["role", "model", "domain", "task", "metric"], ignore_index=True)


def primary_scores(df: pd.DataFrame, suite: MaterializedSuite) -> pd.DataFrame:
    """domains x models table of each domain's primary metric."""
    keep = {(task, metric) for task, metric in suite.primary().values()}
    mask = [(t, m) in keep for t, m in zip(df["task"], df["metric"])]
    table = df[mask].pivot_table(index="domain", columns="model", values="value", aggfunc="first")
    order = list(dict.fromkeys(df.sort_values("role", kind="stable")["model"]))  # merged first
    return table.reindex(columns=[m for m in order if m in table.columns])


def retention(scores: pd.DataFrame, merged: str, parents: list[str]) -> dict[str, float | None]:
    """merged / best parent per domain; None where every parent scores 0 (nothing to retain)."""
    if not parents:
        return {}
    out: dict[str, float | None] = {}
    for domain, row in scores.iterrows():
        best = max(float(row[p]) for p in parents)
        out[str(domain)] = float(row[merged]) / best if best > 0 else None
    return out


def normalized_average(scores: pd.DataFrame, merged: str, specialists: dict[str, str]) -> float | None:
    """Mean over domains with a (non-zero) specialist of merged[d] / specialist[d]; None if none."""
    ratios = []
    for domain, model in specialists.items():
        if domain in scores.index and model in scores.columns and scores.at[domain, model] > 0:
            ratios.append(float(scores.at[domain, merged]) / float(scores.at[domain, model]))
    return sum(ratios) / len(ratios) if ratios else None
