import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))

import tiekd_fairseq  # noqa: E402,F401  (allows fairseq checkpoints in torch.load)
import utils  # noqa: E402

if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):  # pytest-xdist workers share the cores
    import torch

    torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"])))


@pytest.fixture(scope="session")
def toy_data(tmp_path_factory):
    """A binarized toy corpus (fairseq-preprocess)."""
    root = tmp_path_factory.mktemp("toy")
    utils.write_toy_corpus(root / "raw")
    utils.preprocess(root / "raw", root / "bin")
    return root / "bin"


@pytest.fixture(scope="session")
def teacher_checkpoint(toy_data, tmp_path_factory):
    """A teacher trained with plain label-smoothed CE (2+2 layers, 128 dim)."""
    save = tmp_path_factory.mktemp("teacher")
    utils.train(toy_data, save, "--arch", "tie_kd_transformer_tiny",
                "--criterion", "label_smoothed_cross_entropy", "--label-smoothing", "0.1",
                "--max-epoch", "25")
    return save / "checkpoint_best.pt"


@pytest.fixture(scope="session")
def second_teacher_checkpoint(teacher_checkpoint, tmp_path_factory):
    """Another teacher on the same dictionaries: the first one's weights, perturbed (seeded), so
    that an ensemble of the two differs from either."""
    import torch

    state = torch.load(teacher_checkpoint, map_location="cpu", weights_only=False)
    g = torch.Generator().manual_seed(7)
    for name, w in state["model"].items():
        if w.is_floating_point() and w.dim() > 1:
            w.add_(torch.randn(w.shape, generator=g) * w.std() * 0.5)
    path = tmp_path_factory.mktemp("teacher2") / "checkpoint_best.pt"
    torch.save(state, path)
    return path
