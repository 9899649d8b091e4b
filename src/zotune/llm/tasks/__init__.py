"""Tasks: MeZO's suite (SST-2, SuperGLUE, SQuAD, DROP), offline built-ins (mr, boolq, bbc, piqa) and custom files."""

from zotune.llm.tasks import offline, qa, superglue  # noqa: F401  (registers the tasks)
from zotune.llm.tasks.base import (
    Example,
    Splits,
    Task,
    TaskDataError,
    available_tasks,
    fixed_split,
    get_task,
    register_task,
    sample_splits,
)
from zotune.llm.tasks.custom import CustomTaskSpec, make_custom_task, parse_label_words

__all__ = [
    "CustomTaskSpec", "Example", "Splits", "Task", "TaskDataError", "available_tasks", "fixed_split",
    "get_task", "make_custom_task", "parse_label_words", "register_task", "sample_splits",
]
