"""The M2N2 paper's own check, on sklearn's 8x8 digits: evolve a small MLP from scratch.

M2N2 (``merge.evolve.m2n2``: resource competition, matchmaker, split-point SLERP crossover over the
flattened parameters, plus the from-scratch mutation, Gaussian noise of std 0.01) starts from two
random MLPs (std 0.01) in an archive of 20. CMA-ES (the ``cmaes`` package, population 20, sigma
0.01, from one random MLP) optimises the same parameters for training accuracy, with its full
covariance (``CMA``, as the paper's baseline) and with a diagonal one (``SepCMA``, the variant
meant for many parameters). All get the same number of forward passes (one pass = one candidate
scored on the training split); each reports the test accuracy of its best model on the training
split. Usage:

    python benchmarks/evolve_digits.py [--passes 10000] [--seeds 3] [--hidden 8] [--methods M2N2,CMA-ES,sep-CMA-ES]
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")  # one BLAS thread: CMA-ES's linear algebra is small

import numpy as np
import torch
from cmaes import CMA, SepCMA
from sklearn.datasets import load_digits

from merge.evolve.crossover import split_index, split_slerp_flat
from merge.evolve.m2n2 import M2N2, M2N2Config

ARCHIVE = 20
MUTATION = 0.01


class MLP:
    def __init__(self, hidden: int):
        self.shapes = [(hidden, 64), (hidden,), (10, hidden), (10,)]
        self.size = sum(int(np.prod(s)) for s in self.shapes)

    def logits(self, v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        parts, i = [], 0
        for s in self.shapes:
            n = int(np.prod(s))
            parts.append(v[i:i + n].reshape(s))
            i += n
        w1, b1, w2, b2 = parts
        return torch.relu(x @ w1.T + b1) @ w2.T + b2

    def correct(self, v: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> np.ndarray:
        return (self.logits(v, x).argmax(-1) == y).double().numpy()


def m2n2(net: MLP, passes: int, seed: int, train, test) -> tuple[float, float]:
    (x, y), (xt, yt) = train, test
    gen = torch.Generator().manual_seed(seed)
    search = M2N2(2, M2N2Config(archive_size=ARCHIVE), np.random.default_rng(seed))
    models: dict[int, torch.Tensor] = {}
    for _ in range(passes):
        cand = search.ask()
        if cand["kind"] == "seed":
            v = torch.randn(net.size, generator=gen, dtype=torch.float64) * 0.01
        else:
            a, b = models[cand["a"]], models[cand["b"]]
            v = split_slerp_flat(cand["w"], split_index(cand["split"], net.size), a, b)
            v = v + torch.randn(net.size, generator=gen, dtype=torch.float64) * MUTATION
        models[cand["id"]] = v
        search.tell(cand, net.correct(v.float(), x, y))
        for gone in set(models) - set(search.ids):
            del models[gone]
    rows = search.scores.mean(axis=1)
    best = search.ids[int(np.argmax(rows))]
    return float(rows.max()), float(net.correct(models[best].float(), xt, yt).mean())


def cmaes(net: MLP, passes: int, seed: int, train, test, kind=CMA) -> tuple[float, float]:
    (x, y), (xt, yt) = train, test
    rng = np.random.default_rng(seed)
    opt = kind(mean=rng.standard_normal(net.size) * 0.01, sigma=0.01, population_size=ARCHIVE, seed=seed)
    best, best_x = -1.0, None
    for _ in range(passes // ARCHIVE):
        told = []
        for _ in range(ARCHIVE):
            v = opt.ask()
            acc = float(net.correct(torch.tensor(v, dtype=torch.float32), x, y).mean())
            told.append((v, -acc))
            if acc > best:
                best, best_x = acc, v
        opt.tell(told)
    return best, float(net.correct(torch.tensor(best_x, dtype=torch.float32), xt, yt).mean())


def digits() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """sklearn's 8x8 digits scaled to [0, 1], labels, and one fixed shuffle of their indices."""
    d = load_digits()
    x = torch.tensor(d.data / 16.0, dtype=torch.float32)
    y = torch.tensor(d.target)
    return x, y, torch.randperm(len(y), generator=torch.Generator().manual_seed(0))


METHODS = {"M2N2": m2n2, "CMA-ES": cmaes,
           "sep-CMA-ES": lambda *a: cmaes(*a, kind=SepCMA)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--passes", type=int, default=10000)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--hidden", type=int, default=8)
    ap.add_argument("--methods", default=",".join(METHODS))
    args = ap.parse_args()
    torch.set_num_threads(1)
    x, y, perm = digits()
    tr, te = perm[:1300], perm[1300:]
    train, test = (x[tr], y[tr]), (x[te], y[te])
    net = MLP(args.hidden)
    print(f"digits from scratch: MLP 64-{args.hidden}-10 ({net.size} parameters), {args.passes} forward passes "
          f"each, {len(tr)} train / {len(te)} test images; accuracy of the best model on train")
    print(f"{'method':10s} {'seed':>4s} {'train':>7s} {'test':>7s} {'time':>7s}")
    for name in [m.strip() for m in args.methods.split(",")]:
        fn = METHODS[name]
        tests = []
        for seed in range(args.seeds):
            t0 = time.perf_counter()
            acc_train, acc_test = fn(net, args.passes, seed, train, test)
            tests.append(acc_test)
            print(f"{name:10s} {seed:4d} {acc_train:7.3f} {acc_test:7.3f} {time.perf_counter() - t0:6.0f}s", flush=True)
        print(f"{name:10s} mean test accuracy {np.mean(tests):.3f} (sd {np.std(tests):.3f})")


if __name__ == "__main__":
    main()
