"""Execute a merge plan: verify parents, stream tensor by tensor, write the output atomically.

Order of work: plan (headers only; every recipe and compatibility error) → open every parent file
once (merge/parent_reads.py) → merge tensors on one thread per core (each thread reads a tensor's
inputs with positioned reads, hands them to the parents' sha256 in plan order, and runs the kernel),
append the results to the shards in plan order → compare each parent's content id, hashed from the
bytes read, with the audit's and the pins → copy config/tokenizer files (the bytes hashed) →
manifest → rename the temp dir into place. A parent that is not the audited one is refused before
anything is placed; the temp dir is dropped.
Peak memory: about (parents + 2) × the largest tensor for each tensor in flight (workers + 1).

Randomness (DARE, DELLA): each (output tensor, parent) pair gets its own ``torch.Generator``
seeded with the first 8 bytes of sha256("<recipe seed>/<tensor>/<parent index>"), so a merge is
bit-identical run after run whatever the thread or tensor order. mergekit instead seeds the global
torch RNG once (``--random-seed``) and draws in its own execution order, so DARE/DELLA masks differ
from mergekit's; everything deterministic around the masks is the same (tested with density 1).
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import os
import shutil
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import torch

from merge.align import permute, weight_matching
from merge.errors import FormatError, MergeFailed, UsageError
from merge.manifest import MANIFEST_NAME, FileEntry, content_id_of, sha256_file
from merge.methods import Call
from merge.output import all_finite, check_out_dir, make_temp_dir, place_output
from merge.parent_reads import ParentReads, Read, check_parents
from merge.plan import FLOAT_DTYPES, MergePlan, TensorPlan, plan_merge
from merge.progress import Progress, say
from merge.recipe import Recipe
from merge.safetensors_header import read_header
from merge.statistics_files import StatisticsFiles
from merge.vocab import map_rows, union_tokenizer
from merge.writer import DEFAULT_SHARD_BYTES, ShardWriter, layout_shards

ALIGNMENT_NAME = "mergeops.alignment.json"
COPIED_FILES = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
                "special_tokens_map.json", "tokenizer.model", "vocab.json", "merges.txt",
                "added_tokens.json", "chat_template.jinja")
_TORCH = {k: getattr(torch, v) for k, v in FLOAT_DTYPES.items()}
_ST_TORCH = {**_TORCH, "BOOL": torch.bool, "U8": torch.uint8, "I8": torch.int8, "I16": torch.int16,
             "I32": torch.int32, "I64": torch.int64, "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2}


@dataclass(frozen=True)
class MergeResult:
    content_id: str
    out_dir: Path
    manifest: dict
    parents: tuple[dict, ...]  # [{"ref", "path", "content_id"}]
    statistics: tuple[dict, ...] = ()  # [{"path", "sha256", "size"}]: calibration files read, every stage's


def _seed(recipe: Recipe, name: str, parent: int) -> int:
    digest = hashlib.sha256(f"{recipe.seed}/{name}/{parent}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


class _Inputs:
    """Reads tensors with positioned reads (``os.preadv``) at offsets from the validated headers:
    parents through ``ParentReads`` (the descriptors their hashes come from), statistics files by path.

    No mmap: mapped parent pages would count towards our resident memory until unmapped, so
    reading a 3 x 750 MB trio through mmap costs GBs of RSS; a read into a fresh buffer costs the
    tensor's size only, and ``preadv`` is safe from the prefetch thread.
    """

    def __init__(self, plan: MergePlan, stack: ExitStack, parents: ParentReads | None = None):
        """``parents``: where ``load`` reads (and hashes) the parents' tensors; without it only
        ``tensor`` and ``statistics`` read (the in-memory merge, merge/memory.py)."""
        self._plan, self._parents, self._stack = plan, parents, stack
        self._fds: dict[str, int] = {}
        self._headers: dict[str, object] = {}
        self.perms: dict[int, dict[str, torch.Tensor]] = {}  # parent -> group -> permutation

    def fd(self, path: Path) -> int:
        key = str(path)
        if key not in self._fds:
            fd = os.open(key, os.O_RDONLY)
            self._stack.callback(os.close, fd)
            self._fds[key] = fd
        return self._fds[key]

    def _read(self, path: Path, header, name: str) -> torch.Tensor:
        info = header.tensors[name]
        buf = torch.empty(info.nbytes, dtype=torch.uint8)  # not zero-filled: preadv overwrites it
        got = os.preadv(self.fd(path), [buf.numpy()], header.data_offset + info.start) if info.nbytes else 0
        if got != info.nbytes:
            raise FormatError(f"{path}: tensor {name!r} is truncated ({got} of {info.nbytes} bytes)")
        return _typed(path, info, buf)

    def tensor(self, parent: int, name: str) -> torch.Tensor:
        """Tensor ``name`` of a parent as stored (not permuted, not hashed: the alignment's reads)."""
        layout = self._plan.layouts[parent]
        shard = layout.tensors[name][0]
        return self._read(layout.path / shard, layout.shards[shard], name)

    def statistics(self, ref: str, name: str) -> torch.Tensor | None:
        path = self._plan.recipe.path_of(ref)
        if str(path) not in self._headers:
            self._headers[str(path)] = read_header(path)
        header = self._headers[str(path)]
        return self._read(path, header, name) if name in header.tensors else None

    def load(self, tp: TensorPlan) -> tuple[list[torch.Tensor], list[torch.Tensor | None], list[Read]]:
        """The tensor's inputs, their statistics, and the parents' reads to hash (``ParentReads.feed``)."""
        tensors, stats, reads = [], [], []
        for (parent, name), params in zip(tp.inputs, tp.per_input):
            layout = self._plan.layouts[parent]
            read = self._parents.read(parent, name)
            reads.append(read)
            tensor = _typed(layout.path / layout.tensors[name][0], layout.tensors[name][1], read.data)
            if parent in self.perms:  # recipe `align`: this parent's units in the reference's order
                tensor = permute(tensor, self._plan.align.axes.get(name, ()), self.perms[parent])
            tensors.append(tensor)
            if "statistics" in params:
                stats.append(self.statistics(params["statistics"], name))
        return tensors, stats, reads


def _typed(path: Path, info, buf: torch.Tensor) -> torch.Tensor:
    if info.dtype not in _ST_TORCH:
        raise FormatError(f"{path}: tensor {info.name!r} has unsupported dtype {info.dtype}")
    return buf.view(_ST_TORCH[info.dtype]).reshape(info.shape)


def _align(plan: MergePlan, inputs: _Inputs, progress: bool) -> dict | None:
    """Recipe ``align``: weight matching of every other parent to the reference, set on ``inputs``;
    returns the record written beside the weights (``ALIGNMENT_NAME``), permutations included,
    so anyone can check which units were moved where."""
    if plan.align is None:
        return None
    ref = plan.reference
    others = [i for i in range(len(plan.parents)) if i != ref]
    record = {"method": plan.recipe.align, "residual": plan.align.residual, "reference": plan.refs[ref], "parents": {}}
    with Progress("align", len(others), unit="parents", enabled=progress) as bar:
        for i in others:
            perms, passes = weight_matching(plan.align, lambda n: inputs.tensor(ref, n), lambda n, i=i: inputs.tensor(i, n))
            inputs.perms[i] = perms
            moved = sum(int((p != torch.arange(len(p))).sum()) for p in perms.values())
            record["parents"][plan.refs[i]] = {"passes": passes, "units_moved": moved,
                                               "permutations": {g: p.tolist() for g, p in perms.items()}}
            bar.advance(1, f"{moved} units moved")
    return record


def _merge_one(plan: MergePlan, tp: TensorPlan, tensors, stats, device: str) -> torch.Tensor:
    if tp.compute_dtype is None:  # integer buffers: identical in every parent, copied
        return tensors[tp.base_index or 0]
    if tp.vocab:
        tensors = map_rows(tensors, [p for p, _ in tp.inputs], plan.vocab)
    dt = _TORCH[tp.compute_dtype]
    tensors = [t.to(device=device, dtype=dt) for t in tensors]
    gens = []
    if plan.recipe.method.random:
        for parent, _ in tp.inputs:
            g = torch.Generator(device=device)
            g.manual_seed(_seed(plan.recipe, tp.out_name, parent))
            gens.append(g)
    call = Call(tp.out_name, tensors, tp.base_index, tp.shared, list(tp.per_input), gens,
                [s.to(device) if s is not None else None for s in stats],
                plan.recipe.magnitude_ties == "sort", owned=True)
    try:
        out = plan.recipe.method.kernel(call)
    except ValueError as exc:  # a kernel's documented limit (e.g. antipodal inputs), not a bug
        raise MergeFailed(f"{plan.recipe.merge_method} cannot merge tensor {tp.out_name!r}: {exc}") from exc
    return out.to(dtype=_TORCH[tp.out_dtype])


def _refuse_non_finite(plan: MergePlan, tp: TensorPlan, inputs: list[torch.Tensor]) -> None:
    """A kernel turned finite inputs into NaN/inf (an overflowing weight, an out_dtype too narrow):
    refuse rather than write a broken model. Inputs that already hold NaN/inf are the audit's
    concern (weight sanity) and pass through as they are."""
    if all(all_finite(t) for t in inputs if t.is_floating_point()):
        raise MergeFailed(f"{plan.recipe.merge_method} produced NaN or inf in tensor {tp.out_name!r} "
                          f"({FLOAT_DTYPES[tp.out_dtype]}) from finite inputs; check the recipe's weights "
                          "and out_dtype")


def _copy_side_files(plan: MergePlan, parents: ParentReads, tmp: Path) -> None:
    src = plan.parents[plan.config_source]
    for name in COPIED_FILES:  # the bytes the parent's hash was taken over (bounded reads)
        data = parents.side_file(name)
        if data is not None:
            (tmp / name).write_bytes(data)
    cfg = dict(plan.config)
    if plan.vocab is not None:
        cfg["vocab_size"] = plan.vocab.size
        if plan.recipe.tokenizer_source == "union":
            (tmp / "tokenizer.json").write_text(union_tokenizer(src, plan.vocab))
    out_dtypes = {tp.out_dtype for tp in plan.tensors if tp.compute_dtype}
    if len(out_dtypes) == 1:
        key = "dtype" if "dtype" in cfg else "torch_dtype"
        cfg[key] = FLOAT_DTYPES[out_dtypes.pop()]
    (tmp / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")


def compute_workers() -> int:
    """Threads that merge tensors side by side: the usable cores, at most 4 (each holds a
    tensor's inputs and scratch in memory)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    return max(1, min(4, cores))


def _one_malloc_arena() -> None:
    """glibc: let the worker threads allocate from the main arena. Buffers a worker allocates and
    the writing thread frees otherwise pile up in per-thread arenas, and resident memory drifts up."""
    try:
        ctypes.CDLL("libc.so.6").mallopt(-8, 1)  # M_ARENA_MAX = 1
    except (OSError, AttributeError):
        pass


def run_merge(recipe: Recipe, out_dir: Path, *, device: str = "cpu", progress: bool = True,
              shard_bytes: int = DEFAULT_SHARD_BYTES,
              audited: dict[str, list[FileEntry]] | None = None) -> MergeResult:
    """Merge the recipe's parents into ``out_dir`` (must not exist or be empty).

    Each parent's files are hashed from the bytes the merge reads (merge/parent_reads.py) and must
    match ``audited`` (recipe reference -> the audit's file list) and the recipe's ``pins``; if not,
    PinMismatch names the parent and the file, and nothing is written.

    A multi-stage recipe runs its stages in file order, each intermediate written to a work dir
    beside ``out_dir`` (removed once no later stage reads it, and at the end); only the last stage
    becomes ``out_dir``. Its manifest lists the parent models of every stage and the stage DAG.
    """
    out_dir = Path(out_dir)
    check_out_dir(out_dir)
    if device != "cpu" and not (device.startswith("cuda") and torch.cuda.is_available()):
        raise UsageError(f"device {device!r} is not available here; use --device cpu")
    if recipe.stages:
        return _run_stages(recipe, out_dir, device=device, progress=progress, shard_bytes=shard_bytes,
                           audited=audited)
    return _run_stage(recipe, out_dir, device=device, progress=progress, shard_bytes=shard_bytes, audited=audited)


def _stage_entry(st: Recipe, content_id_: str) -> dict:
    return {"name": st.name, "merge_method": st.merge_method, "inputs": st.input_refs(), "content_id": content_id_}


def _run_stages(recipe: Recipe, out_dir: Path, *, device: str, progress: bool, shard_bytes: int,
                audited: dict[str, list[FileEntry]] | None) -> MergeResult:
    stages = (*recipe.stages, recipe)
    last_use = {st.name: max(j for j, later in enumerate(stages) if st.name in later.input_refs())
                for st in recipe.stages}
    made: dict[str, MergeResult] = {}
    stats: dict[str, dict] = {}  # path -> record, every stage's statistics files
    leaf: dict[str, dict] = {}  # parent reference -> {"ref", "path", "content_id"}, every stage's
    entries: list[dict] = []

    def locked(st: Recipe) -> Recipe:
        own = {r: made[r].out_dir for r in st.input_refs() if r in made}
        say(f"merge: stage {len(entries) + 1}/{len(stages)}{f' ({st.name})' if st.name else ''}, "
            f"{st.merge_method}", enabled=progress)
        return st.model_copy(update={"locked": {**recipe.locked, **st.locked, **own}})

    def note(own: tuple[dict, ...]) -> None:
        for p in own:
            if p["ref"] not in made:
                leaf.setdefault(p["ref"], p)

    def lineage(own: tuple[dict, ...], cid: str) -> tuple[list[dict], list[dict]]:
        note(own)
        order = recipe.model_refs()
        return sorted(leaf.values(), key=lambda p: order.index(p["ref"])), entries + [_stage_entry(recipe, cid)]

    work = make_temp_dir(out_dir.parent / f"{out_dir.name}.stages")
    try:
        for i, st in enumerate(recipe.stages):
            result = _run_stage(locked(st), work / str(i), device=device, progress=progress, shard_bytes=shard_bytes,
                                audited=audited)
            note(result.parents)
            stats.update((r["path"], r) for r in result.statistics)
            entries.append(_stage_entry(st, result.content_id))
            made[st.name] = result
            for name in [n for n in made if last_use[n] <= i]:
                shutil.rmtree(made[name].out_dir, ignore_errors=True)  # no later stage reads it
        return _run_stage(locked(recipe), out_dir, device=device, progress=progress, shard_bytes=shard_bytes,
                          audited=audited, lineage=lineage, earlier_statistics=tuple(stats.values()))
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _run_stage(recipe: Recipe, out_dir: Path, *, device: str, progress: bool, shard_bytes: int,
               audited: dict[str, list[FileEntry]] | None = None, lineage=None,
               earlier_statistics: tuple[dict, ...] = ()) -> MergeResult:
    """One merge into ``out_dir``; ``lineage(own parents, content id)`` gives a multi-stage
    recipe's (parents, stages) for the manifest, ``earlier_statistics`` its earlier stages'
    statistics files."""
    plan = plan_merge(recipe)
    tmp = make_temp_dir(out_dir)  # before any weight is read: an unwritable --out fails now
    _one_malloc_arena()
    threads = torch.get_num_threads()
    # Each tensor is computed by one thread with single-threaded kernels, so reductions (norms in
    # slerp, model_stock, ...) add up in the same order on any CPU and `verify` elsewhere
    # re-creates the same content id. Parallelism is across tensors instead: ``workers`` threads
    # each read and merge a tensor of their own (reads and torch kernels release the GIL), and
    # this thread writes the results in plan order.
    torch.set_num_threads(1)
    workers = 1 if device != "cpu" else compute_workers()
    try:
        shards = layout_shards([(tp.out_name, tp.out_dtype, tp.shape) for tp in plan.tensors], shard_bytes)
        writer = ShardWriter(tmp, shards, {"format": "pt", "mergeops.recipe_sha256": recipe.sha256})
        written, started = 0, time.monotonic()
        with ExitStack() as stack:
            parents = ParentReads(plan, stack)
            inputs = _Inputs(plan, stack, parents)
            statistics_files = StatisticsFiles(plan, inputs.fd)  # the descriptors the tensors are read from
            statistics_files.hash()
            alignment = _align(plan, inputs, progress)
            bar = stack.enter_context(Progress("merge", len(plan.tensors), unit="tensors", enabled=progress))

            def job(k: int, tp: TensorPlan) -> torch.Tensor:
                try:
                    tensors, stats, reads = inputs.load(tp)
                    parents.feed(k, reads)  # hashed in plan order, from these very buffers
                except BaseException:
                    parents.abort()  # later tensors must not wait for this one's turn
                    raise
                out = _merge_one(plan, tp, tensors, stats, device)
                if tp.compute_dtype is not None and not all_finite(out):
                    _refuse_non_finite(plan, tp, inputs.load(tp)[0])  # kernels may reuse their inputs
                return out

            with ThreadPoolExecutor(max_workers=workers) as pool:
                try:
                    # One tensor more in flight than workers: a worker never waits for the writer.
                    ahead = deque(pool.submit(job, k, tp) for k, tp in enumerate(plan.tensors[: workers + 1]))
                    for i, tp in enumerate(plan.tensors):
                        out = ahead.popleft().result()
                        k = i + workers + 1
                        if k < len(plan.tensors):
                            ahead.append(pool.submit(job, k, plan.tensors[k]))
                        writer.write(tp.out_name, out)
                        written += out.numel() * out.element_size()
                        bar.advance(1, f"{written / max(time.monotonic() - started, 1e-9) / 1e6:.0f} MB/s")
                        del out
                except BaseException:
                    parents.abort()
                    raise
            parent_ids = check_parents(plan, parents.finish(), audited)  # before a byte is placed
            statistics_files.check_models(parent_ids)
            hashes = writer.close()
            writer.write_index()
            _copy_side_files(plan, parents, tmp)
            stats = {r["path"]: r for r in (*earlier_statistics, *statistics_files.record())}
            if alignment is not None:
                (tmp / ALIGNMENT_NAME).write_text(json.dumps(alignment, sort_keys=True, separators=(",", ":")) + "\n")
        entries = [FileEntry(path=n, sha256=h, size=s) for n, (h, s) in hashes.items()]
        entries += [FileEntry(path=p.name, sha256=sha256_file(p), size=p.stat().st_size)
                    for p in sorted(tmp.iterdir()) if p.name not in hashes]
        entries.sort(key=lambda e: e.path)
        cid = content_id_of(entries)
        refs = list(plan.refs)
        parents = [{"path": str(p), "content_id": c} for p, c in zip(plan.parents, parent_ids)]
        manifest = {"content_id": cid, "files": [e.model_dump() for e in entries],
                    "recipe_sha256": recipe.sha256, "parents": parents}
        statistics = tuple(stats[k] for k in sorted(stats))
        if statistics:  # the calibration data a regmean / fisher merge solved with, by hash
            manifest["statistics"] = list(statistics)
        if alignment is not None:
            manifest["alignment"] = {"file": ALIGNMENT_NAME, "method": alignment["method"],
                                     "residual": alignment["residual"], "reference": alignment["reference"],
                                     "parents": {r: {k: v for k, v in a.items() if k != "permutations"}
                                                 for r, a in alignment["parents"].items()}}
        if lineage is not None:
            all_parents, stages = lineage(tuple({"ref": r, **p} for r, p in zip(refs, parents)), cid)
            refs = [p["ref"] for p in all_parents]
            parents = [{"path": p["path"], "content_id": p["content_id"]} for p in all_parents]
            manifest.update(parents=parents, stages=stages)
        (tmp / MANIFEST_NAME).write_bytes(json.dumps(manifest, indent=2, sort_keys=True).encode() + b"\n")
        place_output(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        torch.set_num_threads(threads)
    return MergeResult(cid, out_dir, manifest, tuple({"ref": r, **p} for r, p in zip(refs, parents)), statistics)

