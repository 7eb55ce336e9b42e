"""Quiet by default: the plugin hides the Hydra deprecation warnings of fairseq's config code and
fairseq's "Please install tensorboardX" line where it can; TIEKD_VERBOSE=1 shows them again."""
import importlib.util
import os
import subprocess

import pytest

import utils

HYDRA_NOISE = ("is no longer experimental", "The version_base parameter is not specified",
               "Usage of deprecated keyword in package header", "is validated against ConfigStore schema",
               "The strict flag in the compose API is deprecated")


def run(args, verbose):
    env = dict(utils.CHILD_ENV, TIEKD_VERBOSE="1") if verbose else {
        k: v for k, v in utils.CHILD_ENV.items() if k != "TIEKD_VERBOSE"}
    return subprocess.run(args, capture_output=True, text=True, env=env, timeout=300, cwd=utils.REPO)


@pytest.mark.parametrize("verbose", [False, True])
def test_fairseq_train_without_hydra_deprecation_warnings(toy_data, tmp_path, verbose):
    # a run that stops at its first plugin check: the warnings come earlier, from the config
    proc = run(utils.train_command(toy_data, tmp_path / "save", *utils.TINY_ARCH, "--task", "translation_tie_kd",
                                   "--criterion", "tie_kd"), verbose)
    assert proc.stderr.strip().splitlines()[-1].startswith("tiekd: error: --teacher-path is required")
    shown = [noise for noise in HYDRA_NOISE if noise in proc.stderr]
    if verbose:
        assert shown == list(HYDRA_NOISE), proc.stderr
    else:
        assert shown == [] and "Warning" not in proc.stderr, proc.stderr


@pytest.mark.skipif(importlib.util.find_spec("tensorboardX") is not None,
                    reason="with tensorboardX installed fairseq never prints the line")
@pytest.mark.parametrize("verbose", [False, True])
def test_plugin_command_without_tensorboardx_hint(verbose):
    """``python -m tiekd_fairseq`` (like tiekd-eval and tiekd-export) imports the plugin before
    fairseq, so the line fairseq logs while importing its tasks is filtered. fairseq-train and
    fairseq-generate log it before they read --user-dir: there it stays (see tiekd_fairseq/quiet.py)."""
    proc = run([os.path.join(utils.BIN, "python"), "-m", "tiekd_fairseq"], verbose)
    assert proc.returncode == 0 and "--kd-rate" in proc.stdout
    assert ("Please install tensorboardX" in proc.stdout + proc.stderr) == verbose


def test_option_help_shows_defaults_cleanly():
    """``python -m tiekd_fairseq``: a default where it says something, none where it is empty,
    unset, a flag's False, or already stated by the help text."""
    proc = run([os.path.join(utils.BIN, "python"), "-m", "tiekd_fairseq"], verbose=False)
    text = " ".join(proc.stdout.split())  # argparse wraps lines
    for empty in ("(default: )", "(default: None)", "(default: False)", "each pair once (default"):
        assert empty not in text
    for shown in ("in (0, 1] (default: 0.5)", "(default: 4096)", "(default: full)",
                  "pool sentences the teacher translates per refresh (default: the whole pool)"):
        assert shown in text
