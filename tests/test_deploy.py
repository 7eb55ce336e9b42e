"""Deploying a student with CTranslate2 (tiekd-export, tiekd-eval --engine ctranslate2), through
the real console scripts: the converted float32 model translates exactly like fairseq-generate."""
import json
import os
import shutil
import subprocess

import pytest

import utils


@pytest.fixture(scope="module")
def student(toy_data, teacher_checkpoint, tmp_path_factory):
    """A partly trained word-KD student (task translation_tie_kd, criterion tie_kd with one
    pass): its translations vary in length and beam search changes many of them. Update
    checkpoints 50 and 100 are averaged."""
    save = tmp_path_factory.mktemp("deploy_student")
    utils.train(toy_data, save, *utils.TINY_ARCH, "--task", "translation_tie_kd", "--teacher-path", teacher_checkpoint,
                "--criterion", "tie_kd", "--kd-iters", "1", "--max-update", "100", "--save-interval-updates", "50",
                "--keep-interval-updates", "2")
    return save


def tiekd_eval(run, data, *extra, check=True, env=None):
    cmd = [os.path.join(utils.BIN, "tiekd-eval"), str(run), "--data", str(data),
           "--ref", str(data.parent / "raw" / "test.tgt"), *map(str, extra)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env or utils.CHILD_ENV, timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"tiekd-eval failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def read(path):
    return path.read_text(encoding="utf-8").splitlines()


def test_float32_translations_equal_fairseq_generate(student, toy_data):
    """Greedy and beam 4 (lenpen 0.6), token for token, for the average of the last 2 checkpoints."""
    outputs = {}
    for beam, post_process in ((1, "none"), (4, "sentencepiece")):
        common = ("--average-last", "2", "--beam", beam, "--lenpen", "0.6", "--post-process", post_process)
        tiekd_eval(student, toy_data, *common)
        tiekd_eval(student, toy_data, *common, "--engine", "ctranslate2", "--quantization", "float32")
        stem = f"test-avg2-beam{beam}-lenpen0.6"
        fairseq = json.loads((student / f"eval-{stem}.json").read_text())
        ct2 = json.loads((student / f"ct2-float32-{stem}.json").read_text())
        # the same averaged checkpoint, the same translations, so the same scores
        assert ct2["checkpoints"] == fairseq["checkpoints"] == ["checkpoint_7_50.pt", "checkpoint_13_100.pt"]
        assert ct2["evaluated_checkpoint"] == "average_last2.pt" and ct2["num_updates"] == 100
        hyps = read(student / f"eval-{stem}.hyp")
        assert len(hyps) == 40 and read(student / f"ct2-float32-{stem}.hyp") == hyps
        assert ct2["bleu"] == fairseq["bleu"] and ct2["chrf"] == fairseq["chrf"]
        assert ct2["hyps_at_max_len"] == 0 and ct2["resuppressed"] == 0
        if post_process == "none":  # real output, not empty or trivial
            assert all(h and set(h.split()) <= set(utils.TGT_WORDS.values()) for h in hyps)
        else:  # --post-process sentencepiece joined the pieces (the toy words hold no "▁")
            assert all(h and " " not in h for h in hyps)
        for record in (fairseq, ct2):
            assert record["sentences_per_second"] > 0 and record["model_bytes"] > 0
        assert (fairseq["engine"], ct2["engine"], ct2["quantization"]) == ("fairseq", "ctranslate2", "float32")
        assert ct2["model_bytes"] == sum(f.stat().st_size for f in (student / "ct2-float32-avg2").iterdir())
        outputs[beam] = ["".join(h.split()) for h in hyps]
    # and the comparison means something: beam search changes several translations of this student
    assert sum(a != b for a, b in zip(outputs[1], outputs[4])) >= 2


def test_int8_export_and_evaluate_the_exported_model(student, toy_data, tmp_path):
    out = tmp_path / "int8"
    proc = utils.cli("tiekd-export", student, "--data", toy_data, "--out", out, "--quantization", "int8",
                     "--average-last", "2")
    assert "average of checkpoint_7_50.pt, checkpoint_13_100.pt" in proc.stdout and "int8" in proc.stdout
    meta = json.loads((out / "tiekd_export.json").read_text())
    assert meta["quantization"] == "int8" and meta["num_updates"] == 100 and meta["params"] > 0
    assert {"model.bin", "config.json", "source_vocabulary.json", "target_vocabulary.json"} <= set(os.listdir(out))
    # a float32 export of the same (averaged) checkpoint file is larger: int8 linear weights take a
    # byte each instead of four (this toy model's size is mostly CTranslate2's position table)
    f32 = tmp_path / "f32"
    utils.cli("tiekd-export", student / "average_last2.pt", "--data", toy_data, "--out", f32)
    assert (out / "model.bin").stat().st_size < 0.7 * (f32 / "model.bin").stat().st_size

    tiekd_eval(out, toy_data, "--engine", "ctranslate2", "--post-process", "none")
    record = json.loads((out / "ct2-int8-test-beam4-lenpen0.6.json").read_text())
    assert record["engine"] == "ctranslate2" and record["quantization"] == "int8" and record["n"] == 40
    assert record["num_updates"] == 100 and 0 <= record["bleu"] <= 100 and record["sentences_per_second"] > 0
    assert all(read(out / "ct2-int8-test-beam4-lenpen0.6.hyp"))


@pytest.mark.parametrize("case, message", [
    ("text_file", "not a readable fairseq checkpoint (not a file written by torch.save: a text file starting "
                  "'this is not a checkpoint', not a zip archive or a pickle)"),
    ("other_dictionary", "dict.tgt.txt has"),
    ("too_few_checkpoints", "--average-last 5 needs 5 checkpoints, found 2"),
])
def test_export_bad_input_is_one_line(case, message, student, toy_data, tmp_path):
    model, data, out, extra = student, toy_data, tmp_path / "out", ["--average-last", "2"]
    if case == "text_file":
        model = tmp_path / "notes.pt"
        model.write_text("this is not a checkpoint\n")
    elif case == "other_dictionary":
        data = tmp_path / "data"
        shutil.copytree(toy_data, data)
        with open(data / "dict.tgt.txt", "a") as f:
            f.write("extra_word 1\n")
    elif case == "too_few_checkpoints":
        extra = ["--average-last", "5"]
    proc = utils.cli("tiekd-export", model, "--data", data, "--out", out, *extra, check=False)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1].startswith("tiekd-export: error: ")
    assert message in proc.stderr and "Traceback" not in proc.stderr and "weights_only" not in proc.stderr


def test_without_ctranslate2_the_error_says_how_to_install_it(student, toy_data, tmp_path):
    """ctranslate2 is optional: hidden here by a package of that name that fails to import."""
    fake = tmp_path / "hide" / "ctranslate2"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError('No module named ctranslate2')\n")
    env = dict(utils.CHILD_ENV, PYTHONPATH=str(tmp_path / "hide"))
    proc = tiekd_eval(student, toy_data, "--average-last", "2", "--engine", "ctranslate2", check=False, env=env)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == (
        "tiekd-eval: error: needs the optional package ctranslate2: pip install -e '.[deploy]' "
        "(or pip install ctranslate2)")
