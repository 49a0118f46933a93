"""Does M2N2's split point need element granularity? The paper's element split against ours on
tensor boundaries, on a small problem where both run exactly.

Two MLPs (64-32-10, tensors W1 b1 W2 b2) trained on sklearn's 8x8 digits, one on classes 0-4 and
one on 5-9, seed an archive of 8; M2N2 (alpha 1, matchmaker) runs ``--budget`` crossovers, scored
per example on a dev split; the archive's best is scored on a held-out test split. The only
difference between the arms is the crossover: ``split_slerp_flat`` over the flattened vector at
any element, or ``split_slerp_tensors`` with the split on a tensor boundary. Usage:

    python benchmarks/evolve_split.py [--budget 300] [--seeds 3]
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from evolve_digits import digits
from merge.evolve.crossover import split_index, split_slerp_flat, split_slerp_tensors
from merge.evolve.m2n2 import M2N2, M2N2Config

SHAPES = [(32, 64), (32,), (10, 32), (10,)]


def _forward(params: list[torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    w1, b1, w2, b2 = params
    return torch.relu(x @ w1.T + b1) @ w2.T + b2


def _train(x, y, seed: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    params = [(torch.randn(s, generator=g) * 0.1).requires_grad_() for s in SHAPES]
    opt = torch.optim.Adam(params, lr=1e-2)
    for _ in range(300):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(_forward(params, x), y).backward()
        opt.step()
    return [p.detach() for p in params]


def _scores(params, x, y) -> np.ndarray:
    return (_forward(params, x).argmax(-1) == y).double().numpy()


def _flatten(params):
    return torch.cat([p.reshape(-1) for p in params])


def _unflatten(v):
    out, i = [], 0
    for s in SHAPES:
        n = int(np.prod(s))
        out.append(v[i:i + n].reshape(s))
        i += n
    return out


def run(budget: int, seed: int, element: bool, data) -> float:
    (xtr, ytr), (xdev, ydev), (xte, yte) = data
    low, high = ytr < 5, ytr >= 5
    parents = [_train(xtr[low], ytr[low], seed), _train(xtr[high], ytr[high], seed + 100)]
    search = M2N2(2, M2N2Config(archive_size=8), np.random.default_rng(seed))
    models: dict[int, list[torch.Tensor]] = {}
    for _ in range(budget):
        cand = search.ask()
        if cand["kind"] == "seed":
            params = parents[cand["parent"]]
        else:
            a, b = models[cand["a"]], models[cand["b"]]
            if element:
                fa = _flatten(a)
                params = _unflatten(split_slerp_flat(cand["w"], split_index(cand["split"], fa.numel()), fa, _flatten(b)))
            else:
                params = split_slerp_tensors(cand["w"], split_index(cand["split"], len(a)), a, b)
        models[cand["id"]] = params
        search.tell(cand, _scores(params, xdev, ydev))
    return float(_scores(models[search.best()], xte, yte).mean())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--budget", type=int, default=300)
    ap.add_argument("--seeds", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(1)
    x, y, perm = digits()
    tr, dev, te = perm[:1000], perm[1000:1400], perm[1400:]
    data = ((x[tr], y[tr]), (x[dev], y[dev]), (x[te], y[te]))
    print(f"M2N2 on digits, 2 half-class parents, archive 8, {args.budget} evaluations; test accuracy of the best")
    for element in (True, False):
        accs = [run(args.budget, s, element, data) for s in range(args.seeds)]
        label = "element split (paper)" if element else "tensor-boundary split"
        print(f"{label:24s} " + "  ".join(f"{a:.3f}" for a in accs) + f"   mean {np.mean(accs):.3f}")


if __name__ == "__main__":
    main()
