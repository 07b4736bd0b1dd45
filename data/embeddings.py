"""Embedding pickles (what save_asv_embeddings.py writes): read without running code, and checked.

`asv_embd_<part>.pk` / `cm_embd_<part>.pk` map an utterance id to a float32 vector, `spk_model_<part>.pk`
a speaker to its model. Loading a pickle can run code, so these are read with an unpickler that builds
only dicts, lists, numbers, strings and numpy arrays. Every problem is one line naming the file and id.
"""
from __future__ import annotations

import io
import pickle
from pathlib import Path

import numpy as np

from runtime.errors import UserError

# The globals a pickled dict of numpy vectors needs (numpy 1 and 2 module names). Protocol 5, which
# save_asv_embeddings.py writes, rebuilds arrays with _frombuffer (bytes -> array); protocol 2 stores bytes
# through _codecs.encode (str -> bytes). Neither runs code.
_ALLOWED_GLOBALS = {
    ("_codecs", "encode"),
    ("numpy", "ndarray"), ("numpy", "dtype"),
    ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("collections", "OrderedDict"),
}


class EmbeddingError(UserError, ValueError):
    """An embedding pickle that cannot be used, or an id it lacks; one line naming the file."""


class _VectorUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> type:
        if (module, name) in _ALLOWED_GLOBALS:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"it would import {module}.{name}, which could execute code")


def _first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__


def read_embeddings(path: str | Path) -> dict[str, np.ndarray]:
    """id -> float32 vector [D] (a [1, D] entry is accepted as [D]); every vector finite and of one length."""
    path = Path(path)
    try:
        raw = _VectorUnpickler(io.BytesIO(path.read_bytes())).load()
    except FileNotFoundError:
        raise EmbeddingError(f"{path}: embedding pickle not found (save_asv_embeddings.py writes it)") from None
    except OSError as error:
        raise EmbeddingError(f"{path}: cannot read the embedding pickle ({error.strerror})") from None
    except Exception as error:  # noqa: BLE001 - truncated, not a pickle, refused global, ...
        raise EmbeddingError(f"{path}: not a readable embedding pickle ({type(error).__name__}: "
                             f"{_first_line(error)})") from None
    if not isinstance(raw, dict):
        raise EmbeddingError(f"{path}: expected a pickled dict of id -> vector, got a {type(raw).__name__}")
    if not raw:
        raise EmbeddingError(f"{path}: holds no embeddings")
    vectors: dict[str, np.ndarray] = {}
    first: tuple[str, int] | None = None
    for key, value in raw.items():
        if not isinstance(key, str):
            raise EmbeddingError(f"{path}: key {key!r} is not an id string; expected a dict of id -> vector")
        try:
            vector = np.asarray(value, dtype=np.float32)
        except (TypeError, ValueError):
            raise EmbeddingError(f"{path}: the entry of {key!r} is a {type(value).__name__}, not a numeric "
                                 f"vector") from None
        if vector.ndim == 2 and vector.shape[0] == 1:
            vector = vector[0]
        if vector.ndim != 1 or vector.size == 0:
            raise EmbeddingError(f"{path}: the entry of {key!r} has shape {list(vector.shape)}, not a vector")
        if not np.isfinite(vector).all():
            raise EmbeddingError(f"{path}: the embedding of {key!r} has NaN/inf values")
        if first is None:
            first = (key, vector.size)
        elif vector.size != first[1]:
            raise EmbeddingError(f"{path}: the embedding of {key!r} has {vector.size} values, that of "
                                 f"{first[0]!r} {first[1]}")
        vectors[key] = vector
    return vectors


def embedding_size(vectors: dict[str, np.ndarray]) -> int:
    return next(iter(vectors.values())).size
