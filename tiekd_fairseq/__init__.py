"""tiekd-fairseq: TIE-KD (Top-1 Information Enhanced Knowledge Distillation) for fairseq.

Importing this package (``--user-dir tiekd_fairseq``) registers the ``tie_kd`` criterion,
the ``translation_tie_kd`` task and the ``tie_kd_transformer_*`` architectures, and lets
fairseq checkpoints load under torch >= 2.6 (see ``checkpoint_loading``). It also makes the
plugin's configuration errors one line on fairseq's commands (``errors``) and hides the
deprecation noise of fairseq's imports (``quiet``; ``TIEKD_VERBOSE=1`` shows it).
The loss maths (``tiekd_fairseq.losses``) needs only PyTorch.
"""

__version__ = "0.1.0"

from . import errors, quiet

quiet.install()  # before fairseq is imported below, where this package is imported first
errors.install_excepthook()

from . import checkpoint_loading  # noqa: E402,F401  (first of the torch parts: teacher loading relies on it)

try:
    import fairseq  # noqa: F401
except ImportError:  # e.g. a loss benchmark on a machine without fairseq
    pass
else:
    from . import architectures, criterion, task  # noqa: F401
