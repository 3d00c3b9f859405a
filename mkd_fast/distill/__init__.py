"""Multi-task distillation: the trainer, its settings, task sampling, the loss and the paper recipes."""
from .config import DistillConfig
from .evaluation import evaluate_model
from .objective import DistillObjective
from .recipes import RECIPES, Recipe, get_recipe, recipe_config
from .run_config import DistillRunConfig, load_run_config, run_distill, run_finetune
from .sampling import TaskSampler, task_probabilities
from .task_agnostic import TaskAgnosticConfig, load_task_agnostic_config, task_agnostic_distill
from .task_agnostic_data import read_text_file
from .task_agnostic_run import TaskAgnosticRunConfig, load_task_agnostic_run_config, run_task_agnostic
from .trainer import Callback, MultiTaskDistiller

__all__ = ["DistillConfig", "evaluate_model", "DistillObjective", "RECIPES", "Recipe", "get_recipe", "recipe_config",
           "TaskSampler", "task_probabilities", "Callback", "MultiTaskDistiller",
           "TaskAgnosticConfig", "load_task_agnostic_config", "task_agnostic_distill", "read_text_file",
           "DistillRunConfig", "load_run_config", "run_distill", "run_finetune",
           "TaskAgnosticRunConfig", "load_task_agnostic_run_config", "run_task_agnostic"]
