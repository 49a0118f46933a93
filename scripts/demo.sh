#!/usr/bin/env bash
# `make demo`: the governed pipeline on the demo zoo, end to end, from a fresh clone.
#   zoo (DVC) → run a passing recipe → run a leaky one (stopped) → lineage → four-eyes approval and
#   promotion → a parent publishes a new revision → `mergeops watch --once` → one new candidate →
#   `mergeops verify` replays the champion bit for bit, its old parent restored from the DVC store.
set -euo pipefail
cd "$(dirname "$0")/.."

BIN=${BIN:-.venv/bin}
export PATH="$PWD/$BIN:$PATH"
export MERGEOPS_HOME=${MERGEOPS_HOME:-.mergeops}
# Settings (the suite, the zoo, the watched recipe) come from mergeops.yaml at the repository root.
RECIPE=recipes/demo.yaml
LEAKY=recipes/demo-leaky.yaml
NAME=demo-merge
SPECIALIST=data/zoo/models/sort
POLICY=(${DEMO_POLICY:+--policy "$DEMO_POLICY"})  # e.g. relaxed gates for a tiny-profile smoke run
started=$(date +%s)

step() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }
must_fail() {  # run a command that governance must refuse; the demo fails if it is not refused
    if "$@"; then echo "expected a refusal from: $*" >&2; exit 1; fi
}

step "0. a fresh registry (the previous demo's state is kept aside, never deleted)"
if [ -e "$MERGEOPS_HOME/mlflow.db" ]; then
    kept="$MERGEOPS_HOME.previous-$(date +%Y%m%d-%H%M%S)"
    mv "$MERGEOPS_HOME" "$kept"
    echo "moved the previous state to $kept"
fi
mkdir -p "$MERGEOPS_HOME"
# The demo's Prefect runs live beside its registry, so `prefect server start` (below) shows them.
export PREFECT_HOME=${PREFECT_HOME:-$(cd "$MERGEOPS_HOME" && pwd)/prefect}

step "1. the demo zoo: rebuilt only when its code or params changed, else restored from the DVC cache"
if grep -q "^  zoo:" dvc.lock 2>/dev/null; then
    dvc checkout -f zoo >/dev/null 2>&1 || true  # undo an earlier demo's parent update, if cached
elif [ -f data/zoo/zoo.json ]; then
    echo "adopting the zoo already in data/zoo (dvc commit zoo); delete data/zoo to rebuild it"
    dvc commit -f -q zoo
fi
dvc repro zoo
python - <<'EOF'
from evaluation.zoo import load_zoo
z = load_zoo("data/zoo")
domains = [d.name for d in z.domains]
print(f"{'model':<14}" + "".join(f"{d:>9}" for d in domains))
odd = {m.name for m in z.models if m.role == "odd"}
for name in dict.fromkeys(r.model for r in z.scorecard):  # the models, then the demo merge's row
    if name not in odd:
        print(f"{name:<14}" + "".join(f"{z.score(name, d):>9.2f}" for d in domains))
EOF

step "2. the pipeline on $RECIPE: audit → merge → evaluate → gates → DVC → MLflow candidate"
mergeops run "$RECIPE" --requested-by alice "${POLICY[@]}"

step "3. the pipeline on $LEAKY: stopped before registration (exit 1), nothing registered"
must_fail mergeops run "$LEAKY" --requested-by alice "${POLICY[@]}"

step "4. the lineage an auditor reads"
mergeops lineage "$NAME@candidate"

step "5. four-eyes: the requester cannot approve; another reviewer approves and promotes"
must_fail mergeops approve "$NAME" 1 --reviewer alice --comment "my own merge"
mergeops approve "$NAME" 1 --reviewer bob --comment "gates pass; retention and leakage reviewed"
mergeops promote "$NAME" 1 --by bob

step "6. a parent publishes a new revision; the watch re-merges it to exactly one new candidate"
python -m flows.demo update-parent "$SPECIALIST"
mergeops watch --once "${POLICY[@]}"   # the recipes listed under `watch:` in mergeops.yaml
step "   ...and a second pass finds nothing new"
mergeops watch --once "${POLICY[@]}"
mergeops lineage "$NAME@candidate" --json | python -c '
import json, sys
r = json.load(sys.stdin)
print("candidate parents:", ", ".join(p["reference"] + " " + p["content_id"][:12] for p in r["parents"]))
print("judged by suite", r["suite"]["name"], r["suite"]["sha256"][:12], "and policy", r["policy"]["name"],
      r["policy"]["sha256"][:12])'

step "7. an auditor replays v1, whose parent $SPECIALIST has changed since: its old bytes come from the DVC store"
mergeops verify "$NAME@1"

step "8. the audit log's hash chain"
mergeops log verify

elapsed=$(( $(date +%s) - started ))
home=$(cd "$MERGEOPS_HOME" && pwd)
cat <<EOF

Demo finished in $((elapsed / 60)) min $((elapsed % 60)) s. Next:
  mlflow ui --backend-store-uri sqlite:///$home/mlflow.db      # the versions, tags, lineage.json, model cards
  PREFECT_HOME=$PREFECT_HOME prefect server start   # the demo's flow runs, summaries, gate tables
  export PREFECT_API_URL=http://127.0.0.1:4200/api          # from then on, runs pause for approval in the UI
  mergeops approve $NAME 2 --reviewer carol --comment "..."    # the watch's candidate
  mergeops verify $NAME@2                                    # the candidate: its parents are on disk as they are
  mergeops verify $NAME@champion                             # v1 again: parents that moved on come from the DVC store
  mergeops watch                                            # serve the watch: cron + mergeops.parent.updated
EOF
