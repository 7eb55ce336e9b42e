"""The plugin's own error type (no fairseq import)."""


class ConfigError(ValueError):
    """Bad configuration or input that the user must fix (an option, a teacher, a pool).

    fairseq commands print it as one line, ``tiekd: error: <message>``, without a traceback.
    """
