"""epochal: reproducible, fast PyTorch training with one self-describing folder per run."""

__version__ = "0.1.0"

from epochal.api import Result, run  # noqa: E402
from epochal.callbacks.base import Callback  # noqa: E402
from epochal.config import RunConfig  # noqa: E402
from epochal.decisions import Continue, RollBack, Save, Stop  # noqa: E402
from epochal.script import fit  # noqa: E402
from epochal.tasks import Built, RunContext, Task, register_task  # noqa: E402

__all__ = ["Built", "Callback", "Continue", "Result", "RollBack", "RunConfig", "RunContext", "Save", "Stop", "Task",
           "fit", "register_task", "run", "__version__"]
