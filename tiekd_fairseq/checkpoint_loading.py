"""Make fairseq checkpoints load with torch >= 2.6, where ``torch.load`` defaults to
``weights_only=True``.

fairseq (0.12.x) calls ``torch.load(path)`` without ``weights_only``. Its checkpoints hold,
besides tensors and plain containers, an ``argparse.Namespace`` (``args``, and in
``cfg`` the ``model``/``task`` entries of configs converted from command-line arguments).
Rather than turning safe loading off, we allow exactly that one class on torch's
weights-only unpickler: any other pickled object is still refused by torch, with its
"Weights only load failed" message that names the offending global.
"""

import argparse

import torch

# Everything beyond torch's own weights-only allowlist that a fairseq checkpoint needs.
ALLOWED_GLOBALS = (argparse.Namespace,)


def allow_fairseq_checkpoints() -> None:
    add_safe_globals = getattr(torch.serialization, "add_safe_globals", None)
    if add_safe_globals is not None:  # torch < 2.4 loads with weights_only=False anyway
        add_safe_globals(list(ALLOWED_GLOBALS))


allow_fairseq_checkpoints()
