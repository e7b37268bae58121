"""The workloads' data, all offline: generated or shipped in installed packages.

* **digits**: scikit-learn's bundled 8x8 handwritten digits (1,797 images).
* **docstrings**: English text, the docstrings of this Python's standard
  library, read from its source files with ``ast`` (nothing is imported), in
  sorted file order, so a Python version always gives the same text.

Each comes with a description (name, size, SHA-256) for the report.
"""

from __future__ import annotations

import ast
import hashlib
import platform
import sysconfig
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Dict, Iterator, List, Tuple

import numpy as np
import torch
from torch import Tensor

from _claims.problems import Digits  # the same four tensors as seed_claims.py's digits

#: Folders of the standard library left out: tests, the IDLE GUI, installed packages.
_SKIP_PARTS = {"test", "tests", "idle_test", "idlelib", "site-packages", "dist-packages", "lib2to3"}


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@lru_cache(maxsize=1)
def digits() -> Tuple[Digits, Dict[str, str]]:
    """Images (N, 1, 8, 8) in [0, 1] and labels, a fixed train/test split
    (seed 0, 360 test images), and their description."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = (bunch.images / 16.0).astype(np.float32)
    labels = bunch.target.astype(np.int64)
    order = np.random.default_rng(0).permutation(len(labels))  # fixed split
    test, train = order[:360], order[360:]
    x = torch.from_numpy(images).unsqueeze(1)
    y = torch.from_numpy(labels)
    import sklearn

    about = {
        "name": "scikit-learn digits",
        "source": f"sklearn.datasets.load_digits (scikit-learn {sklearn.__version__})",
        "size": f"{len(labels)} images 8x8 (train {len(train)}, test {len(test)})",
        "sha256": sha256(images.tobytes() + labels.tobytes())[:16],
    }
    return Digits(x[train], y[train], x[test], y[test]), about


def _docstrings_of(path: Path) -> Iterator[str]:
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"))
    except (SyntaxError, UnicodeDecodeError, ValueError):
        return
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            doc = ast.get_docstring(node, clean=True)
            if doc and len(doc) >= 40:
                yield doc


KINDS = ("module", "class", "function")


@lru_cache(maxsize=2)
def docstring_kinds(length: int, per_kind: int) -> Tuple[List[str], Tensor, Dict[str, str]]:
    """A classification task from the same text: the first ``length``
    characters of a docstring -> whether it documents a module, a class or a
    function; ``per_kind`` examples of each (the first found, files in sorted
    order), as (texts, labels (N,), description)."""
    root = Path(sysconfig.get_paths()["stdlib"])
    found: Dict[int, list] = {0: [], 1: [], 2: []}
    for path in sorted(root.rglob("*.py")):
        if _SKIP_PARTS & set(path.relative_to(root).parts):
            continue
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue
        for node in ast.walk(tree):
            kind = (0 if isinstance(node, ast.Module) else 1 if isinstance(node, ast.ClassDef)
                    else 2 if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) else None)
            doc = ast.get_docstring(node, clean=True) if kind is not None else None
            if doc and len(doc) >= length and len(found[kind]) < per_kind:
                found[kind].append(doc[:length])
        if all(len(v) >= per_kind for v in found.values()):
            break
    texts = [t for k in (0, 1, 2) for t in found[k]]
    labels = torch.tensor([k for k in (0, 1, 2) for _ in found[k]], dtype=torch.int64)
    clean = ["".join(c if 32 <= ord(c) < 127 else "?" for c in t.replace("\n", " ")) for t in texts]
    about = {
        "name": "docstring kinds (module / class / function)",
        "source": f"the first {length} characters of standard-library docstrings (Python {platform.python_version()})",
        "size": f"{len(texts)} examples ({', '.join(f'{KINDS[k]} {len(found[k])}' for k in (0, 1, 2))})",
        "sha256": sha256("\0".join(clean).encode())[:16],
    }
    return clean, labels, about


@dataclass(frozen=True)
class Text:
    """A character corpus: ids (int64), the vocabulary, a train/validation split."""

    train: Tensor
    valid: Tensor
    vocab: str
    about: Dict[str, str]


@lru_cache(maxsize=2)
def docstrings(max_chars: int) -> Text:
    """The first ``max_chars`` characters of the standard library's docstrings
    (printable ASCII and newlines; anything else becomes ``?``), 90/10 split."""
    root = Path(sysconfig.get_paths()["stdlib"])
    pieces, total, files = [], 0, 0
    for path in sorted(root.rglob("*.py")):
        if _SKIP_PARTS & set(path.relative_to(root).parts):
            continue
        files += 1
        for doc in _docstrings_of(path):
            pieces.append(doc)
            total += len(doc) + 2
        if total >= max_chars:
            break
    text = "\n\n".join(pieces)[:max_chars]
    text = "".join(c if (32 <= ord(c) < 127 or c == "\n") else "?" for c in text)
    vocab = "".join(sorted(set(text)))
    index = {c: i for i, c in enumerate(vocab)}
    ids = torch.tensor([index[c] for c in text], dtype=torch.int64)
    cut = int(len(ids) * 0.9)
    about = {
        "name": "Python standard library docstrings",
        "source": f"ast.get_docstring over {files} files of {root} (Python {platform.python_version()})",
        "size": f"{len(text):,} characters, vocabulary {len(vocab)}",
        "sha256": sha256(text.encode())[:16],
    }
    return Text(ids[:cut], ids[cut:], vocab, about)


def text_batch(ids: Tensor, context: int, batch: int, generator: torch.Generator) -> Tuple[Tensor, Tensor]:
    """``batch`` random windows of ``context`` characters and the next character of each."""
    starts = torch.randint(0, len(ids) - context - 1, (batch,), generator=generator)
    windows = torch.stack([ids[s:s + context + 1] for s in starts.tolist()])
    return windows[:, :-1], windows[:, 1:]
