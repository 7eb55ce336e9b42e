"""tiekd-fairseq: TIE-KD (Top-1 Information Enhanced Knowledge Distillation) for fairseq.

Importing this package (``--user-dir tiekd_fairseq``) registers the ``tie_kd`` criterion,
the ``translation_tie_kd`` task and the ``tie_kd_transformer_*`` architectures, and lets
fairseq checkpoints load under torch >= 2.6 (see ``checkpoint_loading``).
The loss maths (``tiekd_fairseq.losses``) needs only PyTorch.
"""

__version__ = "0.1.0"

from . import checkpoint_loading  # noqa: F401  (first: teacher loading relies on it)

try:
    import fairseq  # noqa: F401
except ImportError:  # e.g. a loss benchmark on a machine without fairseq
    pass
else:
    from . import architectures, criterion, task  # noqa: F401
