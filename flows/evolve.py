"""`mergeops evolve`: search merges of a recipe's parents, scored in memory on a dev split, and
write the winner as an ordinary recipe.

The search (``merge.evolve``) proposes candidates; here each one becomes a recipe (a point of the
recipe's space for CMA-ES and random search; a slerp stage with a tensor split point for an M2N2
crossover), is merged in memory (``merge.memory``) and scored per example by ``DevScorer`` on dev
records disjoint from the eval split. M2N2 keeps its archive's weights in memory; a member missing
after a resume is re-merged from its recipe. The winner's recipe holds its whole ancestry as
stages, so ``mergeops merge OUT/recipe.yaml`` rebuilds OUT/model byte for byte.

OUT holds ``search.checkpoint.json`` (every evaluation so far: a rerun with the same OUT resumes),
``search.json`` (per-generation best, mean and diversity), ``recipe.yaml`` and ``model/``.
"""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

from evaluation._io import atomic_write_text
from merge.errors import MergeFailed, UsageError
from merge.evolve.crossover import split_index
from merge.evolve.m2n2 import M2N2Config
from merge.evolve.objective import MIN_REFERENCE, OBJECTIVES, Objective, group_means
from merge.evolve.search import ALGORITHMS, Evaluation, SearchSpec, make_search, read_checkpoint, run_search
from merge.evolve.space import RecipeSpace
from merge.memory import ParentTensors, merge_in_memory
from merge.output import make_temp_dir, place_output
from merge.plan import plan_merge
from merge.progress import Progress
from merge.recipe import Recipe, load_recipe, parse_recipe

# The demo zoo on 2 shared cores: 600 CMA-ES candidates on 300 dev prompts per domain took 7.5 min
# of wall time while other jobs ran (about 0.75 s a candidate), within the 15-minute target.
DEFAULT_BUDGET = 600
BLOCKS = 4  # per-layer-block points of each tuned parameter (CMA-ES, random search)
# CMA-ES and random search: "block" tunes each parameter per layer block; "kind" also per tensor
# kind (attention, MLP, norms; one value per tensor outside the layers): finer, so it needs more
# budget (demo zoo, 600 candidates: block 57 -> 12 dimensions generalised better to the eval split).
GRANULARITIES = ("block", "kind")
CHECKPOINT = "search.checkpoint.json"
_START = "evolve-start"  # the stage name of the input recipe's own merge (M2N2's first seed)
_OUTPUTS = ("recipe.yaml", "search.json", "model", CHECKPOINT)


@dataclass(frozen=True)
class EvolveResult:
    out_dir: Path
    content_id: str
    best: dict  # the winning candidate
    dev_score: float  # its mean dev score
    objective: float  # its value of the search's objective (least retention + a tenth of the mean)
    evaluations: int
    replayed: int  # evaluations read back from the checkpoint


class _Candidates:
    """Turns the search's candidates into recipe documents (and in-memory weights)."""

    def __init__(self, recipe: Recipe, algorithm: str, seed: int, granularity: str = "block"):
        if recipe.stages:
            raise UsageError("evolve starts from a single-stage recipe (the parents and base to search over)")
        self.recipe, self.algorithm, self.seed = recipe, algorithm, seed
        self.doc = yaml.safe_load(recipe.text)
        self.output_name = f"{recipe.name}-evolved" if recipe.name else "evolved"
        self.parents = ParentTensors()
        self.cache: dict[int, dict] = {}  # M2N2 archive member id -> its tensors
        models = [m.model for m in recipe.models or []]
        # The models whose skills the merge is to keep: every one but the base.
        self.kept = [m for m in models if m != recipe.base_model] if recipe.merge_method != "linear" else models
        if algorithm == "m2n2":
            self.seeds = [_START] + [m for m in models if m != recipe.base_model]
            if len(self.seeds) < 2:
                raise UsageError("m2n2 needs a recipe with at least one model besides the base")
            self.n_tensors = len(plan_merge(recipe).tensors)
            self.layout = recipe.path_of(self.seeds[1])  # every member has its parents' layout
            self.children: dict[int, dict] = {}
        else:
            if granularity not in GRANULARITIES:
                raise UsageError(f"unknown granularity {granularity!r}; use one of: {', '.join(GRANULARITIES)}")
            if granularity == "kind":
                plan = plan_merge(recipe)
                self.space = RecipeSpace(recipe, blocks=BLOCKS, tensor_names=[tp.out_name for tp in plan.tensors],
                                         config=plan.config)
            else:
                self.space = RecipeSpace(recipe, blocks=BLOCKS)

    def spec(self, objective: Objective, m2n2: M2N2Config | None = None) -> SearchSpec:
        if self.algorithm == "m2n2":
            return SearchSpec("m2n2", seed=self.seed, n_seeds=len(self.seeds), m2n2=m2n2 or M2N2Config(),
                              objective=objective)
        return SearchSpec(self.algorithm, seed=self.seed, bounds=tuple(map(tuple, self.space.bounds())),
                          x0=tuple(self.space.x0()), objective=objective)

    def parent_tensors(self, model: str) -> dict:
        """One parent's own weights, as the search's merges read them."""
        doc = {"merge_method": "passthrough", "models": [{"model": model}]}
        return merge_in_memory(self._parse(yaml.safe_dump(doc)), self.parents)

    # -- recipes --------------------------------------------------------------------------------
    def _ref(self, cid: int) -> str:
        return self.seeds[cid] if cid < len(self.seeds) else f"evolve-{cid}"

    def _stage(self, cand: dict) -> dict:
        """An M2N2 crossover as a slerp stage: w on the first k tensors of the plan, 1 - w after."""
        a, b = self._ref(cand["a"]), self._ref(cand["b"])
        k = self.n_tensors if cand["split"] >= 1 else split_index(cand["split"], self.n_tensors)
        return {"name": self._ref(cand["id"]), "merge_method": "slerp", "base_model": a,
                "models": [{"model": a}, {"model": b}], "parameters": {"t": cand["w"]},
                "split": {"index": k, "order": "plan"}}

    def _start_doc(self) -> dict:
        return {**{k: v for k, v in self.doc.items() if k != "name"}, "name": _START}

    def docs(self, cand: dict) -> list[dict]:
        """The stages that make ``cand``, in order; the last is ``cand`` itself."""
        if cand["kind"] == "point":
            return [self.space.to_doc(cand["x"])]
        if cand["kind"] == "seed":
            if cand["parent"] == 0:
                return [self._start_doc()]
            return [{"merge_method": "passthrough", "models": [{"model": self.seeds[cand["parent"]]}]}]
        ancestry, todo = set(), [cand["id"]]
        while todo:
            cid = todo.pop()
            if cid in ancestry:
                continue
            ancestry.add(cid)
            if cid in self.children:
                todo += [self.children[cid]["a"], self.children[cid]["b"]]
        docs = [self._start_doc()] if 0 in ancestry else []
        return docs + [self._stage(self.children[c]) for c in sorted(ancestry) if c in self.children]

    def output_text(self, cand: dict) -> str:
        """The winner's replayable recipe: its stages, the last carrying the output's name and the
        input recipe's mergeops keys (seed, intended_use, policy)."""
        docs = self.docs(cand)
        last = {**docs[-1], "name": self.output_name}
        for key in ("intended_use", "policy"):
            if key in self.doc and key not in last:
                last[key] = self.doc[key]
        docs[-1] = last
        head = (f"# Evolved by `mergeops evolve` ({self.algorithm}) from {self.recipe.name or 'a recipe'} "
                f"(sha256 {self.recipe.sha256[:12]}); `mergeops merge` of this file rebuilds the model.\n")
        return head + yaml.safe_dump_all(docs, sort_keys=False)

    # -- weights --------------------------------------------------------------------------------
    def merge(self, cand: dict) -> dict:
        if cand["kind"] == "cross":
            self.children[cand["id"]] = cand
            held = {self._ref(c): (self._tensors(c), self.layout) for c in (cand["a"], cand["b"])
                    if c == 0 or c >= len(self.seeds)}
            stage = {k: v for k, v in self._stage(cand).items() if k != "name"}
            out = merge_in_memory(self._parse(yaml.safe_dump(stage)), self.parents, held=held)
        else:
            out = merge_in_memory(self._parse(yaml.safe_dump_all(self.docs(cand), sort_keys=False)), self.parents)
        if self.algorithm == "m2n2":
            self.cache[cand["id"]] = out
        return out

    def _tensors(self, cid: int) -> dict:
        if cid not in self.cache:  # after a resume: re-merge the member from its own recipe
            cand = self.children.get(cid) or {"id": cid, "kind": "seed", "parent": cid}
            self.cache[cid] = merge_in_memory(self._parse(yaml.safe_dump_all(self.docs(cand), sort_keys=False)),
                                              self.parents)
        return self.cache[cid]

    def keep(self, ids) -> None:
        """Drop the weights of everything no longer in M2N2's archive."""
        for cid in [c for c in self.cache if c not in set(ids)]:
            del self.cache[cid]

    def _parse(self, text: str) -> Recipe:
        return parse_recipe(text, self.recipe.base_dir)


def _generations(spec: SearchSpec, evals: list[Evaluation], size: int) -> list[dict]:
    """Per generation of ``size`` evaluations: the best and mean objective and the diversity of the
    population (M2N2: its archive after the generation, replayed without scoring; otherwise the
    generation's candidates), and the best objective so far. Diversity: the share of examples on
    which the population disagrees."""
    search = make_search(spec) if spec.algorithm == "m2n2" else None
    values = [spec.objective(ev.scores) for ev in evals]  # each evaluation's objective, once
    rows, best_so_far = [], -math.inf
    for g in range(math.ceil(len(evals) / size)):
        chunk = evals[g * size:(g + 1) * size]
        if search is not None:
            for ev in chunk:
                search.ask()
                search.tell(ev.candidate, ev.scores)
            pop = search.scores
            pop_values = np.array([spec.objective(row) for row in pop])
        else:
            pop = np.vstack([ev.scores for ev in chunk])
            pop_values = np.array(values[g * size:g * size + len(chunk)])
        best_so_far = max(best_so_far, *values[g * size:g * size + len(chunk)])
        rows.append({"generation": g, "evaluations": g * size + len(chunk), "best": float(pop_values.max()),
                     "mean": float(pop_values.mean()), "diversity": float(np.mean(pop.max(axis=0) != pop.min(axis=0))),
                     "best_so_far": best_so_far})
    return rows


def _check_out(out_dir: Path) -> None:
    if out_dir.is_symlink() or (out_dir.exists() and not out_dir.is_dir()):
        raise UsageError(f"{out_dir}: not a directory; choose another --out")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not (out_dir / CHECKPOINT).is_file():
        raise UsageError(f"{out_dir}: exists, is not empty and holds no {CHECKPOINT} to resume; choose another --out")
    stray = [p.name for p in out_dir.iterdir() if p.name not in _OUTPUTS and not p.name.startswith(".")] \
        if out_dir.is_dir() else []
    if stray:
        raise UsageError(f"{out_dir}: holds {stray[0]!r}, which evolve did not write; choose another --out")


def evolve(recipe: Recipe, out_dir: Path, *, records: list[dict], scorer_dir: Path, algorithm: str = "cmaes",
           budget: int = DEFAULT_BUDGET, seed: int = 0, objective: str = "retention",
           m2n2: M2N2Config | None = None, granularity: str = "block", progress: bool = True) -> EvolveResult:
    """Search ``budget`` candidates (replayed ones included) and write the winner to ``out_dir``.

    ``records`` are dev records ``{"prompt", "target"[, "group"]}``; with ``objective="retention"``
    each group (domain) is scored against the best parent's score there, measured first (those
    parent scorings are not counted in ``budget``). ``m2n2`` changes M2N2's settings (archive size,
    alpha, matchmaker, split point) from the paper's defaults; ``granularity`` is CMA-ES's and random
    search's space (``GRANULARITIES``)."""
    from evaluation.dev_scoring import DevScorer  # torch and transformers: only once inputs are checked

    if algorithm not in ALGORITHMS:
        raise UsageError(f"unknown algorithm {algorithm!r}; use one of: {', '.join(ALGORITHMS)}")
    if objective not in OBJECTIVES:
        raise UsageError(f"unknown objective {objective!r}; use one of: {', '.join(OBJECTIVES)}")
    if budget < 1:
        raise UsageError(f"--budget must be at least 1 candidate, got {budget}")
    if not records:
        raise UsageError("no dev records to score candidates on")
    out_dir = Path(out_dir)
    _check_out(out_dir)
    cands = _Candidates(recipe, algorithm, seed, granularity)
    records, names, sizes = _grouped(records)
    scorer = DevScorer(scorer_dir, records)
    target = Objective()
    if objective == "retention":
        means = [group_means(scorer(cands.parent_tensors(m)), sizes) for m in cands.kept]
        reference = np.max(means, axis=0)
        skilled = reference >= MIN_REFERENCE
        if skilled.any() and not skilled.all():  # no parent has that skill: nothing to keep, no need to score it
            kept = {n for n, k in zip(names, skilled) if k}
            records, names, sizes = _grouped([r for r in records if str(r.get("group", "dev")) in kept])
            reference = reference[skilled]
            scorer = DevScorer(scorer_dir, records)
        target = Objective("retention", sizes, tuple(round(float(v), 6) for v in reference), names)
    spec = cands.spec(target, m2n2)
    out_dir.mkdir(parents=True, exist_ok=True)
    if (out_dir / CHECKPOINT).is_file():  # a resume: crossovers made before are ancestors of new ones
        for ev in read_checkpoint(out_dir / CHECKPOINT)[1]:
            if ev.candidate.get("kind") == "cross":
                cands.children[ev.candidate["id"]] = ev.candidate
    fresh = 0
    with Progress("evolve", budget, unit="candidates", enabled=progress) as bar:
        def fitness(cand: dict) -> np.ndarray:
            return scorer(cands.merge(cand))

        def on_eval(i: int, ev: Evaluation, search) -> None:
            nonlocal fresh
            fresh += 1
            if algorithm == "m2n2":
                cands.keep(search.ids)
            bar.advance(i + 1 - bar.n, f"{target(ev.scores):.3f}")

        result = run_search(spec, fitness, budget, checkpoint=out_dir / CHECKPOINT, on_eval=on_eval)
        bar.advance(budget - bar.n)
    best = result.best()
    size = spec.m2n2.archive_size if algorithm == "m2n2" else \
        (spec.popsize or 4 + int(3 * math.log(len(spec.bounds))))
    text = cands.output_text(best.candidate)
    atomic_write_text(out_dir / "recipe.yaml", text)
    atomic_write_text(out_dir / "search.json", json.dumps({
        "algorithm": algorithm, "seed": seed, "budget": budget, "evaluations": len(result.evaluations),
        "dev_examples": len(records), "objective": objective,
        "reference": dict(zip(names, target.reference)) if objective == "retention" else None,
        "best": {"candidate": best.candidate, "dev_score": best.mean, **target.describe(best.scores)},
        "generation_size": size, "generations": _generations(spec, result.evaluations, size)}, indent=2) + "\n")
    content_id = _write_model(out_dir, recipe.base_dir, progress)
    return EvolveResult(out_dir, content_id, best.candidate, best.mean, target(best.scores),
                        len(result.evaluations), len(result.evaluations) - fresh)


def _grouped(records: list[dict]) -> tuple[list[dict], tuple[str, ...], tuple[int, ...]]:
    """The records reordered group by group (first appearance), with the groups' names and sizes;
    records without a group form one group, "dev"."""
    groups: dict[str, list[dict]] = {}
    for r in records:
        groups.setdefault(str(r.get("group", "dev")), []).append(r)
    return [r for g in groups.values() for r in g], tuple(groups), tuple(len(g) for g in groups.values())


def _write_model(out_dir: Path, base_dir: Path, progress: bool) -> str:
    """OUT/model from OUT/recipe.yaml exactly as `mergeops merge` runs it, checked against the
    in-memory merge the search scored; replaces an older OUT/model only when complete."""
    from safetensors.torch import load_file

    from merge.run import run_merge

    recipe = load_recipe(out_dir / "recipe.yaml", base_dir)
    tmp = make_temp_dir(out_dir / "model.new")
    try:
        result = run_merge(recipe, tmp / "model", progress=progress)
        scored = merge_in_memory(recipe, ParentTensors())
        written = {}
        for shard in sorted((tmp / "model").glob("*.safetensors")):
            written.update(load_file(str(shard)))
        if set(written) != set(scored) or any(not written[n].equal(t) for n, t in scored.items()):
            raise MergeFailed("the written model differs from the one the search scored; please report this")
        if (out_dir / "model").exists():
            shutil.rmtree(out_dir / "model")
        place_output(tmp / "model", out_dir / "model")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return result.content_id


def dev_records(suite: str | None, zoo_dir: Path | None, per_domain: int | None = None) -> list[dict]:
    """The dev records ``{"prompt", "target", "group"}`` of a suite, domain by domain: a zoo domain's
    are drawn from the zoo (``zoo_dev_records``, ``per_domain`` each, default ``DEV_SIZE``); a domain of
    the suite's own comes from its ``dev:`` file (its first ``per_domain`` rows, default all), which
    must share no prompt with the domain's eval data."""
    from evaluation.dev_split import DEV_SIZE, zoo_dev_records
    from evaluation.domains import DOMAINS
    from evaluation.suite_file import load_suite
    from evaluation.zoo_source import domain_files

    if per_domain is not None and per_domain < 1:
        raise UsageError(f"--dev-size must be at least 1 prompt per domain, got {per_domain}")
    spec, base = load_suite(suite or "zoo")
    out: list[dict] = []
    for name, domain in spec.domains.items():
        out += _own_dev(spec.name, name, domain, base, per_domain)
    if spec.tasks:
        raise UsageError(f"suite {spec.name!r} lists its tasks as `tasks:`; evolve needs each domain's dev split: "
                         "write them as `domains:` with `dev: {data: FILE, prompt: COL, target: COL}`")
    if spec.zoo_domains:
        if zoo_dir is None:
            raise UsageError("evolve scores zoo domains on the zoo's dev split: give --zoo DIR (or MERGEOPS_ZOO)")
        files = domain_files(Path(zoo_dir))
        wanted = sorted(set(files) & set(DOMAINS)) if spec.zoo_domains == "all" else list(spec.zoo_domains)
        dev = zoo_dev_records(Path(zoo_dir), wanted, DEV_SIZE if per_domain is None else per_domain)
        out += [{**r, "group": d} for d in wanted for r in dev[d]]
    if not out:
        raise UsageError(f"suite {spec.name!r} has no domain to draw a dev split from")
    return out


def _own_dev(suite: str, name: str, domain, base: Path | None, per_domain: int | None) -> list[dict]:
    from evaluation.datafiles import check_columns, read_rows
    from evaluation.suite_file import suite_path

    where = f"suite {suite!r}, domain {name!r}"
    if domain.dev is None:
        raise UsageError(f"{where} has no dev split for the search: add `dev: {{data: FILE, prompt: COL, "
                         "target: COL}` (rows not in its eval data)")

    path = suite_path(domain.dev.data, base)
    check_columns(path, [domain.dev.prompt, domain.dev.target])
    rows = read_rows(path)[:per_domain]
    records = [{"prompt": str(r[domain.dev.prompt]), "target": str(r[domain.dev.target]), "group": name} for r in rows]
    prompts = {r["prompt"] for r in records}
    for task in domain.tasks:
        if task.data is None:
            continue
        seen = prompts & {str(r.get(task.prompt)) for r in read_rows(suite_path(task.data, base))}
        if seen:
            raise UsageError(f"{where}: {len(seen)} dev prompt(s) of {domain.dev.data} are in its eval data "
                             f"{task.data} (e.g. {sorted(seen)[0][:60]!r}); the search must not see the eval split")
    return records
