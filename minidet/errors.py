"""minidet's errors about files: each message names the file and what is wrong with it."""


class WeightsError(ValueError):
    """A weights file that cannot be read or does not hold what it should; the message names the file."""


class CheckpointError(ValueError):
    """A checkpoint or model file that is missing, truncated, corrupt or of another kind; the message names it."""
