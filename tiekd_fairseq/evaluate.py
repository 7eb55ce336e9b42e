"""``tiekd-eval``: average a run's last K checkpoints, translate a test set with
fairseq-generate, and score the detokenized output with sacreBLEU (BLEU and chrF, with
their signatures; COMET where ``unbabel-comet`` is installed and asked for).

    tiekd-eval CHECKPOINT_DIR --data DATA --ref test.de [--average-last 5] [--beam 4 --lenpen 0.6]
               [--engine ctranslate2 --quantization int8]

Writes, next to the checkpoints: ``average_last{K}.pt`` (the averaged model),
``eval-{subset}-avg{K}-beam{B}-lenpen{L}.hyp`` (hypotheses in test-set order) and a ``.json``
record with the scores, signatures, checkpoints averaged, decode time, sentences/s, tokens/s
and model size on disk.

``--engine ctranslate2`` converts the same (averaged) checkpoint with ``tiekd-export`` to
``CHECKPOINT_DIR/ct2-{Q}-avg{K}/`` and translates with CTranslate2 instead (same beam, length
penalty, maximum length and post-processing as fairseq-generate; see ``export.translate``);
its files are ``ct2-{Q}-{subset}-avg{K}-beam{B}-lenpen{L}.{hyp,json}``, scored the same way.
CHECKPOINT_DIR may also be a model written by ``tiekd-export`` (it holds ``model.bin``).

The average is an equal-weight mean of the checkpoints' weights, computed by
``torch.optim.swa_utils.AveragedModel``; the checkpoints are chosen as fairseq's
``scripts/average_checkpoints.py`` chooses them (the K highest update numbers among
``checkpoint_E_U.pt``, else the K highest epochs among ``checkpoint_E.pt``). That script is
not part of fairseq's installed package, so it cannot be called.
"""
import argparse
import json
import os
import re
import subprocess
import sys
import time
from typing import List

import torch

from .export import ExportError

PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))


class EvalError(Exception):
    """Bad input to tiekd-eval: printed as one line, exit status 1."""


def last_checkpoints(checkpoint_dir: str, k: int) -> List[str]:
    """The K last checkpoints of a run, oldest first; K=1 is ``checkpoint_last.pt``."""
    if not os.path.isdir(checkpoint_dir):
        raise EvalError(f"{checkpoint_dir}: no such directory")
    names = os.listdir(checkpoint_dir)
    if k == 1 and "checkpoint_last.pt" in names:
        return [os.path.join(checkpoint_dir, "checkpoint_last.pt")]
    for pattern in (r"checkpoint_\d+_(\d+)\.pt", r"checkpoint(\d+)\.pt"):  # by update, else by epoch
        found = sorted((int(m.group(1)), name) for name in names if (m := re.fullmatch(pattern, name)))
        if found:
            break
    if not found:
        raise EvalError(f"{checkpoint_dir}: no checkpoints (checkpoint_E_U.pt or checkpoint_E.pt) to average"
                        + ("; only checkpoint_last.pt, use --average-last 1" if "checkpoint_last.pt" in names else ""))
    if len(found) < k:
        raise EvalError(f"{checkpoint_dir}: --average-last {k} needs {k} checkpoints, found {len(found)} "
                        f"({', '.join(n for _, n in found)}); train with --keep-interval-updates {k} "
                        f"or --keep-last-epochs {k}, or average fewer")
    return [os.path.join(checkpoint_dir, name) for _, name in found[-k:]]


def bleu_metric(args):
    """sacreBLEU's BLEU with --tokenize, else its default for the target language."""
    import sacrebleu
    from fairseq.data.data_utils import infer_language_pair

    target = args.target_lang or infer_language_pair(args.data)[1] or ""
    try:
        return sacrebleu.metrics.BLEU(tokenize=args.tokenize, trg_lang=target)
    except Exception as err:  # an unknown tokenizer, or one whose extra package is missing
        raise EvalError(f"--tokenize {args.tokenize or '(default for ' + target + ')'}: {err}")


def _num_updates(path: str) -> int:
    state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)  # no full read
    return state["optimizer_history"][-1]["num_updates"]


def warn_if_behind_last(checkpoint_dir: str, paths: List[str]) -> None:
    """Say so when the averaged checkpoints end before checkpoint_last.pt (fairseq saves no
    interval checkpoint at the update that ends training or an epoch)."""
    last = os.path.join(checkpoint_dir, "checkpoint_last.pt")
    if not os.path.isfile(last) or os.path.samefile(last, paths[-1]):
        return
    newest, final = _num_updates(paths[-1]), _num_updates(last)
    if newest < final:
        print(f"tiekd-eval: note: the averaged checkpoints end at update {newest:,}, checkpoint_last.pt is "
              f"at update {final:,}; save at the last update too (--save-interval-updates dividing "
              f"--max-update) to average the end of training", file=sys.stderr)


def load_models(paths: List[str], data: str, task=None):
    """fairseq models and task for checkpoints of this plugin's (or fairseq's) translation runs."""
    import tiekd_fairseq  # noqa: F401  (registers the task, criterion and architectures)
    from fairseq import checkpoint_utils

    # Evaluation needs neither the unlabeled pool nor seq-KD targets.
    overrides = {"data": data, "unlabeled_data": "", "unlabeled_per_epoch": None, "unlabeled_ratio": None,
                 "unlabeled_online": False, "unlabeled_online_max_tokens": None, "seq_kd": False}
    models, cfg, task = checkpoint_utils.load_model_ensemble_and_task(paths, arg_overrides=overrides, task=task)
    for model in models:
        model.eval()
    return models, cfg, task


def average_checkpoints(paths: List[str], data: str, output: str) -> str:
    """Write the equal-weight average of ``paths`` as a fairseq checkpoint to ``output``."""
    from fairseq import checkpoint_utils
    from torch.optim.swa_utils import AveragedModel

    (model,), cfg, _ = load_models(paths[-1:], data)
    averaged = AveragedModel(model, use_buffers=True)  # a running mean: equal weights
    for path in paths:
        state = checkpoint_utils.load_checkpoint_to_cpu(path)
        model.load_state_dict(state["model"], strict=True, model_cfg=cfg.model)
        averaged.update_parameters(model)
    state = torch.load(paths[-1], map_location="cpu", weights_only=True)  # as stored: plain containers
    state["model"] = averaged.module.state_dict()
    state["last_optimizer_state"] = None  # not needed to translate; saves space
    state.setdefault("extra_state", {})["averaged_checkpoints"] = [os.path.basename(p) for p in paths]
    tmp = output + ".tmp"
    torch.save(state, tmp)
    os.replace(tmp, output)
    return output


TRANSLATED = re.compile(r"Translated ([\d,]+) sentences \(([\d,]+) tokens\) in ([\d.]+)s "
                        r"\(([\d.]+) sentences/s, ([\d.]+) tokens/s\)")


def translate(checkpoint: str, args) -> dict:
    """Run fairseq-generate; hypotheses (detokenized, in test-set order) and its speed."""
    command = [sys.executable, "-m", "fairseq_cli.generate", args.data, "--user-dir", PACKAGE_DIR,
               "--task", "translation", "--path", checkpoint, "--gen-subset", args.gen_subset,
               "--beam", str(args.beam), "--lenpen", str(args.lenpen), "--max-tokens", str(args.max_tokens),
               "--required-batch-size-multiple", "1", "--post-process", args.post_process,
               "--max-len-b", str(args.max_len_b), "--num-workers", "0"]
    for option in ("source_lang", "target_lang"):
        if getattr(args, option):
            command += [f"--{option.replace('_', '-')}", getattr(args, option)]
    if not torch.cuda.is_available():
        command.append("--cpu")
    start = time.time()
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    result = subprocess.run(command, capture_output=True, text=True, env=env)
    seconds = time.time() - start
    if result.returncode != 0:
        tail = "\n".join(result.stderr.strip().splitlines()[-5:])
        raise EvalError(f"fairseq-generate failed (exit {result.returncode}):\n{tail}")
    hyps = {}
    for line in result.stdout.splitlines():
        if line.startswith("H-"):
            index, _score, text = line[2:].split("\t", 2)
            hyps[int(index)] = text
    speed = TRANSLATED.search(result.stderr + result.stdout)
    record = {"decode_seconds": seconds, "generate_command": " ".join(["fairseq-generate"] + command[3:])}
    if speed:
        record.update(generate_seconds=float(speed.group(3)), sentences_per_second=float(speed.group(4)),
                      tokens_per_second=float(speed.group(5)), hyp_tokens=int(speed.group(2).replace(",", "")))
    return {"hyps": [hyps[i] for i in sorted(hyps)], "n": len(hyps), **record}


def teacher_top1_agreement(student, teacher, task, subset: str, max_tokens: int) -> float:
    """Share of reference target positions where student and teacher (both fed the
    reference prefix) predict the same top-1 token."""
    task.load_dataset(subset)
    dataset = task.dataset(subset)
    batches = task.get_batch_iterator(dataset, max_tokens=max_tokens, ignore_invalid_inputs=False,
                                      num_workers=0).next_epoch_itr(shuffle=False)
    agree = total = 0
    with torch.no_grad():
        for sample in batches:
            mask = sample["target"].ne(task.target_dictionary.pad())
            s = student(**sample["net_input"])[0].argmax(-1)
            t = teacher(**sample["net_input"])[0].argmax(-1)
            agree += (s.eq(t) & mask).sum().item()
            total += mask.sum().item()
    return agree / max(total, 1)


def read_lines(path: str) -> List[str]:
    """Lines ended by "\n" only, as examples/data/sentencepiece_prep.py numbers the test set's
    sentences (a stray "\r" does not split a reference; CRLF endings lose their "\r")."""
    with open(path, encoding="utf-8", newline="\n") as f:
        return [line.rstrip("\n").rstrip("\r") for line in f]


def comet_score(model_name: str, sources, hyps, refs) -> float:
    try:
        from comet import download_model, load_from_checkpoint
    except ImportError:
        raise EvalError("--comet-model needs the optional package unbabel-comet: pip install unbabel-comet")
    model = load_from_checkpoint(download_model(model_name))
    data = [{"src": s, "mt": h, "ref": r} for s, h, r in zip(sources, hyps, refs)]
    return float(model.predict(data, batch_size=32, gpus=1 if torch.cuda.is_available() else 0).system_score)


def parse_args(argv=None):
    ap = argparse.ArgumentParser(prog="tiekd-eval", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("checkpoint_dir", help="a fairseq-train --save-dir (with --engine ctranslate2, also a "
                    "model written by tiekd-export)")
    ap.add_argument("--data", required=True, help="the binarized data dir (fairseq-preprocess --destdir)")
    ap.add_argument("--ref", required=True, help="plain-text references of --gen-subset, one per line")
    ap.add_argument("--gen-subset", default="test")
    ap.add_argument("--source-lang", "-s", default=None)
    ap.add_argument("--target-lang", "-t", default=None)
    ap.add_argument("--average-last", type=int, default=5,
                    help="average the last K checkpoints (1: checkpoint_last.pt as it is)")
    ap.add_argument("--beam", type=int, default=4)
    ap.add_argument("--lenpen", type=float, default=0.6)
    ap.add_argument("--max-tokens", type=int, default=4096, help="source tokens per batch")
    ap.add_argument("--max-len-b", type=int, default=200,
                    help="at most this many target tokens (fairseq-generate --max-len-b, with --max-len-a 0)")
    ap.add_argument("--engine", choices=("fairseq", "ctranslate2"), default="fairseq",
                    help="translate with fairseq-generate, or convert with tiekd-export and translate with "
                    "CTranslate2 (pip install -e '.[deploy]')")
    ap.add_argument("--quantization", default="float32",
                    help="with --engine ctranslate2: the converted model's weight type (float32, int8, ...)")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads(),
                    help="CPU threads of either engine (OMP_NUM_THREADS of fairseq-generate, CTranslate2's "
                    "intra_threads)")
    ap.add_argument("--tokenize", default=None,
                    help="sacreBLEU's BLEU tokenizer (default: sacreBLEU's choice for the target language: "
                    "zh for Chinese, ja-mecab for Japanese, ko-mecab for Korean, else 13a)")
    ap.add_argument("--post-process", default="sentencepiece",
                    help="fairseq-generate --post-process that undoes the subwords ('none' keeps them)")
    ap.add_argument("--teacher", help="teacher checkpoint: also report teacher_top1_agree on the subset")
    ap.add_argument("--comet-model", help="also score with COMET (needs unbabel-comet), e.g. Unbabel/wmt22-comet-da")
    ap.add_argument("--src-text", help="plain-text sources of --gen-subset (for COMET)")
    ap.add_argument("--tag", default="{}", help="JSON object of extra fields for the record")
    ap.add_argument("--output", help="the JSON record (default: CHECKPOINT_DIR/eval-...json)")
    return ap.parse_args(argv)


def model_bytes(state_dict) -> int:
    """Bytes of the model's weights as torch.save writes them (no optimizer state, tied
    tensors once): the size on disk of the model a fairseq deployment needs."""
    import io

    buffer = io.BytesIO()
    torch.save(state_dict, buffer)
    return buffer.tell()


def evaluate(args) -> dict:
    import sacrebleu

    from . import export

    if args.average_last < 1:
        raise EvalError(f"--average-last must be >= 1, got {args.average_last}")
    if not os.path.isfile(args.ref):
        raise EvalError(f"--ref {args.ref}: no such file")
    if not os.path.isdir(args.data):
        raise EvalError(f"--data {args.data}: no such directory")
    subset_files = [f for f in os.listdir(args.data) if f.startswith(args.gen_subset + ".") and f.endswith(".bin")]
    if not subset_files:
        raise EvalError(f"--data {args.data}: no binarized '{args.gen_subset}' set ({args.gen_subset}.SRC-TGT.*.bin); "
                        f"binarize it with fairseq-preprocess --{args.gen_subset}pref")
    if args.comet_model and not args.src_text:
        raise EvalError("--comet-model needs --src-text (COMET scores source, hypothesis and reference)")
    try:
        tag = json.loads(args.tag)
    except json.JSONDecodeError as e:
        raise EvalError(f"--tag must be a JSON object: {e}")
    refs = read_lines(args.ref)
    ct2 = args.engine == "ctranslate2"
    if ct2:
        export.require_ctranslate2()  # before any averaging: a missing package is the first thing to say
    exported = ct2 and os.path.isfile(os.path.join(args.checkpoint_dir, "model.bin"))
    if exported:  # a model written by tiekd-export
        meta = export.read_metadata(args.checkpoint_dir)
        ct2_dir, out_dir = args.checkpoint_dir, args.checkpoint_dir
        checkpoint = meta.get("source_checkpoint")
        paths = meta.get("averaged_checkpoints") or ([checkpoint] if checkpoint else [])
        quantization = meta.get("quantization", "?")
        stem = f"ct2-{quantization}-{args.gen_subset}-beam{args.beam}-lenpen{args.lenpen:g}"
    else:
        if os.path.isfile(os.path.join(args.checkpoint_dir, "model.bin")):
            raise EvalError(f"{args.checkpoint_dir} is a CTranslate2 model: add --engine ctranslate2")
        paths = last_checkpoints(args.checkpoint_dir, args.average_last)
        warn_if_behind_last(args.checkpoint_dir, paths)
        export.check_data(export.read_checkpoint(paths[-1]), args.data, args.source_lang, args.target_lang)
        out_dir = args.checkpoint_dir
        stem = f"eval-{args.gen_subset}-avg{args.average_last}-beam{args.beam}-lenpen{args.lenpen:g}"
        if len(paths) > 1:
            checkpoint = average_checkpoints(paths, args.data,
                                             os.path.join(args.checkpoint_dir, f"average_last{args.average_last}.pt"))
        else:
            checkpoint = paths[0]
        if ct2:
            quantization = args.quantization
            stem = f"ct2-{quantization}-" + stem[len("eval-"):]
            ct2_dir = os.path.join(args.checkpoint_dir, f"ct2-{quantization}-avg{args.average_last}")
            meta = export.export(checkpoint, args.data, ct2_dir, quantization, source_lang=args.source_lang,
                                 target_lang=args.target_lang, force=True)
    if ct2:
        src, tgt = args.source_lang or meta.get("source_lang"), args.target_lang or meta.get("target_lang")
        if not (src and tgt):
            from fairseq.data.data_utils import infer_language_pair
            src, tgt = infer_language_pair(args.data)
        out = export.translate(ct2_dir, args.data, args.gen_subset, src, tgt,
                               args.beam, args.lenpen, args.max_tokens, args.post_process, args.threads,
                               args.max_len_b, meta.get("max_target_positions") or 1024)
        out.update(engine="ctranslate2", quantization=quantization, ct2_model=os.path.abspath(ct2_dir),
                   ctranslate2_version=meta.get("ctranslate2_version"),
                   model_bytes=export.directory_bytes(ct2_dir))
    else:
        out = translate(checkpoint, args)
        out.update(engine="fairseq", quantization=None)
    hyps = out.pop("hyps")
    if len(hyps) != len(refs):
        raise EvalError(f"--ref {args.ref} has {len(refs)} lines, but the '{args.gen_subset}' set has "
                        f"{len(hyps)} sentences")
    hyp_path = os.path.join(out_dir, stem + ".hyp")
    with open(hyp_path, "w", encoding="utf-8") as f:
        f.writelines(h + "\n" for h in hyps)
    bleu, chrf = bleu_metric(args), sacrebleu.metrics.CHRF()
    b, c = bleu.corpus_score(hyps, [refs]), chrf.corpus_score(hyps, [refs])

    record = {
        **tag,
        "checkpoint_dir": os.path.abspath(args.checkpoint_dir),
        "checkpoints": [os.path.basename(p) for p in paths],
        "evaluated_checkpoint": os.path.basename(checkpoint) if checkpoint else None,
    }
    student = task = None
    if checkpoint and os.path.isfile(checkpoint):
        (student,), cfg, task = load_models([checkpoint], args.data)
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)
        record.update(
            num_updates=state["optimizer_history"][-1]["num_updates"],
            arch=cfg.model.arch if hasattr(cfg.model, "arch") else cfg.model._name,
            criterion=cfg.criterion._name if cfg.criterion is not None else None,
            params=sum(p.numel() for p in student.parameters()),
            checkpoint_bytes=os.path.getsize(checkpoint),
        )
        if not ct2:
            out["model_bytes"] = model_bytes(state["model"])
    else:  # an exported model whose checkpoint is gone: what its export recorded
        record.update(num_updates=meta.get("num_updates"), arch=meta.get("arch"), criterion=None,
                      params=meta.get("params"))
    record.update({
        "gen_subset": args.gen_subset, "ref": os.path.abspath(args.ref), "hyp": os.path.abspath(hyp_path),
        "beam": args.beam, "lenpen": args.lenpen, "max_len_b": args.max_len_b, "threads": args.threads,
        "bleu": b.score, "chrf": c.score, "bleu_detail": str(b),
        "bleu_signature": str(bleu.get_signature()), "chrf_signature": str(chrf.get_signature()),
        "sacrebleu_version": sacrebleu.__version__,
        **out,
        "comet": None,
    })
    if args.teacher:
        if student is None:
            raise EvalError("--teacher needs the fairseq checkpoint the model was exported from")
        (teacher,), _, _ = load_models([args.teacher], args.data, task=task)
        record["teacher_top1_agree"] = teacher_top1_agreement(student, teacher, task, args.gen_subset, args.max_tokens)
        record["teacher"] = os.path.abspath(args.teacher)
    if args.comet_model:
        record["comet"] = comet_score(args.comet_model, read_lines(args.src_text), hyps, refs)
        record["comet_model"] = args.comet_model
    output = args.output or os.path.join(out_dir, stem + ".json")
    with open(output, "w") as f:
        json.dump(record, f, indent=1)
    record["output"] = output
    return record


def main(argv=None):
    import logging

    from .quiet import verbose

    args = parse_args(argv)
    if not verbose():  # fairseq's INFO chatter while loading (TIEKD_VERBOSE=1 shows it)
        logging.getLogger("fairseq").setLevel(logging.WARNING)
    try:
        r = evaluate(args)
    except (EvalError, ExportError) as e:
        sys.exit(f"tiekd-eval: error: {e}")
    engine = r["engine"] + (f" {r['quantization']}" if r["quantization"] else "")
    print(f"{r['checkpoint_dir']}: averaged {len(r['checkpoints'])} checkpoints "
          f"({', '.join(r['checkpoints'])}), {r['n']} sentences in {r['decode_seconds']:.1f}s with {engine} "
          f"({r.get('sentences_per_second', float('nan')):.1f} sentences/s; model "
          f"{r.get('model_bytes', 0) / 2**20:.1f} MiB)")
    print(f"BLEU {r['bleu']:.2f}  {r['bleu_signature']}")
    print(f"chrF {r['chrf']:.2f}  {r['chrf_signature']}")
    if "teacher_top1_agree" in r:
        print(f"teacher_top1_agree {r['teacher_top1_agree']:.4f}")
    if r["comet"] is not None:
        print(f"COMET {r['comet']:.4f}  ({r['comet_model']})")
    print(f"record: {r['output']}")


if __name__ == "__main__":
    main()
