"""lm-eval task configs over local data files, and the two views of a config a suite needs: its
data files made absolute (to run it) and replaced by their sha256 (to key the cache by content).

One builder serves the demo zoo's domains and a suite's ``data`` shorthand alike: greedy generation
from the prompt column up to "\\n", exact match of the stripped continuation with the target column.
"""

from __future__ import annotations

import copy
from pathlib import Path

from evaluation.datafiles import builder
from evaluation.errors import SuiteError
from merge.manifest import sha256_file


def data_task(name: str, data: Path, output_type: str, *, prompt: str = "prompt", target: str = "target",
              **settings) -> dict:
    """An lm-eval task over one local JSONL/CSV/Parquet file (``prompt`` column → ``target`` column)."""
    return {
        "task": name,
        "dataset_path": builder(data),
        "dataset_kwargs": {"data_files": {"test": str(data)}},
        "test_split": "test",
        "output_type": output_type,
        "doc_to_text": "{{" + prompt + "}}",
        "doc_to_target": "{{" + target + "}}",
        **settings,
        "metadata": {"version": 1},
    }


def generation_task(name: str, data: Path, max_gen_toks: int, *, prompt: str = "prompt",
                    target: str = "target") -> dict:
    return data_task(
        name, data, "generate_until", prompt=prompt, target=target,
        generation_kwargs={"until": ["\n"], "do_sample": False, "max_gen_toks": max_gen_toks},
        # The zoo's rule: the stripped continuation must equal the target.
        filter_list=[{"name": "strip", "filter": [
            {"function": "regex", "regex_pattern": r"^\s*([\s\S]*?)\s*$", "fallback": ""},
            {"function": "take_first"}]}],
        metric_list=[{"metric": "exact_match", "aggregation": "mean", "higher_is_better": True}],
    )


def loglikelihood_task(name: str, data: Path) -> dict:
    return data_task(
        name, data, "loglikelihood",
        target_delimiter="",  # zoo prompts end in "=", the target follows directly
        metric_list=[{"metric": "perplexity", "aggregation": "perplexity", "higher_is_better": False},
                     {"metric": "acc", "aggregation": "mean", "higher_is_better": True}],
    )


def _map_files(files, fn):
    """``fn`` over every path of a ``data_files`` value (a string, a list, or a split -> either)."""
    if isinstance(files, str):
        return fn(files)
    if isinstance(files, list):
        return [fn(p) for p in files]
    return {k: fn(v) if isinstance(v, str) else [fn(p) for p in v] for k, v in files.items()}


def _data_files(config: dict):
    kwargs = config.get("dataset_kwargs")
    return kwargs.get("data_files") if isinstance(kwargs, dict) else None


def absolute_data_files(config: dict, base: Path | None) -> dict:
    """The config with relative ``data_files`` resolved against ``base`` (the suite file's directory)."""
    config = copy.deepcopy(config)
    files = _data_files(config)
    if files is None or base is None:
        return config
    config["dataset_kwargs"]["data_files"] = _map_files(
        files, lambda p: p if Path(p).is_absolute() else str((base / p).resolve()))
    return config


def local_data_files(config: dict) -> list[Path]:
    """Every data file a config reads, in order."""
    files = _data_files(config)
    if files is None:
        return []
    out: list[Path] = []
    _map_files(files, lambda p: out.append(Path(p)))
    return list(dict.fromkeys(out))


def hashable(config: dict) -> dict:
    """The config with every local data file replaced by its content hash (paths never enter a key)."""
    config = copy.deepcopy(config)
    files = _data_files(config)
    if files is None:
        return config

    def digest(p: str) -> str:
        path = Path(p)
        if not path.is_file():
            raise SuiteError(f"task {config['task']!r}: data file {p} not found")
        return "sha256:" + sha256_file(path)

    config["dataset_kwargs"]["data_files"] = _map_files(files, digest)
    return config
