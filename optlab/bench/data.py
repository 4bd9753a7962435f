"""A byte-level text corpus that every Python installation carries: its own standard library.

The corpus is the source of :data:`STDLIB_MODULES`, a fixed, sorted list of 110
single-file modules of the standard library that exist (as ``<name>.py`` directly in the
standard-library directory) in every supported Python version (3.11 and later): about
3.3 MB of Python source, code and docstrings, read as raw bytes (vocabulary 256, one
token per byte). Modules that were removed (``asyncore``, ``imp``, ``cgi``, ``telnetlib``,
...), turned into packages (``pathlib``, ``zipfile``) or scheduled to move (``profile``,
``gzip``) are left out. Their text differs a little between Python versions, so the
output of a run records the Python version and a hash of the corpus.

The split is by file: every :data:`VALIDATION_EVERY`-th file of the sorted list (the
5th, 15th, 25th, ...) is validation, the rest training, so no validation text appears
in the training set, even partially.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import platform
import sysconfig
from collections.abc import Sequence
from pathlib import Path

import numpy as np

# Present as a single `<name>.py` file in CPython 3.11, 3.12, 3.13 and 3.14.
STDLIB_MODULES: tuple[str, ...] = (
    "abc", "argparse", "ast", "base64", "bdb", "bisect", "calendar", "cmd", "code",
    "codecs", "codeop", "colorsys", "configparser", "contextlib", "copy", "copyreg", "csv",
    "dataclasses", "datetime", "difflib", "dis", "doctest", "enum", "filecmp", "fileinput",
    "fnmatch", "fractions", "ftplib", "functools", "getopt", "getpass", "gettext", "glob",
    "graphlib", "hashlib", "heapq", "hmac", "imaplib", "inspect", "ipaddress", "keyword",
    "linecache", "locale", "mailbox", "mimetypes", "modulefinder", "netrc", "numbers",
    "opcode", "operator", "optparse", "os", "pdb", "pickle", "pickletools", "platform",
    "plistlib", "poplib", "posixpath", "pprint", "pstats", "pty", "py_compile", "pyclbr",
    "queue", "quopri", "random", "reprlib", "rlcompleter", "runpy", "sched", "secrets",
    "selectors", "shelve", "shlex", "shutil", "signal", "site", "smtplib", "socket",
    "socketserver", "ssl", "stat", "statistics", "string", "stringprep", "struct",
    "subprocess", "symtable", "tabnanny", "tarfile", "tempfile", "textwrap", "threading",
    "timeit", "token", "tokenize", "trace", "traceback", "tracemalloc", "tty", "types",
    "typing", "uuid", "warnings", "wave", "weakref", "webbrowser", "zipapp", "zipimport",
)  # fmt: skip
VALIDATION_EVERY = 10
VALIDATION_OFFSET = 4  # validation files: indices 4, 14, 24, ... of the sorted list


@dataclasses.dataclass(frozen=True)
class Corpus:
    """A byte corpus split by file.

    Attributes:
      train: the training files' bytes, concatenated (``uint8``).
      valid: the validation files' bytes, concatenated (``uint8``).
      train_files: the training files (relative paths), in order.
      valid_files: the validation files (relative paths), in order.
      root: the directory the files were read from.
      sha256: hex SHA-256 of every file's relative path and bytes, in the sorted order.
      python: the Python version that ran (whose standard library this is by default).
    """

    train: np.ndarray
    valid: np.ndarray
    train_files: tuple[str, ...]
    valid_files: tuple[str, ...]
    root: str
    sha256: str
    python: str

    def describe(self) -> str:
        """One line: sizes, file counts, Python version and the hash (first 12 digits)."""
        return (
            f"corpus: Python {self.python} standard library, {len(self.train_files)} train files"
            f" ({self.train.size / 1e6:.2f} MB), {len(self.valid_files)} validation files"
            f" ({self.valid.size / 1e6:.2f} MB), sha256 {self.sha256[:12]}"
        )


def stdlib_dir() -> Path:
    """The directory of the running Python's standard-library sources."""
    return Path(sysconfig.get_paths()["stdlib"])


def load_corpus(
    root: str | os.PathLike | None = None,
    files: Sequence[str] | None = None,
    *,
    valid_every: int = VALIDATION_EVERY,
    valid_offset: int = VALIDATION_OFFSET,
) -> Corpus:
    """Read ``files`` under ``root`` as bytes and split them by file.

    Args:
      root: the directory to read; default: the running Python's standard library.
      files: relative paths, read in sorted order; default: ``<m>.py`` for every
        module ``m`` of :data:`STDLIB_MODULES`.
      valid_every: every ``valid_every``-th file (sorted) goes to validation.
      valid_offset: the index of the first validation file (``< valid_every``).

    Returns:
      A :class:`Corpus`.

    Raises:
      FileNotFoundError: naming the directory and every missing file (e.g. a Python
        installed without its ``.py`` sources).
      ValueError: for fewer than two files or an empty split.
    """
    root = Path(root) if root is not None else stdlib_dir()
    if files is None:
        files = [f"{m}.py" for m in STDLIB_MODULES]
    files = sorted(files)
    if len(files) < 2:
        raise ValueError(f"`load_corpus`: need at least two files to split, got {files!r}")
    if not 0 <= valid_offset < valid_every:
        raise ValueError(
            "`load_corpus`: need 0 <= valid_offset < valid_every, got"
            f" valid_offset={valid_offset}, valid_every={valid_every}"
        )
    missing = [f for f in files if not (root / f).is_file()]
    if missing:
        shown = ", ".join(missing[:20]) + (
            f", ... ({len(missing)} in all)" if len(missing) > 20 else ""
        )
        hint = ""
        if root == stdlib_dir():
            hint = (
                " This Python seems to be installed without its standard-library sources"
                " (only compiled .pyc files?). Install them (e.g. the distribution's"
                " python3-dev / python3.X-full package, or use a python.org / pyenv / conda"
                " build), or pass another directory (`--corpus DIR` on the command line)."
            )
        raise FileNotFoundError(
            f"optlab.bench corpus: {len(missing)} of {len(files)} files are missing under"
            f" {str(root)!r}: {shown}.{hint}"
        )
    digest = hashlib.sha256()
    train, valid, train_files, valid_files = [], [], [], []
    for i, name in enumerate(files):
        data = (root / name).read_bytes()
        digest.update(name.encode() + b"\0" + data + b"\0")
        if i % valid_every == valid_offset:
            valid.append(data)
            valid_files.append(name)
        else:
            train.append(data)
            train_files.append(name)
    if not valid or not train:
        raise ValueError(
            f"`load_corpus`: {len(files)} files with valid_every={valid_every},"
            f" valid_offset={valid_offset} leave an empty split."
        )

    def join(parts):
        return np.frombuffer(b"\n".join(parts), dtype=np.uint8).copy()

    return Corpus(
        train=join(train),
        valid=join(valid),
        train_files=tuple(train_files),
        valid_files=tuple(valid_files),
        root=str(root),
        sha256=digest.hexdigest(),
        python=platform.python_version(),
    )
