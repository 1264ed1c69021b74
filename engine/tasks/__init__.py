"""zarrl.engine.tasks: the tasks a learner trains on, chosen by ``env.task``.

``gym`` (any Gymnasium id, MLP networks), ``sequence`` (the exactly solvable tree MDP with a
fixed prior, tabular networks, ``tv_to_optimum``), ``gmm_posterior`` (the seed paper's
diffusion task, with its fast sampler function as a data source) and ``generations`` (offline
fine-tuning of an autoregressive policy from logged generations). A new task implements
:class:`Task` and registers itself with :func:`register_task`.
"""

from zarrl.engine.tasks.base import (
    TASKS,
    StoredDataTask,
    Task,
    build_task,
    register_task,
    task_options,
)
from zarrl.engine.tasks.generations import GenerationsTask
from zarrl.engine.tasks.gmm_posterior import GMMPosteriorTask
from zarrl.engine.tasks.gym import GymTask
from zarrl.engine.tasks.sequence import SequenceTask, optimum_of

__all__ = [
    "TASKS",
    "GenerationsTask",
    "GMMPosteriorTask",
    "GymTask",
    "SequenceTask",
    "StoredDataTask",
    "Task",
    "build_task",
    "optimum_of",
    "register_task",
    "task_options",
]
