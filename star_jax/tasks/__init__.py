"""STaR tasks: `get_task(name)` returns a `Task` (see base.py for the interface).

Importing this package registers the built-in tasks: 'cqa', 'gsm8k', 'arithmetic'.
"""

from star_jax.tasks import arithmetic, cqa, gsm8k  # registers the built-in tasks
from star_jax.tasks.arithmetic import ArithmeticTask, scratchpad, scratchpad_lines
from star_jax.tasks.base import (Example, Task, available_tasks, get_task, has_words, make_options,
                                 register_task, take_subset, task_class)
from star_jax.tasks.cqa import CommonsenseQATask
from star_jax.tasks.gsm8k import Gsm8kTask, normalize_number

__all__ = [
    "Example", "Task", "available_tasks", "get_task", "has_words", "make_options", "register_task",
    "take_subset", "task_class",
    "ArithmeticTask", "CommonsenseQATask", "Gsm8kTask", "normalize_number", "scratchpad",
    "scratchpad_lines",
]
