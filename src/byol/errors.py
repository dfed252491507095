"""The one error type of byol and its kinds.

Every bad input the library can name (a config key, a checkpoint, a data folder, an
evaluation flag, a transfer dataset layout, a run that cannot go on) raises a subclass of
:class:`ByolError` whose message names the culprit and the fix. The command line catches
``ByolError`` alone and prints the message as one line (exit code 2); library users can catch
it, or the narrower kind, the same way.

The kinds keep their historical standard bases (``ValueError``, or ``RuntimeError`` for a run
that diverged), so code that caught those still does.
"""

from __future__ import annotations


class ByolError(Exception):
    """A known, explainable failure: the message is meant for the user as it stands."""


class ConfigError(ByolError, ValueError):
    """Invalid configuration. The message names the offending key and the fix."""


class CheckpointError(ByolError, ValueError):
    """A checkpoint is missing, unreadable or does not fit the model. Names the file and fix."""


class DataError(ByolError, ValueError):
    """Bad input data. The message names the file/folder, what is wrong and the fix."""


class EvalError(ByolError, ValueError):
    """Bad evaluation input (flag, file, shape). The message names the culprit and the fix."""


class TransferError(ByolError, ValueError):
    """Bad transfer-benchmark input (data layout, flag, checkpoint). Names the culprit and fix."""


class TrainingError(ByolError, RuntimeError):
    """The run cannot go on (diverged loss, unusable resume state). The message says why."""


class DeviceError(ConfigError, RuntimeError):
    """The device asked for does not exist here (an unknown type, CUDA without a GPU)."""
