"""epochal: reproducible, fast PyTorch training with one self-describing folder per run."""

__version__ = "0.1.0"

from epochal.callbacks.base import Callback  # noqa: E402
from epochal.config import RunConfig  # noqa: E402
from epochal.loop import FitResult, fit  # noqa: E402
from epochal.tasks import Built, RunContext, Task, register_task  # noqa: E402

__all__ = ["Built", "Callback", "FitResult", "RunConfig", "RunContext", "Task", "fit", "register_task", "__version__"]
