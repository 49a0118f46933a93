"""``evaluate_models``: score a merged model and its parents on a suite, check leakage, apply gates.

Every expensive step is cached under ``cache_dir`` by what decides its result - the model's content
id, the suite hash (or the canaries and leakage settings), the lm-eval version - so a re-run with
nothing changed loads no model. ``EvaluationReport.runs`` says, per model, whether lm-eval and the
leakage checks ran or came from the cache.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pandas as pd

from evaluation import leakage as lk
from evaluation import lmeval_runner as runner
from evaluation import zoo_source
from evaluation._io import atomic_write_text
from evaluation.contamination import Declarer, contamination_checks, eval_texts
from evaluation.gates import GateDecision, GatePolicy, decide, load_gate_policy, parse_gate_policy
from evaluation.results import (normalized_average, primary_scores, retention, to_frame, validate_results)
from evaluation.suites import MaterializedSuite, Suite, prepare_suite
from merge.errors import UsageError
from merge.manifest import canonical_json, content_id


@dataclass(frozen=True)
class ModelRef:
    path: Path
    role: Literal["parent", "merged"] = "parent"
    name: str | None = None

    @property
    def label(self) -> str:
        return self.name or Path(self.path).resolve().name


@dataclass
class EvaluationReport:
    suite: str
    suite_hash: str
    results: pd.DataFrame
    scores: pd.DataFrame  # domains x models, each domain's primary metric
    primary: dict[str, tuple[str, str]]  # domain -> (task, metric)
    merged: str | None
    retention: dict[str, float | None]  # None: every parent scores 0 there (left out of the JSON)
    normalized_average: float | None
    specialists: dict[str, str]
    specialists_source: str | None  # "zoo" | "best parent" | None (no parents)
    leakage: list[lk.LeakageRecord]
    gates: list[GateDecision] | None
    runs: list[dict] = field(default_factory=list)  # {model, content_id, lm_eval: "ran"|"cached", leakage: ...}

    @property
    def passed(self) -> bool | None:
        return None if self.gates is None else all(g.passed for g in self.gates)

    @property
    def digest(self) -> str:
        """sha256 of the canonical results rows: same numbers, same digest."""
        rows = json.loads(self.results.to_json(orient="records"))
        return hashlib.sha256(canonical_json(sorted(rows, key=canonical_json))).hexdigest()

    def to_json(self) -> dict:
        """DESIGN.md's evaluate keys (results, retention, leakage, gates when a policy applied) plus extras."""
        doc = {
            "results": json.loads(self.results.to_json(orient="records")),
            "retention": {d: v for d, v in self.retention.items() if v is not None},
            "leakage": [r.model_dump() for r in self.leakage],
        }
        if self.gates is not None:
            doc["gates"] = [g.model_dump() for g in self.gates]
            doc["passed"] = self.passed
        doc |= {"suite": self.suite, "suite_hash": self.suite_hash, "merged": self.merged,
                "retention_undefined": sorted(d for d, v in self.retention.items() if v is None),
                "normalized_average": self.normalized_average, "specialists": self.specialists,
                "specialists_source": self.specialists_source,
                "merged_scores": ({} if self.merged is None else
                                  {str(d): float(v) for d, v in self.scores[self.merged].items()}),
                "scores": {str(d): {m: (None if pd.isna(v) else float(v)) for m, v in row.items()}
                           for d, row in self.scores.iterrows()},
                "primary": {d: {"task": t, "metric": m} for d, (t, m) in self.primary.items()},
                "digest": self.digest, "lm_eval": runner.LM_EVAL_VERSION, "runs": self.runs}
        return doc


def _policy(policy: GatePolicy | dict | str | Path | None) -> GatePolicy | None:
    if policy is None or isinstance(policy, GatePolicy):
        return policy
    if isinstance(policy, dict):
        return parse_gate_policy(policy)
    return load_gate_policy(None if str(policy) == "default" else policy)


def _specialists(models: list[ModelRef], ids: dict[str, str], zoo_dir: Path | None,
                 scores: pd.DataFrame) -> tuple[dict[str, str], str | None]:
    """(domain -> name of the parent that is its specialist, where that came from). The zoo's own
    specialists when a zoo is given and names any of the evaluated parents; else, per domain, the
    best-scoring parent on the primary metric (the first one given on a tie)."""
    parents = [ref.label for ref in models if ref.role == "parent"]
    if not parents:
        return {}, None
    if zoo_dir is not None:
        keys = zoo_source.specialist_keys(zoo_dir)
        out: dict[str, str] = {}
        for ref in models:
            if ref.role != "parent":
                continue
            domain = keys.get(str(Path(ref.path).resolve())) or keys.get(ids[ref.label])
            if domain and domain not in out:
                out[domain] = ref.label
        if out:
            return out, "zoo"
    best = {str(domain): max(parents, key=lambda p: (float(row[p]), -parents.index(p)))
            for domain, row in scores.iterrows()}
    return best, "best parent"


def _leakage(ref: ModelRef, cid: str, canaries: list[lk.Canary], policy: lk.LeakagePolicy, cache_dir: Path,
             model_of) -> tuple[list[lk.LeakageRecord], str]:
    """Canary records (and, for the merged model, the PII record), cached like the scores."""
    pii = ref.role == "merged"
    path = cache_dir / "leakage" / f"{_leakage_key(cid, canaries, policy, pii)}.json"
    if path.is_file():
        found = [lk.LeakageRecord.model_validate(r) for r in json.loads(path.read_text())]
        # a cached record carries the name of the run that made it
        return [r.model_copy(update={"model": ref.label}) for r in found], "cached"
    model, tok = model_of(ref)
    found = lk.canary_records(model, tok, ref.label, canaries, policy)
    if pii:
        found += lk.pii_records(model, tok, ref.label, policy)
    atomic_write_text(path, json.dumps([r.model_dump() for r in found], sort_keys=True))
    return found, "ran"


def _contamination(models: list[ModelRef], cards: dict[str, dict], msuite: MaterializedSuite,
                   zoo_dir: Path | None, policy: lk.LeakagePolicy) -> list[lk.LeakageRecord]:
    """Contamination of every parent's declared training data with the suite's eval data (the
    candidate too when it is evaluated alone, or when its own card declares data)."""
    alone = not any(m.role == "parent" for m in models)
    declarers = [Declarer(name=m.label, path=Path(m.path), card=cards[m.label],
                          required=m.role == "parent" or alone) for m in models]
    needs_zoo = zoo_dir is not None and any(lk.declared_training_data(cards[m.label]) for m in models)
    zoo_train = ({d: f.train for d, f in zoo_source.domain_files(zoo_dir).items()} if needs_zoo else None)
    return contamination_checks(declarers, eval_texts(msuite), policy, zoo_train)


def _leakage_key(cid: str, canaries: list[lk.Canary], policy: lk.LeakagePolicy, pii: bool) -> str:
    doc = {"content_id": cid, "canaries": [c.model_dump() for c in canaries], "policy": policy.canary_settings(),
           "pii": pii, "v": 2}
    return hashlib.sha256(canonical_json(doc)).hexdigest()


@contextlib.contextmanager
def _torch_threads(threads: int | None):
    """Tiny models run fastest on one thread: more only adds contention on a shared machine."""
    if threads is None:
        yield
        return
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def evaluate_models(
    models: list[ModelRef],
    *,
    suite: str | Path | Suite | MaterializedSuite = "zoo",
    zoo_dir: Path | None = None,
    cache_dir: Path,
    policy: GatePolicy | dict | str | Path | None = None,
    audit_verdict: str | None = None,
    license_verdict: str | None = None,
    champion_scores: dict[str, float] | None = None,
    device: str = "cpu",
    threads: int | None = None,
) -> EvaluationReport:
    """Evaluate every model on ``suite`` (a shipped name, a suite file, or what ``prepare_suite``
    returned); gates apply when ``policy`` is given ("default" = shipped). ``zoo_dir`` is needed
    only by a suite asking for zoo domains or a card naming zoo domains as training data.
    ``threads`` sets torch's CPU threads for the duration (None: leave as is)."""
    with _torch_threads(threads):
        return _evaluate(models, suite=suite, zoo_dir=zoo_dir, cache_dir=cache_dir, policy=policy,
                         audit_verdict=audit_verdict, license_verdict=license_verdict,
                         champion_scores=champion_scores, device=device)


def _evaluate(models, *, suite, zoo_dir, cache_dir, policy, audit_verdict, license_verdict, champion_scores,
              device) -> EvaluationReport:
    if not models:
        raise UsageError("nothing to evaluate: give at least one model directory")
    names = [m.label for m in models]
    if len(set(names)) != len(names):
        raise UsageError(f"model names repeat ({', '.join(names)}); give each a distinct name")
    merged = [m.label for m in models if m.role == "merged"]
    if len(merged) > 1:
        raise UsageError(f"more than one merged model ({', '.join(merged)}); evaluate one candidate at a time")
    gate_policy = _policy(policy)
    leak_policy = gate_policy.leakage if gate_policy else lk.LeakagePolicy()
    msuite = suite if isinstance(suite, MaterializedSuite) else \
        prepare_suite(suite, zoo_dir=zoo_dir, cache_dir=Path(cache_dir))

    ids = {m.label: content_id(Path(m.path)) for m in models}
    cards = {m.label: lk.read_card(Path(m.path)) for m in models}
    parent_canaries = [c for m in models if m.role == "parent" for c in lk.declared_canaries(cards[m.label])]
    loaded: dict[str, tuple] = {}

    def model_of(ref: ModelRef):
        if ref.label not in loaded:
            loaded.clear()  # keep one model in memory at a time
            loaded[ref.label] = runner.load_model(Path(ref.path), device)
        return loaded[ref.label]

    rows, records, runs = [], [], []
    for i, ref in enumerate(models, 1):
        cid = ids[ref.label]
        run = {"model": ref.label, "content_id": cid}
        step = f"evaluate: {ref.label} ({i}/{len(models)} models)"  # progress lines start with it
        cached = runner.read_cache(Path(cache_dir), cid, msuite, step=step)
        run["lm_eval"] = "cached" if cached is not None else "ran"
        if cached is None:
            cached = runner.run_suite(model_of(ref), msuite, batch_size=32, step=step)
            runner.write_cache(Path(cache_dir), cid, msuite, cached)
        rows += [{"content_id": cid, "model": ref.label, "role": ref.role, **r} for r in cached]
        # Canaries: the policy's, the model's own, and for the merged model every parent's.
        canaries = [*leak_policy.canaries, *lk.declared_canaries(cards[ref.label]),
                    *(parent_canaries if ref.role == "merged" else [])]
        if canaries or ref.role == "merged":
            found, run["leakage"] = _leakage(ref, cid, list(dict.fromkeys(canaries)), leak_policy, Path(cache_dir),
                                             model_of)
            records += found
        runs.append(run)
    loaded.clear()
    records += _contamination(models, cards, msuite, zoo_dir, leak_policy)

    n_expected = {r["task"]: r["n_expected"] for r in rows if r.get("n_expected", -1) > 0}
    df = validate_results(to_frame(rows), msuite, n_expected)
    scores = primary_scores(df, msuite)
    parents = [m.label for m in models if m.role == "parent"]
    candidate = merged[0] if merged else None
    specialists, source = _specialists(models, ids, zoo_dir, scores)
    report = EvaluationReport(
        suite=msuite.name, suite_hash=msuite.suite_hash, results=df, scores=scores, primary=msuite.primary(),
        merged=candidate, retention=retention(scores, candidate, parents) if candidate else {},
        normalized_average=normalized_average(scores, candidate, specialists) if candidate else None,
        specialists=specialists, specialists_source=source, leakage=records, gates=None, runs=runs)
    if gate_policy is not None and candidate is not None:
        metric = next(iter(msuite.primary().values()))[1] if msuite.primary() else "value"
        report.gates = decide(gate_policy, candidate=candidate, scores=scores[candidate].to_dict(),
                              retention=report.retention, leakage=records, audit_verdict=audit_verdict,
                              license_verdict=license_verdict, champion_scores=champion_scores, metric=metric)
    return report
