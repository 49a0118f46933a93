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


@dataclass(frozen=True)
class ModelJob:
    """One model's share of an evaluation: what ``evaluate_one`` needs, picklable, so a process
    (or a Dask worker) that shares the cache folder can run it."""

    ref: ModelRef
    content_id: str
    suite: MaterializedSuite
    canaries: tuple[lk.Canary, ...]  # checked when non-empty (and always for the merged model)
    leakage_policy: lk.LeakagePolicy
    cache_dir: Path
    device: str = "cpu"
    step: str = "evaluate"  # progress lines start with it


@dataclass(frozen=True)
class ModelOutcome:
    rows: list[dict]
    leakage: list[lk.LeakageRecord]
    run: dict  # {model, content_id, lm_eval: "ran"|"cached", leakage: ... (when checked)}


@dataclass(frozen=True)
class EvaluationPlan:
    """What ``plan_evaluation`` read once for all models; ``finish_evaluation`` turns the outcomes
    of its ``jobs`` (in order) into the report."""

    models: list[ModelRef]
    jobs: list[ModelJob]
    ids: dict[str, str]
    cards: dict[str, dict]
    suite: MaterializedSuite
    zoo_dir: Path | None
    gate_policy: GatePolicy | None
    leakage_policy: lk.LeakagePolicy


def evaluate_one(job: ModelJob, *, threads: int | None = None) -> ModelOutcome:
    """Score one model on the suite and check its leakage, each through the content-addressed cache
    (a model is loaded only when something is not cached, and freed on return)."""
    with _torch_threads(threads):
        return _evaluate_one(job)


def _evaluate_one(job: ModelJob) -> ModelOutcome:
    ref, cid, cache_dir = job.ref, job.content_id, Path(job.cache_dir)
    loaded: list[tuple] = []

    def model_of(_ref: ModelRef):
        if not loaded:
            loaded.append(runner.load_model(Path(ref.path), job.device))
        return loaded[0]

    run = {"model": ref.label, "content_id": cid}
    cached = runner.read_cache(cache_dir, cid, job.suite, step=job.step)
    run["lm_eval"] = "cached" if cached is not None else "ran"
    if cached is None:
        cached = runner.run_suite(model_of(ref), job.suite, batch_size=32, step=job.step)
        runner.write_cache(cache_dir, cid, job.suite, cached)
    rows = [{"content_id": cid, "model": ref.label, "role": ref.role, **r} for r in cached]
    records: list[lk.LeakageRecord] = []
    if job.canaries or ref.role == "merged":
        records, run["leakage"] = _leakage(ref, cid, list(job.canaries), job.leakage_policy, cache_dir, model_of)
    loaded.clear()
    return ModelOutcome(rows=rows, leakage=records, run=run)


def plan_evaluation(models: list[ModelRef], *, suite: str | Path | Suite | MaterializedSuite = "zoo",
                    zoo_dir: Path | None = None, cache_dir: Path, policy: GatePolicy | dict | str | Path | None = None,
                    device: str = "cpu") -> EvaluationPlan:
    """Check the inputs, read the suite, policy, content ids and cards once, and cut the work into
    one ``ModelJob`` per model."""
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
    jobs = []
    for i, ref in enumerate(models, 1):
        # Canaries: the policy's, the model's own, and for the merged model every parent's.
        canaries = [*leak_policy.canaries, *lk.declared_canaries(cards[ref.label]),
                    *(parent_canaries if ref.role == "merged" else [])]
        jobs.append(ModelJob(ref=ref, content_id=ids[ref.label], suite=msuite,
                             canaries=tuple(dict.fromkeys(canaries)), leakage_policy=leak_policy,
                             cache_dir=Path(cache_dir), device=device,
                             step=f"evaluate: {ref.label} ({i}/{len(models)} models)"))
    return EvaluationPlan(models=list(models), jobs=jobs, ids=ids, cards=cards, suite=msuite,
                          zoo_dir=zoo_dir, gate_policy=gate_policy, leakage_policy=leak_policy)


def finish_evaluation(plan: EvaluationPlan, outcomes: list[ModelOutcome], *, audit_verdict: str | None = None,
                      license_verdict: str | None = None,
                      champion_scores: dict[str, float] | None = None) -> EvaluationReport:
    """The report from every job's outcome (in the plan's order), contamination checks and gates."""
    if len(outcomes) != len(plan.jobs):
        raise UsageError(f"{len(outcomes)} evaluation outcomes for {len(plan.jobs)} models")
    models, msuite, zoo_dir = plan.models, plan.suite, plan.zoo_dir
    rows = [r for o in outcomes for r in o.rows]
    records = [r for o in outcomes for r in o.leakage]
    runs = [o.run for o in outcomes]
    records += _contamination(models, plan.cards, msuite, zoo_dir, plan.leakage_policy)

    n_expected = {r["task"]: r["n_expected"] for r in rows if r.get("n_expected", -1) > 0}
    df = validate_results(to_frame(rows), msuite, n_expected)
    scores = primary_scores(df, msuite)
    parents = [m.label for m in models if m.role == "parent"]
    candidate = next((m.label for m in models if m.role == "merged"), None)
    specialists, source = _specialists(models, plan.ids, zoo_dir, scores)
    report = EvaluationReport(
        suite=msuite.name, suite_hash=msuite.suite_hash, results=df, scores=scores, primary=msuite.primary(),
        merged=candidate, retention=retention(scores, candidate, parents) if candidate else {},
        normalized_average=normalized_average(scores, candidate, specialists) if candidate else None,
        specialists=specialists, specialists_source=source, leakage=records, gates=None, runs=runs)
    gate_policy = plan.gate_policy
    if gate_policy is not None and candidate is not None:
        metric = next(iter(msuite.primary().values()))[1] if msuite.primary() else "value"
        report.gates = decide(gate_policy, candidate=candidate, scores=scores[candidate].to_dict(),
                              retention=report.retention, leakage=records, audit_verdict=audit_verdict,
                              license_verdict=license_verdict, champion_scores=champion_scores, metric=metric)
    return report


def _evaluate(models, *, suite, zoo_dir, cache_dir, policy, audit_verdict, license_verdict, champion_scores,
              device) -> EvaluationReport:
    plan = plan_evaluation(models, suite=suite, zoo_dir=zoo_dir, cache_dir=cache_dir, policy=policy, device=device)
    return finish_evaluation(plan, [_evaluate_one(job) for job in plan.jobs], audit_verdict=audit_verdict,
                             license_verdict=license_verdict, champion_scores=champion_scores)
