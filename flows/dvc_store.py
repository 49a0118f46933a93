"""DVC versioning of the pipeline's artifacts: parents, merged models and evaluation reports.

The store is a git + DVC repository (by default ``<home>/store``, its own small repo so the
project's working tree stays clean) with a default remote (by default the folder
``<home>/dvc-remote``; an S3 URL at scale). Artifacts are placed under content-addressed paths
(``models/<content id>``, ``parents/<content id>``, ``reports/<name>``), ``dvc add``-ed, the
``.dvc`` files committed to git, and pushed after registration. The md5s DVC computes and the git
revision of that commit go into the lineage record; ``dvc.lock`` (written by ``dvc repro`` of
``dvc.yaml``'s stages) records the same md5 for the same bytes, so the two can be compared.

A parent updated in place keeps its old bytes here under its old content id: ``restore_parent``
gives them back to ``mergeops verify`` (from the DVC cache, else the remote), so an old version
replays bit for bit after its parents moved on.

Real ``dvc`` and ``git`` executables are called (the ones next to this Python first), never a
re-implementation of DVC's hashing.
"""

from __future__ import annotations

import fcntl
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import yaml

from flows.errors import StoreError
from merge.faults import crash_point
from registry.errors import ParentUnavailable

_GIT_IDENTITY = ["-c", "user.name=mergeops", "-c", "user.email=mergeops@localhost"]


def _dvc_exe() -> str:
    local = Path(sys.executable).with_name("dvc")
    return str(local) if local.exists() else "dvc"


class _CommandFailed(StoreError):
    """A git or dvc call exited non-zero; ``detail`` is the line of its output that says why."""

    def __init__(self, cmd: list[str], cwd: Path, detail: str) -> None:
        super().__init__(f"`{' '.join([Path(cmd[0]).name, *cmd[1:3]])}` failed in {cwd}: {detail}")
        self.detail = detail


def _run(cmd: list[str], cwd: Path) -> str:
    try:
        proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, check=False)
    except FileNotFoundError as exc:
        raise StoreError(f"{cmd[0]}: not found; install it (dvc and git are needed for versioning)") from exc
    if proc.returncode != 0:
        detail = [line for line in (proc.stderr or proc.stdout).splitlines() if line.strip()]
        # dvc ends its errors with an advert ("Having any troubles?"): say its ERROR line instead
        last = ([line for line in detail if line.startswith("ERROR")] or detail or [f"exit {proc.returncode}"])[-1]
        raise _CommandFailed(cmd, cwd, last)
    return proc.stdout


def parent_path(content_id: str) -> str:
    """Where the store versions a parent: by content id, so a parent changed in place keeps its old bytes."""
    return f"parents/{content_id}"


def statistics_path(sha256: str) -> str:
    """Where the store versions a calibration statistics file a merge read: by its sha256."""
    return f"statistics/{sha256}"


class DvcStore:
    """A git + DVC repository that versions artifacts; every method is safe to repeat."""

    def __init__(self, root: Path, remote_url: str, endpoint: str | None = None) -> None:
        self.root = Path(root).resolve()
        self.remote_url = str(remote_url)
        # An S3-compatible endpoint (MinIO, Ceph, ...) for an s3:// remote: written to the remote's
        # `endpointurl`, committed with .dvc/config, so another checkout of the store pulls from it
        # too. Credentials never go there: DVC's S3 client reads the AWS variables or profile.
        self.endpoint = endpoint if self.remote_url.startswith("s3://") else None

    # -- setup -----------------------------------------------------------------------------
    def ensure(self) -> DvcStore:
        """Create the repo (git init, dvc init) and set the default remote, if not done yet."""
        self.root.mkdir(parents=True, exist_ok=True)
        with self._locked():  # (the lock file lives in root's parent, which now exists)
            if not (self.root / ".git").exists():
                _run(["git", "init", "-q"], self.root)
            if not (self.root / ".dvc").exists():
                _run([_dvc_exe(), "init", "-q"], self.root)
            if "analytics = false" not in (self.root / ".dvc" / "config").read_text():
                # Regulated networks: DVC reports usage unless told not to, repo by repo.
                _run([_dvc_exe(), "config", "core.analytics", "false"], self.root)
            configured = self._configured_remote()
            if configured.get("url") != self.remote_url:
                if "://" not in self.remote_url:
                    Path(self.remote_url).mkdir(parents=True, exist_ok=True)
                _run([_dvc_exe(), "remote", "add", "-d", "-f", "local", self.remote_url], self.root)
                configured = {}
            if self.endpoint and configured.get("endpointurl") != self.endpoint:
                _run([_dvc_exe(), "remote", "modify", "local", "endpointurl", self.endpoint], self.root)
            self._commit("Set up the mergeops artifact store", [".dvc", ".dvcignore"])
        return self

    def _configured_remote(self) -> dict[str, str]:
        """The settings of the remote ``local`` in .dvc/config (url, endpointurl, ...); {} if none."""
        config = self.root / ".dvc" / "config"
        if not config.exists():
            return {}
        text = config.read_text()
        if "['remote \"local\"']" not in text:
            return {}
        out = {}
        for line in text.split("['remote \"local\"']", 1)[1].splitlines():
            if line.strip().startswith("["):
                break  # the next section
            key, _, value = line.strip().partition("=")
            if key.strip():
                out[key.strip()] = value.strip()
        return out

    # -- versioning ------------------------------------------------------------------------
    def track(self, items: dict[str, Path], message: str) -> tuple[dict[str, str], str]:
        """Copy each source into the store at its relative path, ``dvc add`` them, commit.

        ``items`` maps a store-relative path (e.g. ``models/<content id>``) to a source file or
        directory. Returns ({relative path: md5}, git revision). A path already in the store is
        not copied again (paths are content-addressed by the caller).
        """
        for rel in items:
            if Path(rel).is_absolute() or ".." in Path(rel).parts:
                raise StoreError(f"{rel}: store paths must be relative and stay inside {self.root}")
        with self._locked():
            for rel, src in items.items():
                dest = self.root / rel
                if dest.exists() and (self.root / f"{rel}.dvc").exists():
                    continue  # versioned before (paths are content-addressed)
                # A run killed between its copy and `dvc add` left raw files, which an older store
                # may even have committed to git: drop both and version the item afresh.
                if _run(["git", "ls-files", "--", rel], self.root).strip():
                    _run(["git", "rm", "-r", "-q", "--cached", "--", rel], self.root)
                if dest.exists():
                    shutil.rmtree(dest) if dest.is_dir() and not dest.is_symlink() else dest.unlink()
                dest.parent.mkdir(parents=True, exist_ok=True)
                tmp = dest.with_name(f".{dest.name}.tmp")
                if tmp.exists():
                    shutil.rmtree(tmp) if tmp.is_dir() else tmp.unlink()
                if Path(src).is_dir():
                    shutil.copytree(src, tmp)
                else:
                    shutil.copy2(src, tmp)
                tmp.rename(dest)
            crash_point("store.copied")  # a re-run recovers: see the leftover handling above
            if items:
                _run([_dvc_exe(), "add", "-q", *sorted(items)], self.root)
            crash_point("store.added")  # .dvc files written, not committed: a re-run commits them
            md5s = {rel: dvc_file_md5(self.root / f"{rel}.dvc") for rel in items}
            # Only .dvc files and the .gitignores `dvc add` wrote: never the data itself.
            ignores = {str(Path(rel).parent / ".gitignore") for rel in items}
            revision = self._commit(message, [f"{rel}.dvc" for rel in items] + sorted(ignores))
        return md5s, revision

    def recover(self) -> list[str]:
        """Undo what a copy cut short left (``mergeops repair``): raw files committed to git are
        untracked, and copies that no ``.dvc`` file versions (nor any below them) are removed; the
        next run copies them again. One line for each thing done."""
        if not (self.root / ".git").exists():
            return []
        lines = []
        with self._locked():
            raw = [p for p in _run(["git", "ls-files", "-z"], self.root).split("\0")
                   if p and not p.endswith((".dvc", ".gitignore")) and not p.startswith(".dvc")]
            if raw:
                _run(["git", "rm", "-r", "-q", "--cached", "--", *raw], self.root)
                self._commit("Untrack raw files a cut-short copy committed", [])
                lines.append(f"{self.root}: {len(raw)} raw files a cut-short copy had committed to git untracked")
            for top in sorted(self.root.iterdir()):
                if top.name not in (".git", ".dvc", ".dvcignore"):
                    lines += [f"{self.root}: removed {p.relative_to(self.root)} (copied, never versioned)"
                              for p in _unversioned(top)]
        return lines

    def push(self) -> None:
        """Upload everything tracked to the default remote."""
        with self._locked():
            _run([_dvc_exe(), "push", "-q"], self.root)

    # -- reading back ----------------------------------------------------------------------
    def restore(self, rel: str, dest: Path) -> None:
        """Write the bytes committed at ``rel`` into ``dest`` (absent), by their md5: from the DVC
        cache, else the remote; never from the store's working copy, which anyone may have edited."""
        revision = self.revision()
        if revision is None:
            raise StoreError(f"{self.root}: no artifact store here")
        # --rev reads the .dvc file from git and the data by hash; without it dvc copies the workspace.
        _run([_dvc_exe(), "get", str(self.root), rel, "-o", str(Path(dest).absolute()), "--rev", revision], self.root)

    def versions(self, rel: str) -> bool:
        """Whether the store's last commit versions ``rel``."""
        if not (self.root / ".git").exists():
            return False
        probe = subprocess.run(["git", "cat-file", "-e", f"HEAD:{rel}.dvc"], cwd=self.root, capture_output=True,
                               check=False)
        return probe.returncode == 0

    def restore_parent(self, content_id: str, dest: Path) -> None:
        """``mergeops verify``'s restorer (registry/verify.py ``RestoreParent``): the parent bytes
        versioned under ``content_id`` into ``dest``, else ParentUnavailable saying how to get them."""
        self._restore_versioned(parent_path(content_id), dest)

    def restore_statistics(self, sha256: str, dest: Path) -> None:
        """``mergeops verify``'s restorer of statistics files: the bytes versioned under ``sha256``
        into the file ``dest``, else ParentUnavailable saying how to get them."""
        self._restore_versioned(statistics_path(sha256), dest)

    def _restore_versioned(self, rel: str, dest: Path) -> None:
        if not self.versions(rel):
            raise ParentUnavailable(f"the artifact store {self.root} does not version it (registered with "
                                    f"another store? point MERGEOPS_HOME at that one)")
        try:
            self.restore(rel, dest)
        except _CommandFailed as exc:
            raise ParentUnavailable(f"the artifact store {self.root} versions it, but neither its DVC cache nor "
                                    f"its remote {self.remote_url} holds the bytes (dvc get: {exc.detail}); "
                                    f"`dvc push` them from a copy of the store that has them") from None

    def revision(self) -> str | None:
        if not (self.root / ".git").exists():
            return None
        try:
            return _run(["git", "rev-parse", "HEAD"], self.root).strip()
        except StoreError:
            return None  # a repo without commits yet

    def _commit(self, message: str, paths: list[str]) -> str | None:
        present = [p for p in paths if (self.root / p).exists()]
        if present:  # (`git add -A --` with no path would add everything)
            _run(["git", "add", "-A", "--", *present], self.root)
        staged = subprocess.run(["git", "diff", "--cached", "--quiet"], cwd=self.root, check=False)
        if staged.returncode != 0:
            _run(["git", *_GIT_IDENTITY, "commit", "-q", "-m", message], self.root)
        return self.revision()

    @contextmanager
    def _locked(self) -> Iterator[None]:
        # git's index and dvc's cache are not safe under two concurrent writers.
        # The lock file sits beside the repo so that `git add -A` never picks it up.
        with open(self.root.parent / f".{self.root.name}.lock", "a") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)


def _unversioned(path: Path) -> list[Path]:
    """Remove and return what under ``path`` no ``.dvc`` file versions (a copy `dvc add` never saw)."""
    if path.name.endswith(".dvc") or path.name == ".gitignore" or path.with_name(path.name + ".dvc").exists():
        return []
    if path.is_dir() and not path.is_symlink():
        if any(path.rglob("*.dvc")):
            return [p for child in sorted(path.iterdir()) for p in _unversioned(child)]
        shutil.rmtree(path)
    else:
        path.unlink()
    return [path]


def dvc_file_md5(dvc_file: Path) -> str:
    """The md5 DVC recorded for the single output of a ``.dvc`` file (``<md5>.dir`` for a dir)."""
    data = yaml.safe_load(Path(dvc_file).read_text())
    return data["outs"][0]["md5"]


def lock_md5s(repo_root: Path) -> dict[str, dict[str, str]]:
    """``{stage: {output path: md5}}`` from ``<repo_root>/dvc.lock``; empty when there is none."""
    lock = Path(repo_root) / "dvc.lock"
    if not lock.exists():
        return {}
    data = yaml.safe_load(lock.read_text()) or {}
    stages = data.get("stages", {})
    return {
        stage: {out["path"]: out["md5"] for out in body.get("outs", []) if "md5" in out}
        for stage, body in stages.items()
    }
