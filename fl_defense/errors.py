"""The user-facing error of the whole project, in a module that imports nothing of it."""


class ConfigError(ValueError):
    """A user error (a config value, a file, a dataset, a checkpoint); its message is one line meant for the user.

    Every entry point turns it into that line on stderr and exit status 2, before anything is lost.
    """
