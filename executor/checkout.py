"""The code a phase runs: the run's git sha, checked out once per commit (docs/kinds.md, "The
run's code").
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tarfile
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path

from executor.errors import TerminalPhaseError

__all__ = ["OWN_CODE_BASE", "OWN_CODE_ROOT", "Checkouts", "CodeDir", "GitError", "own_code"]

_SHA = re.compile(r"^[0-9a-f]{7,64}$")
_URL = re.compile(r"^([a-z][a-z0-9+.-]*://|[^/:]+@[^/:]+:)", re.IGNORECASE)
_GIT_ENV = {"GIT_TERMINAL_PROMPT": "0", "GIT_ASKPASS": "true", "LC_ALL": "C"}


class GitError(RuntimeError):
    """A git command failed (the repository is unreachable, the disk is full...)."""


@dataclass(frozen=True)
class CodeDir:
    """Where a phase's code is: `path` None means the worker's own code (`note` says why)."""

    path: Path | None
    commit: str | None
    note: str


def own_code(note: str) -> CodeDir:
    return CodeDir(path=None, commit=None, note=f"{note}: the worker's own code")


OWN_CODE_BASE = Path(__file__).resolve().parent.parent
"""Where the worker's own code is installed (the directory holding `executor` and
`pipelines`: a source tree or site-packages). Without a checkout, the sql kind names a
`query_file` relative to it, as it would in a checkout of this repository."""
OWN_CODE_ROOT = OWN_CODE_BASE / "pipelines"
"""The part of the worker's own code a sql phase may read a `query_file` from: its phase
code package, never the rest of the directory (a source tree also holds `.control-room/`,
the local state with its secrets)."""


def _git(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True,
                          env={**os.environ, **_GIT_ENV}, check=False)


def _first_line(text: str) -> str:
    return next((line.strip() for line in text.splitlines() if line.strip()), "")


class Checkouts:
    """Commits of `repo` materialized under `root` (the module's docstring)."""

    def __init__(self, repo: str | Path, root: Path) -> None:
        self.repo = str(repo)
        self.root = Path(root)
        self._remote = not Path(self.repo).is_dir() and bool(_URL.match(self.repo))
        self._lock = threading.Lock()
        self._commit_locks: dict[str, threading.Lock] = {}
        if not self._remote:
            local = Path(self.repo)
            if not local.is_dir():
                raise ValueError(f"repository {self.repo} is neither a directory nor a URL")
            found = _git("rev-parse", "--git-dir", cwd=local)
            if found.returncode != 0:
                raise ValueError(f"{self.repo} is not a git repository: "
                                 f"{_first_line(found.stderr)}")

    # -- the repository -------------------------------------------------------------------

    @property
    def _mirror(self) -> Path:
        return self.root / ".mirror.git"

    def _git_dir(self) -> Path:
        """The repository to read: the local one, or the mirror of the remote (cloned now
        when it is not there yet)."""
        if not self._remote:
            return Path(self.repo)
        with self._lock:
            if not self._mirror.is_dir():
                self.root.mkdir(parents=True, exist_ok=True)
                tmp = self.root / f".tmp-mirror-{uuid.uuid4().hex}"
                cloned = _git("clone", "--mirror", "--quiet", self.repo, str(tmp))
                if cloned.returncode != 0:
                    shutil.rmtree(tmp, ignore_errors=True)
                    raise GitError(f"cloning {self.repo} failed: {_first_line(cloned.stderr)}")
                self._install(tmp, self._mirror)
        return self._mirror

    def _fetch(self) -> None:
        with self._lock:
            fetched = _git("fetch", "--quiet", "--prune", cwd=self._mirror)
        if fetched.returncode != 0:
            raise GitError(f"fetching {self.repo} failed: {_first_line(fetched.stderr)}")

    def _commit(self, git_sha: str) -> str | None:
        """The full commit id of `git_sha` in the repository, or None."""
        found = _git("rev-parse", "--verify", "--quiet", "--end-of-options",
                     f"{git_sha}^{{commit}}", cwd=self._git_dir())
        return found.stdout.strip() if found.returncode == 0 else None

    # -- checkouts ------------------------------------------------------------------------

    def code_for(self, git_sha: str | None) -> CodeDir:
        """The checkout of `git_sha` (materialized now if needed); see the module docstring."""
        if not git_sha or not _SHA.match(git_sha):
            return own_code(f"git sha {git_sha!r} is not a commit (a working tree's run)")
        commit = self._commit(git_sha)
        if commit is None and self._remote:
            self._fetch()
            commit = self._commit(git_sha)
        if commit is None:
            raise TerminalPhaseError(
                f"git sha {git_sha} is not a commit of {self.repo} (unknown or ambiguous)",
                error_type="UnknownCommit")
        target = self.root / commit
        if not target.is_dir():
            with self._commit_lock(commit):
                if not target.is_dir():
                    self._extract(commit, target)
        return CodeDir(path=target, commit=commit, note=f"code at commit {commit}")

    def _commit_lock(self, commit: str) -> threading.Lock:
        with self._lock:
            return self._commit_locks.setdefault(commit, threading.Lock())

    def _extract(self, commit: str, target: Path) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = self.root / f".tmp-{commit}-{uuid.uuid4().hex}"
        tmp.mkdir()
        try:
            tar_path = tmp.with_suffix(".tar")
            archived = _git("archive", "--format=tar", "-o", str(tar_path), commit,
                            cwd=self._git_dir())
            if archived.returncode != 0:
                raise GitError(f"git archive {commit} failed: {_first_line(archived.stderr)}")
            with tarfile.open(tar_path) as tar:
                tar.extractall(tmp, filter="data")
            self._install(tmp, target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.with_suffix(".tar").unlink(missing_ok=True)

    @staticmethod
    def _install(tmp: Path, target: Path) -> None:
        """Rename `tmp` to `target`; when another process got there first, keep theirs."""
        try:
            os.rename(tmp, target)
        except OSError:
            if not target.is_dir():
                raise
            shutil.rmtree(tmp, ignore_errors=True)
