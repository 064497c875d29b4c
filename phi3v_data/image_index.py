"""Existence, safety and header checks of a dataset's image paths, fast enough for millions of paths.

Stat-ing every path costs a system call each; instead each directory is listed once (``os.scandir``) and names are
looked up in that listing. Symlinks (an entry, or a directory on the way) are followed once and refused when they
lead outside the images directory. Headers are read once per distinct path (bounded cache).
"""

from __future__ import annotations

import os
from collections import OrderedDict
from pathlib import Path
from typing import Literal

from phi3v_data.images import ImageProblem, check_image
from phi3v_data.io import UnsafePathError, resolve_inside

ImageCheck = Literal["exists", "header", "deep"]
"""``exists``: the file is there (no file opened); ``header``: also format and size; ``deep``: decode every pixel."""


class ImageChecker:
    """Checks image paths of one images directory, fast: each directory is listed once and names looked up.

    A symlink entry (or a symlinked directory) is followed and refused when it leads outside the images directory.
    """

    FILE, DIR, LINK, OTHER = "f", "d", "l", "o"

    def __init__(self, root: Path, mode: ImageCheck = "header", *, max_dirs: int = 1024, max_sizes: int = 100_000):
        self.root, self.mode = Path(root), mode
        self._real_root = os.path.realpath(self.root)
        self._prefix = self._real_root.rstrip(os.sep) + os.sep
        self._dirs: OrderedDict[str, tuple[dict[str, str], ImageProblem | None]] = OrderedDict()
        self._sizes: OrderedDict[str, tuple[int, int] | ImageProblem] = OrderedDict()
        self._max_dirs, self._max_sizes = max_dirs, max_sizes

    def check(self, rel: str) -> tuple[int, int] | ImageProblem | None:
        """The image's (width, height), an :class:`ImageProblem`, or None (exists, size not read in "exists" mode)."""
        try:
            problem = self._locate(rel)
        except (OSError, ValueError) as exc:  # NUL bytes, names too long, unencodable characters
            problem = ImageProblem("image_missing", f"{rel!r} cannot be looked up: {exc}")
        if problem is not None or self.mode == "exists":
            return problem
        result = self._sizes.get(rel)
        if result is None:
            try:
                result = check_image(os.path.join(self.root, rel), deep=self.mode == "deep")
            except ImageProblem as exc:
                result = exc
            self._sizes[rel] = result
            if len(self._sizes) > self._max_sizes:
                self._sizes.popitem(last=False)
        return result

    def _locate(self, rel: str) -> ImageProblem | None:
        if rel.startswith(".") or "/." in rel or "//" in rel or rel.endswith("/") or not rel:
            parts = [p for p in rel.split("/") if p not in ("", ".")]
            if not parts or ".." in parts:
                return ImageProblem("image_path_unsafe", f"{rel!r} does not name a file inside {self.root}")
            directory, name = "/".join(parts[:-1]), parts[-1]
        else:
            directory, _, name = rel.rpartition("/")
        names, problem = self._listing(directory)
        if problem is not None:
            return problem
        kind = names.get(name)
        if kind == self.FILE:
            return None
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
        except UnsafePathError:
            return ImageProblem("image_path_unsafe", f"{rel} is a symlink that leads outside {self.root}")
        if not os.path.isfile(target):
            return ImageProblem("image_missing", f"{rel} is a symlink to a file that does not exist")
        return None

    def _listing(self, directory: str) -> tuple[dict[str, str], ImageProblem | None]:
        cached = self._dirs.get(directory)
        if cached is not None:
            self._dirs.move_to_end(directory)
            return cached
        path = os.path.join(self.root, directory) if directory else str(self.root)
        real = os.path.realpath(path)
        names: dict[str, str] = {}
        problem = None
        if real != self._real_root and not real.startswith(self._prefix):
            problem = ImageProblem("image_path_unsafe", f"directory {directory}/ leads outside {self.root} (symlink)")
        else:
            try:
                with os.scandir(path) as entries:
                    for entry in entries:
                        names[entry.name] = self._kind(entry)
            except (FileNotFoundError, NotADirectoryError):
                where = f"directory {directory}/ does not exist in {self.root}" if os.path.isdir(self.root) else (
                    f"the images directory {self.root} does not exist (point --images at it)")
                problem = ImageProblem("image_missing", where)
            except OSError as exc:
                problem = ImageProblem("image_missing", f"cannot list {path}: {exc.strerror}")
        self._dirs[directory] = (names, problem)
        if len(self._dirs) > self._max_dirs:
            self._dirs.popitem(last=False)
        return names, problem

    @classmethod
    def _kind(cls, entry: os.DirEntry) -> str:
        if entry.is_symlink():
            return cls.LINK
        if entry.is_dir(follow_symlinks=False):
            return cls.DIR
        return cls.FILE if entry.is_file(follow_symlinks=False) else cls.OTHER


