"""The built-in tasks (walks, regex, flow, toy), each a package on top of the core.

The Task protocol and the registry they register through live in ``epochal.task``;
their names are re-exported here so that ``from epochal.tasks import Task`` keeps working.
"""

from epochal.task import ENTRY_POINT_GROUP, Built, RunContext, Task, get_task, plugin_tasks, register_task, task_names

__all__ = ["ENTRY_POINT_GROUP", "Built", "RunContext", "Task", "get_task", "plugin_tasks", "register_task",
           "task_names"]
