"""Tasks: what each task is (TaskDef), the GLUE built-ins and registry, and their metrics."""
from .definition import TASK_KINDS, TaskDef
from .glue import GLUE_TASKS, get_task, list_tasks, load_task_yaml, register_task, task_extra
from .metrics import (
    METRICS,
    accuracy,
    combined_score,
    compute_metrics,
    f1,
    matthews_corrcoef,
    pearson,
    rankdata,
    spearman,
)

__all__ = [
    "TASK_KINDS", "TaskDef", "GLUE_TASKS", "get_task", "list_tasks", "load_task_yaml", "register_task",
    "task_extra", "METRICS", "accuracy", "combined_score", "compute_metrics", "f1", "matthews_corrcoef",
    "pearson", "rankdata", "spearman",
]
