"""Existence, safety and header checks of a dataset's image paths, fast enough for millions of paths.

Stat-ing every path costs a system call each; instead each directory is listed once (``os.scandir``) and names are
looked up in that listing. Symlinks follow :data:`phi3v_data.io.SYMLINK_RULE`: symlinked folders are followed, a
symlinked file that leads outside the images directory is refused. Headers are read once per distinct path (bounded
cache).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from phi3v_data.images import ImageProblem, check_image
from phi3v_data.io import UnsafePathError, resolve_inside

ImageCheck = Literal["exists", "header", "deep"]
"""``exists``: the file is there (no file opened); ``header``: also format and size; ``deep``: decode every pixel."""


class ImageChecker:
    """Checks image paths of one images directory, fast: each directory is listed once and names looked up.

    Symlinked directories are followed; a symlinked file is refused when it leads outside the images directory.
    """

    DIR, LINK, OTHER = "directory", "symlink", "other"

    def __init__(self, root: Path, mode: ImageCheck = "header", *, max_names: int = 2_000_000,
                 max_sizes: int = 200_000) -> None:
        self.root, self.mode = Path(root), mode
        # directory (as the paths spell it) → (regular file names, other entries by kind, problem with the directory)
        self._dirs: dict[str, tuple[frozenset[str], dict[str, str], ImageProblem | None]] = {}
        self._sizes: dict[str, tuple[int, int] | ImageProblem] = {}
        self._names, self._max_names, self._max_sizes = 0, max_names, max_sizes

    def check(self, rel: str) -> tuple[int, int] | ImageProblem | None:
        """The image's (width, height), an :class:`ImageProblem`, or None (exists, size not read in "exists" mode)."""
        directory, _, name = rel.rpartition("/")
        listing = self._dirs.get(directory)
        if listing is not None and name in listing[0]:  # the fast path: a regular file in a known directory
            return None if self.mode == "exists" else self._size(rel)
        try:
            problem = self._locate(rel, directory, name, listing or self._listing(directory))
        except (OSError, ValueError) as exc:  # NUL bytes, names too long, unencodable characters
            problem = ImageProblem("image_missing", f"{rel!r} cannot be looked up: {exc}")
        if problem is not None or self.mode == "exists":
            return problem
        return self._size(rel)

    def check_all(self, paths: list[str]) -> list[tuple[int, int] | ImageProblem | None] | None:
        """:meth:`check` of each path; None (nothing to report) when, in "exists" mode, every path is a known file."""
        if self.mode == "exists":
            dirs = self._dirs
            for rel in paths:
                directory, _, name = rel.rpartition("/")
                listing = dirs.get(directory)
                if listing is None or name not in listing[0]:
                    break
            else:
                return None
        return [self.check(rel) for rel in paths]

    def _size(self, rel: str) -> tuple[int, int] | ImageProblem:
        """Header (or full decode) of each distinct path once; the cache forgets its oldest entries past its bound."""
        result = self._sizes.get(rel)
        if result is None:
            try:
                result = check_image(os.path.join(self.root, rel), deep=self.mode == "deep")
            except ImageProblem as exc:
                result = exc
            if len(self._sizes) >= self._max_sizes:
                del self._sizes[next(iter(self._sizes))]
            self._sizes[rel] = result
        return result

    def _locate(self, rel: str, directory: str, name: str,
                listing: tuple[frozenset[str], dict[str, str], ImageProblem | None]) -> ImageProblem | None:
        files, others, problem = listing
        if problem is not None:
            return problem
        if name in files:
            return None
        if name in ("", ".", ".."):
            return ImageProblem("image_path_unsafe", f"{rel!r} does not name a file inside {self.root}")
        kind = others.get(name)
        if kind is None:
            return ImageProblem("image_missing", f"{rel} does not exist in {self.root}")
        if kind == self.DIR:
            return ImageProblem("image_missing", f"{rel} is a directory, not an image file")
        if kind == self.OTHER:
            return ImageProblem("image_undecodable", f"{rel} is not a regular file")
        return self._symlink(rel)

    def _symlink(self, rel: str) -> ImageProblem | None:
        try:
            target = resolve_inside(self.root, rel)
        except UnsafePathError as exc:
            return ImageProblem("image_path_unsafe", str(exc))
        if not os.path.isfile(target):
            return ImageProblem("image_missing", f"{rel} is a symlink to a file that does not exist")
        return None

    def _listing(self, directory: str) -> tuple[frozenset[str], dict[str, str], ImageProblem | None]:
        """List a directory once."""
        path = os.path.join(self.root, directory) if directory else str(self.root)
        files: set[str] = set()
        others: dict[str, str] = {}
        problem = None
        # symlinked folders are followed (phi3v_data.io.SYMLINK_RULE): images mounted from another disk work
        try:
            with os.scandir(path) as iterator:
                entries = list(iterator)
            # is_file(follow_symlinks=False) reads the directory entry's type: no stat per file
            files = {entry.name for entry in entries if entry.is_file(follow_symlinks=False)}
            if len(files) != len(entries):
                others = {e.name: self._kind(e) for e in entries if e.name not in files}
        except (FileNotFoundError, NotADirectoryError):
            where = f"directory {directory}/ does not exist in {self.root}" if os.path.isdir(self.root) else (
                f"the images directory {self.root} does not exist (point --images at it)")
            problem = ImageProblem("image_missing", where)
        except OSError as exc:
            problem = ImageProblem("image_missing", f"cannot list {path}: {exc.strerror}")
        listing = (frozenset(files), others, problem)
        self._names += len(files) + len(others)
        while self._dirs and self._names > self._max_names:  # forget the oldest listings; memory stays bounded
            old_files, old_others, _ = self._dirs.pop(next(iter(self._dirs)))
            self._names -= len(old_files) + len(old_others)
        self._dirs[directory] = listing
        return listing

    @classmethod
    def _kind(cls, entry: os.DirEntry) -> str:
        if entry.is_symlink():
            return cls.LINK
        return cls.DIR if entry.is_dir(follow_symlinks=False) else cls.OTHER
