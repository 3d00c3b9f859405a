"""GLUE from the Hugging Face Hub (``nyu-mll/glue``) for users who are online.

Offline machines should use ``load_glue_split`` on a local ``glue_data`` folder; when the download fails
``load_hub`` raises ``HubUnavailableError`` saying exactly that, instead of a deep ``datasets`` traceback.
"""
from __future__ import annotations

from typing import List, Union

from ..tasks.definition import TaskDef
from ..tasks.glue import get_task, task_extra
from .examples import Example
from .tabular import parse_label

__all__ = ["load_hub", "HubUnavailableError", "hub_split_name"]


class HubUnavailableError(RuntimeError):
    """The dataset could not be fetched (no network, hub down, or not cached)."""


def hub_split_name(split: str) -> str:
    """glue_data split names to Hub names: dev -> validation, dev_matched -> validation_matched."""
    return split.replace("dev", "validation", 1) if split.startswith("dev") else split


def load_hub(task: Union[TaskDef, str], split: str, name: str = "nyu-mll/glue", **load_kwargs) -> List[Example]:
    """Examples of ``task``'s ``split`` ("train", "dev"/"validation", MNLI's "dev_matched", "test") via
    ``datasets.load_dataset(name, config, split=...)``.  Hub test labels (-1, or -1.0 for STS-B) become
    None; outside a test split -1 means "no label" for classification but is a real score for regression.
    ``uid`` uses the glue_data split name (``"sst2/dev/0"``) so soft targets match ``load_glue_split``'s rows."""
    task = get_task(task)
    try:
        import datasets
    except ImportError as e:
        raise ImportError("load_hub needs the `datasets` package: pip install 'mkd_fast[nlp]'") from e
    config = task_extra(task, "hub_config", task.name)
    hub_split = hub_split_name(split)
    uid_split = split.replace("validation", "dev", 1) if split.startswith("validation") else split
    try:
        ds = datasets.load_dataset(name, config, split=hub_split, **load_kwargs)
    except (ConnectionError, OSError, TimeoutError) as e:
        raise HubUnavailableError(
            f"could not load {name!r} (config {config!r}, split {hub_split!r}) from the Hugging Face Hub: {e}. "
            "Offline? Use mkd_fast.data.load_glue_split(data_dir, task, split) with a local glue_data folder."
        ) from e
    except Exception as e:  # datasets wraps network failures in its own error types across versions
        if type(e).__name__ in ("ConnectionError", "DatasetNotFoundError", "HfHubHTTPError", "LocalEntryNotFoundError",
                                "OfflineModeIsEnabled") or "connect" in str(e).lower() or "offline" in str(e).lower():
            raise HubUnavailableError(
                f"could not load {name!r} (config {config!r}, split {hub_split!r}) from the Hugging Face Hub: {e}. "
                "Offline? Use mkd_fast.data.load_glue_split(data_dir, task, split) with a local glue_data folder."
            ) from e
        raise
    missing = [c for c in task.input_fields if c not in ds.column_names]
    if missing:
        raise ValueError(f"{name}/{config}: columns {missing} (task {task.name!r} input_fields) not in {ds.column_names}")
    is_test = hub_split.startswith("test")
    out: List[Example] = []
    for i, row in enumerate(ds):
        raw = row.get(task.label_field)
        label = None
        if raw is not None and not (raw == -1 and (task.kind == "classification" or is_test)):
            label = parse_label(raw, task, f"{name}/{config}/{hub_split} row {i}")
        texts = tuple(str(row[c]).strip() for c in task.input_fields)
        out.append(Example(uid=f"{task.name}/{uid_split}/{i}", task=task.name, texts=texts, label=label))
    return out
