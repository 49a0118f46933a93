"""What model signing adds: sign + verify of a tiny model dir and of a ~500 MB safetensors dir.

Registration signs the staged ``model/`` dir once; promote and verify check the signature once
each. Both hash every file (sha256, as the manifest does), so the cost is compared here with one
manifest pass (``file_entries``) over the same files.

    python benchmarks/signing.py [--mb 500] [--repeat 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from merge.manifest import file_entries  # noqa: E402
from registry.keys import load_signing_key  # noqa: E402
from registry.model_signature import check_model_signature, sign_model  # noqa: E402


def _model(path: Path, megabytes: int) -> Path:
    """A model dir of random float32 tensors in shards of at most 256 MB (0: one 4x3 tensor), plus a config."""
    path.mkdir(parents=True)
    rng = np.random.default_rng(0)
    if not megabytes:
        save_file({"w": rng.standard_normal((4, 3), dtype=np.float32)}, str(path / "model.safetensors"))
    left, shard = megabytes << 20, 0
    while left > 0:
        n = min(left, 256 << 20) // 4
        rows = max(1, n // 4096)
        save_file({f"layer.{shard}.weight": rng.standard_normal((rows, n // rows), dtype=np.float32)},
                  str(path / f"model-{shard:05d}.safetensors"))
        left -= rows * (n // rows) * 4
        shard += 1
    (path / "config.json").write_text('{"model_type": "llama"}')
    return path


def _time(fn, repeat: int) -> float:
    runs = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        runs.append(time.perf_counter() - start)
    return statistics.median(runs)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mb", type=int, default=500, help="size of the large model dir (default 500)")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="mergeops-signing-") as tmp:
        key = load_signing_key(Path(tmp) / "key.pem", create=True)
        print(f"{'model':>10} {'size MB':>8} {'manifest s':>11} {'sign s':>8} {'verify s':>9} {'bundle B':>9}")
        for label, mb in (("tiny", 0), ("large", args.mb)):
            model = _model(Path(tmp) / label, mb)
            size = sum(p.stat().st_size for p in model.iterdir()) / 1e6
            bundle = sign_model(model, key)
            hashed = _time(lambda: file_entries(model), args.repeat)
            signed = _time(lambda: sign_model(model, key), args.repeat)
            checked = _time(lambda: check_model_signature(model, bundle, key.public, label), args.repeat)
            print(f"{label:>10} {size:8.1f} {hashed:11.3f} {signed:8.3f} {checked:9.3f} {len(bundle):9,}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
