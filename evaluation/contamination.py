"""Train/eval contamination for anyone's models: what a model card says the model was trained on,
resolved to local texts and compared with the suite's own eval data.

A card declares training data in its YAML front matter, relative to the model directory:

* ``training_data:`` a manifest, ``[{path: data/train.jsonl, sha256: <hex>}, ...]``: each file is
  used only when its bytes still hash to the declared sha256 (a mismatch or a missing file is a
  failing ``training_data`` record, and the file is not read); a plain name is a local file, or a
  zoo domain when a zoo is given (its ``train.jsonl``);
* ``datasets:`` the Hugging Face card field: an entry naming a local file or folder is read; a Hub
  dataset id that does not resolve locally is listed as ``unmeasured`` in the record, not ignored.

Eval texts are every local data file of every task of the suite (zoo domains included), one text
per row (string fields joined). A parent that declares nothing usable gets a ``contamination``
record with verdict ``not_checked`` - never a silent pass; the gate policy decides whether that is
allowed (``leakage.require_contamination_check``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from evaluation import datafiles
from evaluation.errors import DataFileError
from evaluation.leakage import LeakagePolicy, LeakageRecord, contamination_records
from evaluation.suites import MaterializedSuite
from merge.manifest import sha256_file


@dataclass
class TrainingData:
    """A model's declared training data, resolved."""

    declared: bool = False  # the card names any training data at all
    texts: dict[str, list[str]] = field(default_factory=dict)  # source (as declared) -> texts
    unresolved: list[str] = field(default_factory=list)  # declared, but nothing local to read
    problems: list[dict] = field(default_factory=list)  # manifest entries that cannot be used, and why


def _as_list(value) -> list:
    if value is None:
        return []
    return value if isinstance(value, list) else [value]


def _read(source: str, path: Path, out: TrainingData) -> None:
    """Texts of a file, or of every readable file under a folder; problems noted, never raised."""
    files = sorted(p for p in path.rglob("*") if p.is_file() and datafiles.readable(p)) if path.is_dir() else [path]
    for f in files:
        try:
            out.texts.setdefault(source, []).extend(datafiles.texts(f))
        except DataFileError as exc:
            out.problems.append({"path": source, "reason": str(exc)})


def _manifest_entry(entry: dict, model_dir: Path, out: TrainingData) -> None:
    rel, want = entry.get("path"), entry.get("sha256")
    if not isinstance(rel, str):
        out.problems.append({"path": str(rel), "reason": "manifest entry without `path`"})
        return
    path = model_dir / rel
    if not path.is_file():
        out.problems.append({"path": rel, "reason": f"not found (looked at {path})"})
    elif not isinstance(want, str):
        out.problems.append({"path": rel, "reason": "manifest entry without `sha256`"})
    elif (have := sha256_file(path)) != want.lower():
        out.problems.append({"path": rel, "reason": "sha256 mismatch: the file changed since the card declared it",
                             "expected_sha256": want, "actual_sha256": have})
    else:
        _read(rel, path, out)


def resolve_training_data(model_dir: Path, card: dict, zoo_train: dict[str, Path] | None = None) -> TrainingData:
    """The card's ``training_data`` and ``datasets`` entries, resolved against ``model_dir``;
    ``zoo_train`` (domain -> train file) resolves zoo domain names."""
    model_dir = Path(model_dir)
    out = TrainingData()
    for entry in _as_list(card.get("training_data")):
        out.declared = True
        if isinstance(entry, dict):
            _manifest_entry(entry, model_dir, out)
        elif zoo_train and str(entry) in zoo_train:
            _read(str(entry), zoo_train[str(entry)], out)
        elif isinstance(entry, str) and (model_dir / entry).exists():
            _read(entry, model_dir / entry, out)
        else:
            out.unresolved.append(str(entry))
    for entry in _as_list(card.get("datasets")):
        out.declared = True
        if isinstance(entry, str) and (model_dir / entry).exists():
            _read(entry, model_dir / entry, out)
        else:
            out.unresolved.append(str(entry))
    out.texts = {k: v for k, v in out.texts.items() if v}
    return out


def eval_texts(suite: MaterializedSuite) -> dict[str, list[str]]:
    """domain -> the texts of every local data file its tasks read (files of unknown format skipped)."""
    out: dict[str, list[str]] = {}
    for domain, files in suite.data_files.items():
        texts = []
        for f in files:
            if datafiles.readable(f):
                try:
                    texts += datafiles.texts(f)
                except DataFileError:
                    continue  # materialize checked what it could; lm-eval reports what it cannot read
        if texts:
            out[domain] = texts
    return out


@dataclass(frozen=True)
class Declarer:
    """A model whose training data matter: its name in the report, its directory, its card."""

    name: str
    path: Path
    card: dict
    required: bool  # True: a record even when the card declares nothing (parents; a lone candidate)


def _not_checked(name: str, reason: str, **detail) -> LeakageRecord:
    return LeakageRecord(check="contamination", model=name, value=None, threshold=None, verdict="not_checked",
                         detail={"reason": reason, **{k: v for k, v in detail.items() if v}})


def contamination_checks(models: list[Declarer], evals: dict[str, list[str]], policy: LeakagePolicy,
                         zoo_train: dict[str, Path] | None = None) -> list[LeakageRecord]:
    """Per model: a failing ``training_data`` record per unusable manifest entry; then a measured
    ``contamination`` record per eval domain, or one ``not_checked`` record saying why not."""
    records: list[LeakageRecord] = []
    for m in models:
        data = resolve_training_data(m.path, m.card, zoo_train)
        if not data.declared and not m.required:
            continue
        for problem in data.problems:
            records.append(LeakageRecord(check="training_data", model=m.name, value=None, threshold=None,
                                         verdict="fail", detail=problem))
        if not data.declared:
            records.append(_not_checked(m.name, "the model card declares no training data (`training_data:` "
                                                "manifest or local `datasets:`)"))
        elif not data.texts:
            records.append(_not_checked(m.name, "none of the declared training data is readable here",
                                        unmeasured=data.unresolved,
                                        unusable=[p["path"] for p in data.problems]))
        elif not evals:
            records.append(_not_checked(m.name, "the suite has no local eval data to compare with",
                                        training_data=sorted(data.texts)))
        else:
            extra = {"unmeasured": data.unresolved} if data.unresolved else {}
            records += [r.model_copy(update={"detail": r.detail | extra})
                        for r in contamination_records(m.name, data.texts, evals, policy)]
    return records
