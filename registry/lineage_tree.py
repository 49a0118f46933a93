"""``mergeops lineage``'s human view: parents flowing into the merged model, then its evidence."""

from __future__ import annotations

from registry.lineage import LineageRecord

_ID = 16  # hex digits shown; `--json` has the full ids


def _branch(items: list[str], last_prefix: str = "    ", mid_prefix: str = "│   ") -> list[str]:
    """Draw ``items`` (each may span lines) as children: ├── / └── with continuation bars."""
    out = []
    for i, item in enumerate(items):
        last = i == len(items) - 1
        first, *rest = item.split("\n")
        out.append(("└── " if last else "├── ") + first)
        out += [(last_prefix if last else mid_prefix) + line for line in rest]
    return out


def _section(title: str, children: list[str]) -> str:
    return "\n".join([title, *_branch(children)])


def _num(value: object) -> str:
    return f"{value:.3f}" if isinstance(value, float) else ("–" if value is None else str(value))


def render_tree(record: LineageRecord, *, title: str, aliases: tuple[str, ...] = (),
                approval: str | None = None) -> str:
    """``title`` is e.g. ``demo-merge v3``; ``aliases`` and ``approval`` come from the registry."""
    parents = [f"{p.reference}  content {p.content_id[:_ID]}  licence {p.license or 'unknown'}  "
               f"audit {p.audit_verdict}" + (f"  rev {p.resolved_revision}" if p.resolved_revision else "")
               for p in record.parents]
    head = [_section("parents", parents), "   │",
            f"   ▼  {record.recipe.method or 'merge'} · recipe {record.recipe.sha256[:_ID]} · seed {record.seed}",
            f"{title}" + (f"  [{', '.join(sorted(aliases))}]" if aliases else "")
            + f"  content {record.merged.content_id[:_ID]}"]
    recipe_lines = "\n".join(record.recipe.text.rstrip().splitlines())
    code = record.code
    pkgs = " ".join(f"{k} {v}" for k, v in sorted(code.packages.items()))
    evaluation = [f"{d}  {s:.3f}" + (f"  retention {_num(record.evaluation.retention.get(d))}"
                                      if d in record.evaluation.retention else "")
                  for d, s in sorted(record.evaluation.scores.items())]
    if record.evaluation.normalized_average is not None:
        evaluation.append(f"normalized average  {_num(record.evaluation.normalized_average)}")
    leakage = [f"{r.check}  {r.model}" + (f" on {r.detail['eval_domain']}" if "eval_domain" in r.detail else "")
               + f"  {_num(r.value)} (threshold {_num(r.threshold)})  {r.verdict}" for r in record.leakage]
    gates = [f"{g.gate}  observed {_num(g.observed)}  threshold {_num(g.threshold)}  "
             f"{'pass' if g.passed else 'FAIL'}" + (f"  ({g.reason})" if g.reason else "") for g in record.gates]
    approvals = [f"{a.decision} by {a.reviewer} at {a.at}" + (f": {a.comment}" if a.comment else "")
                 for a in record.approvals]
    children = [
        f"files  {len(record.merged.files)} ({sum(f.size for f in record.merged.files):,} bytes)",
        f"licence  {record.audit.effective_license or 'unknown'}  (audit {record.audit.verdict})"
        + "".join(f"\n  obligation: {o}" for o in record.audit.obligations),
        f"recipe  sha256 {record.recipe.sha256}\n" + "\n".join("  │ " + ln for ln in recipe_lines.splitlines()),
        f"code  git {code.git_sha or 'unknown'}{' (dirty)' if code.git_dirty else ''}  "
        f"mergeops {code.mergeops or 'unknown'}" + (f"\n  {pkgs}" if pkgs else ""),
        f"dvc  rev {record.dvc.revision or 'none'}"
        + "".join(f"\n  {path}  md5 {md5}" for path, md5 in sorted(record.dvc.md5s.items())),
        _section("judged by", [f"{kind}  {j.name}  sha256 {j.sha256[:_ID]}  ({j.source})"
                               for kind, j in (("suite", record.suite), ("policy", record.policy)) if j]
                 or ["suite and policy not recorded"]),
        _section(f"evaluation  digest {(record.evaluation.digest or 'none')[:_ID]}", evaluation),
        _section(f"leakage  {record.leakage_verdict if leakage else 'none recorded'}", leakage),
        _section(f"gates  {record.gate_verdict if gates else 'none recorded'}", gates),
        _section(f"approvals  {approval or ('pending' if not record.approvals else record.approvals[-1].decision)}"
                 f"  (requested by {record.requested_by})", approvals),
    ]
    return "\n".join(head + _branch(children)) + "\n"
