"""Hide the noise that fairseq's own imports print on every command (stdlib only).

- ``Please install tensorboardX: pip install tensorboardX``: logged (INFO) by
  ``fairseq.tasks.text_to_speech`` when fairseq imports its tasks. Hidden by a logging filter
  on that logger. It only works where the plugin is imported before fairseq (``tiekd-eval``,
  ``tiekd-export``, ``python -m tiekd_fairseq``, ``import tiekd_fairseq`` in a script):
  ``fairseq-train``/``fairseq-generate``/``fairseq-preprocess`` import fairseq, and so log the
  line, before they read ``--user-dir``. There only ``pip install tensorboardX`` (which also
  enables ``--tensorboard-logdir``) or ``LOGLEVEL=WARNING`` (fairseq-train's own log level,
  which hides all its INFO lines) removes it.
- Hydra's deprecation warnings (``hydra.experimental.initialize() is no longer experimental``,
  ``The version_base parameter is not specified``, ...): fairseq 0.12 calls Hydra's old APIs
  when it turns the command line into its config, after ``--user-dir`` is imported, so the
  ``warnings`` filters installed here hide them on every fairseq command that loads the plugin.

``TIEKD_VERBOSE=1`` leaves everything as it is.
"""
import logging
import os
import warnings

TENSORBOARDX_LOGGER = "fairseq.tasks.text_to_speech"

# Matched (re.match, case-insensitive) against the start of each warning's message.
HYDRA_WARNINGS = (
    r"\s*hydra\.experimental\.\w+\(\) is no longer experimental",
    r"\s*The version_base parameter is not specified",
    r"\s*In '[^']*': Usage of deprecated keyword in package header",
    r"\s*'[^']*' is validated against ConfigStore schema with the same name",
    r"\s*The strict flag in the compose API is deprecated",
)


def verbose() -> bool:
    """TIEKD_VERBOSE=1 (or any value but 0/false/no) shows what is hidden by default."""
    return os.environ.get("TIEKD_VERBOSE", "").strip().lower() not in ("", "0", "false", "no")


class _DropTensorboardXHint(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "Please install tensorboardX" not in record.getMessage()


_FILTER = _DropTensorboardXHint()


def install():
    """Install the filters (idempotent); nothing with TIEKD_VERBOSE=1."""
    if verbose():
        return
    logger = logging.getLogger(TENSORBOARDX_LOGGER)
    if _FILTER not in logger.filters:
        logger.addFilter(_FILTER)
    for message in HYDRA_WARNINGS:
        warnings.filterwarnings("ignore", message=message)
