"""tiekd-eval on a tiny trained model, through its console script."""
import json
import shutil

import pytest
import torch

import utils


@pytest.fixture(scope="module")
def student_run(toy_data, tmp_path_factory):
    """A tiny student with update checkpoints 2, 4 and 6."""
    save = tmp_path_factory.mktemp("student")
    utils.train(toy_data, save, *utils.TINY_ARCH, "--criterion", "label_smoothed_cross_entropy",
                "--max-update", "6", "--save-interval-updates", "2", "--keep-interval-updates", "3")
    return save


def tiekd_eval(run, data, *extra, ref=None, check=True):
    ref = ref or data.parent / "raw" / "test.tgt"
    return utils.cli("tiekd-eval", run, "--data", data, "--ref", ref,
                     "--post-process", "none", "--beam", "2", *extra, check=check)


def model_state(path):
    return torch.load(path, map_location="cpu", weights_only=True)["model"]


def test_averages_the_last_two_checkpoints_and_scores_like_sacrebleu(student_run, toy_data, teacher_checkpoint):
    proc = tiekd_eval(student_run, toy_data, "--average-last", "2", "--teacher", teacher_checkpoint,
                      "--tag", '{"method": "ce"}')
    record = json.loads((student_run / "eval-test-avg2-beam2-lenpen0.6.json").read_text())
    assert record["checkpoints"] == ["checkpoint_1_4.pt", "checkpoint_1_6.pt"]
    assert record["method"] == "ce" and record["num_updates"] == 6 and record["n"] == 40

    # the averaged weights are the hand-computed mean of the two checkpoints
    a, b = (model_state(student_run / name) for name in record["checkpoints"])
    averaged = model_state(student_run / "average_last2.pt")
    assert averaged.keys() == a.keys()
    for key in a:
        if a[key].is_floating_point():
            torch.testing.assert_close(averaged[key], (a[key] + b[key]) / 2, rtol=0, atol=1e-6)
    assert any(not torch.equal(a[k], b[k]) for k in a)  # the two checkpoints really differ

    # BLEU and chrF are what the sacrebleu CLI says about the same hypothesis file
    for metric in ("bleu", "chrf"):
        cli = utils.cli("sacrebleu", toy_data.parent / "raw" / "test.tgt", "-i", record["hyp"],
                        "-m", metric, "-w", "4", "-f", "json")
        assert json.loads(cli.stdout)["score"] == pytest.approx(record[metric], abs=1e-4)
    assert record["bleu_signature"].startswith("nrefs:1|case:mixed|eff:no|tok:13a")
    assert "BLEU" in proc.stdout and record["bleu_signature"] in proc.stdout
    assert "tensorboardX" not in proc.stdout + proc.stderr  # quiet by default (tiekd_fairseq/quiet.py)
    assert record["engine"] == "fairseq" and record["model_bytes"] > 0 and record["sentences_per_second"] > 0
    assert 0 <= record["teacher_top1_agree"] <= 1 and record["tokens_per_second"] > 0
    assert record["comet"] is None  # never computed unless asked for


def test_average_last_one_is_checkpoint_last(student_run, toy_data):
    # the model as its own teacher: the two argmaxes agree at every reference position
    tiekd_eval(student_run, toy_data, "--average-last", "1", "--teacher", student_run / "checkpoint_last.pt")
    record = json.loads((student_run / "eval-test-avg1-beam2-lenpen0.6.json").read_text())
    assert record["checkpoints"] == ["checkpoint_last.pt"]
    assert record["teacher_top1_agree"] == 1.0


@pytest.mark.parametrize("case, message", [
    ("empty_dir", "no checkpoints (checkpoint_E_U.pt or checkpoint_E.pt) to average"),
    ("too_few", "--average-last 5 needs 5 checkpoints, found 3"),
    ("no_test_set", "no binarized 'test' set"),
    ("missing_ref", "no such file"),
    ("short_ref", "has 3 lines, but the 'test' set has 40 sentences"),
])
def test_bad_input_is_a_clear_error(case, message, student_run, toy_data, tmp_path):
    run, data, ref, extra = student_run, toy_data, None, ["--average-last", "2"]
    if case == "empty_dir":
        run = tmp_path / "empty"
        run.mkdir()
    elif case == "too_few":
        extra = ["--average-last", "5"]
    elif case == "no_test_set":
        data = tmp_path / "bin"
        shutil.copytree(toy_data, data, ignore=shutil.ignore_patterns("test.*"))
        ref = toy_data.parent / "raw" / "test.tgt"
    elif case == "missing_ref":
        ref = tmp_path / "nope.txt"
    elif case == "short_ref":
        (tmp_path / "short.txt").write_text("a\nb\nc\n")
        ref = tmp_path / "short.txt"
    proc = tiekd_eval(run, data, *extra, ref=ref, check=False)
    assert proc.returncode == 1
    assert message in proc.stderr and "Traceback" not in proc.stderr


def test_bleu_tokenizer_follows_the_target_language(tmp_path):
    """13a by default, sacreBLEU's own choice for Chinese (and Japanese, Korean), --tokenize wins."""
    from argparse import Namespace

    from tiekd_fairseq.evaluate import bleu_metric

    def signature(**kw):
        args = Namespace(**{"target_lang": None, "tokenize": None, "data": str(tmp_path), **kw})
        bleu = bleu_metric(args)
        bleu.corpus_score(["a b"], [["a b"]])
        return str(bleu.get_signature())

    assert "tok:13a" in signature(target_lang="de")
    assert "tok:zh" in signature(target_lang="zh")
    assert "tok:intl" in signature(target_lang="zh", tokenize="intl")


def test_note_when_the_average_ends_before_the_last_update(tmp_path, capsys):
    from tiekd_fairseq.evaluate import warn_if_behind_last

    for name, updates in (("checkpoint_1_100.pt", 100), ("checkpoint_1_200.pt", 200), ("checkpoint_last.pt", 230)):
        torch.save({"optimizer_history": [{"num_updates": updates}]}, tmp_path / name)
    warn_if_behind_last(str(tmp_path), [str(tmp_path / "checkpoint_1_100.pt"), str(tmp_path / "checkpoint_1_200.pt")])
    assert "the averaged checkpoints end at update 200, checkpoint_last.pt is at update 230" in capsys.readouterr().err
    torch.save({"optimizer_history": [{"num_updates": 200}]}, tmp_path / "checkpoint_last.pt")
    warn_if_behind_last(str(tmp_path), [str(tmp_path / "checkpoint_1_200.pt")])
    assert capsys.readouterr().err == ""
