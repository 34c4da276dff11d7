"""Translation tasks. A task owns its networks, data and losses; `i2i.engine.Trainer` owns the loop."""
from __future__ import annotations

import importlib

# name -> "module:Class"; a new task is one module here and one YAML preset in configs/.
TASKS = {"afhq": "i2i.tasks.afhq:AFHQTask", "cityscapes": "i2i.tasks.cityscapes:CityscapesTask",
         "nirvis": "i2i.tasks.nirvis:NIRVISTask"}


def task_class(name: str):
    if name not in TASKS:
        raise ValueError(f"unknown task '{name}'; available tasks: {', '.join(TASKS)}")
    module, cls = TASKS[name].split(":")
    return getattr(importlib.import_module(module), cls)
