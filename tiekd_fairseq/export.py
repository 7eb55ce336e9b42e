"""``tiekd-export``: a trained model as a CTranslate2 model, for fast inference.

    tiekd-export SAVE_DIR|CHECKPOINT --data DATA --out DIR [--quantization int8] [--average-last 5]

A save dir (fairseq-train --save-dir) is first reduced to one checkpoint as ``tiekd-eval``
does it (the average of its last K checkpoints, ``SAVE_DIR/average_lastK.pt``; K=1:
``checkpoint_last.pt``); a checkpoint file is converted as it is. The conversion is
CTranslate2's own fairseq converter (``ctranslate2.converters.FairseqConverter``, the code
behind ``ct2-fairseq-converter``) with this plugin as fairseq's user dir and DATA's
dictionaries. It converts a copy of the stored model config whose task is fairseq's plain
``translation``: a student translates without its teacher or unlabeled pool, which need not
exist where the model is exported.

``ctranslate2`` is an optional dependency (``pip install -e .[deploy]``); training never
needs it. ``DIR/tiekd_export.json`` records what was converted.
"""
import argparse
import copy
import json
import logging
import os
import shutil
import sys
import tempfile
import time

PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))
QUANTIZATIONS = ("float32", "int8", "int8_float32", "int8_float16", "int8_bfloat16", "int16", "float16", "bfloat16")
METADATA = "tiekd_export.json"


class ExportError(Exception):
    """Bad input to tiekd-export (or to tiekd-eval --engine ctranslate2): one line, exit 1."""


def require_ctranslate2():
    try:
        import ctranslate2
    except ImportError:
        raise ExportError("needs the optional package ctranslate2: pip install -e '.[deploy]' "
                          "(or pip install ctranslate2)") from None
    return ctranslate2


def resolve_checkpoint(model: str, data: str, average_last: int, source_lang=None, target_lang=None):
    """(checkpoint to convert, the checkpoints it comes from) for a save dir or a file; DATA's
    dictionaries are checked against the model first."""
    from .evaluate import EvalError, average_checkpoints, last_checkpoints

    if os.path.isfile(model):
        check_data(read_checkpoint(model), data, source_lang, target_lang)
        return model, [model]
    if not os.path.isdir(model):
        raise ExportError(f"{model}: no such checkpoint file or save dir")
    if average_last < 1:
        raise ExportError(f"--average-last must be >= 1, got {average_last}")
    try:
        paths = last_checkpoints(model, average_last)
        check_data(read_checkpoint(paths[-1]), data, source_lang, target_lang)
        if len(paths) == 1:
            return paths[0], paths
        return average_checkpoints(paths, data, os.path.join(model, f"average_last{average_last}.pt")), paths
    except EvalError as e:
        raise ExportError(str(e)) from None


def check_data(state: dict, data: str, source_lang=None, target_lang=None):
    """The language pair of a checkpoint on DATA, after checking DATA's dictionaries against it."""
    src, tgt = language_pair(model_namespace(state), data, source_lang, target_lang)
    check_dictionaries(state, data, src, tgt)
    return src, tgt


def read_checkpoint(path: str) -> dict:
    """A fairseq checkpoint, loaded safely (weights_only=True plus the plugin's allowlist)."""
    import torch

    import tiekd_fairseq  # noqa: F401  (allows argparse.Namespace in safe loading)
    from .errors import describe_load_error

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - torch raises many kinds for foreign files
        raise ExportError(f"{path}: not a readable fairseq checkpoint ({describe_load_error(path, err)})") from None
    if not isinstance(state, dict) or "model" not in state:
        raise ExportError(f"{path}: not a fairseq checkpoint (no 'model' entry)")
    if state.get("args") is None and (state.get("cfg") or {}).get("model") is None:
        raise ExportError(f"{path}: not a fairseq checkpoint (no stored model config)")
    return state


def model_namespace(state: dict) -> argparse.Namespace:
    """The stored model config as the converter reads it (an argparse.Namespace), with the
    task set to plain ``translation``."""
    if state.get("args") is not None:
        args = copy.copy(state["args"])
    else:
        model_cfg = state["cfg"]["model"]
        if isinstance(model_cfg, argparse.Namespace):  # fairseq's legacy (argparse) architectures
            args = copy.copy(model_cfg)
        else:  # a dataclass-configured model: its fields plus the task's
            fields = {**dict(state["cfg"].get("task") or {}), **dict(model_cfg)}
            args = argparse.Namespace(**fields)
            args.arch = fields.get("arch") or fields.get("_name")
    args.task = "translation"
    return args


def language_pair(args: argparse.Namespace, data: str, source_lang=None, target_lang=None):
    from fairseq.data import data_utils

    src = source_lang or getattr(args, "source_lang", None)
    tgt = target_lang or getattr(args, "target_lang", None)
    if not (src and tgt):
        src, tgt = data_utils.infer_language_pair(data)
    if not (src and tgt):
        raise ExportError(f"--data {data}: cannot tell the language pair (no train/valid/test "
                          f"SRC-TGT files); give --source-lang and --target-lang")
    return src, tgt


def check_dictionaries(state: dict, data: str, src: str, tgt: str):
    """DATA's dictionaries must be the model's: same sizes as its embeddings."""
    from fairseq.data import Dictionary

    for lang, key in ((src, "encoder.embed_tokens.weight"), (tgt, "decoder.embed_tokens.weight")):
        path = os.path.join(data, f"dict.{lang}.txt")
        if not os.path.isfile(path):
            raise ExportError(f"--data {data}: no dictionary dict.{lang}.txt (give the binarized data dir "
                              f"the model was trained on)")
        size = len(Dictionary.load(path))
        if key in state["model"] and state["model"][key].size(0) != size:
            raise ExportError(f"--data {data}: dict.{lang}.txt has {size} symbols, the model's {key} has "
                              f"{state['model'][key].size(0)}; give the data dir the model was trained on")


def directory_bytes(path: str) -> int:
    return sum(os.path.getsize(os.path.join(root, f)) for root, _, files in os.walk(path) for f in files)


def unique_parameters(state_dict) -> int:
    """Parameters of a state dict, tied tensors (--share-all-embeddings) counted once."""
    seen = {}
    for key, value in state_dict.items():
        if not key.endswith("_float_tensor"):
            seen[value.untyped_storage().data_ptr()] = value.numel()
    return sum(seen.values())


def export(model: str, data: str, out: str, quantization: str = "float32", average_last: int = 5,
           source_lang=None, target_lang=None, force: bool = False) -> dict:
    """Convert ``model`` (a save dir or a checkpoint) into the CTranslate2 model ``out``;
    returns the metadata written to ``out/tiekd_export.json``."""
    import torch

    ctranslate2 = require_ctranslate2()
    if quantization not in QUANTIZATIONS:
        raise ExportError(f"--quantization must be one of {', '.join(QUANTIZATIONS)}, got {quantization}")
    if not os.path.isdir(data):
        raise ExportError(f"--data {data}: no such directory")
    if os.path.exists(out) and not force:
        raise ExportError(f"--out {out} exists; remove it or add --force")
    checkpoint, sources = resolve_checkpoint(model, data, average_last, source_lang, target_lang)
    state = read_checkpoint(checkpoint)
    args = model_namespace(state)
    src, tgt = language_pair(args, data, source_lang, target_lang)
    args.source_lang, args.target_lang = src, tgt

    from ctranslate2.converters import FairseqConverter

    parent = os.path.dirname(os.path.abspath(out))
    os.makedirs(parent, exist_ok=True)
    work = tempfile.mkdtemp(prefix=".tiekd-export-", dir=parent)
    try:
        slim = os.path.join(work, "model.pt")
        torch.save({"args": args, "model": state["model"]}, slim)
        converted = os.path.join(work, "ct2")
        start = time.time()
        try:
            FairseqConverter(slim, data, source_lang=src, target_lang=tgt, user_dir=PACKAGE_DIR).convert(
                converted, quantization=quantization, force=True)
        except ValueError as e:  # CTranslate2's "not supported" list, or a bad quantization
            raise ExportError(f"CTranslate2 cannot convert {checkpoint}: {' '.join(str(e).split())}") from None
        seconds = time.time() - start
        history = state.get("optimizer_history") or [{}]
        meta = {
            "source_checkpoint": os.path.abspath(checkpoint),
            "averaged_checkpoints": [os.path.basename(p) for p in sources] if len(sources) > 1 else [],
            "quantization": quantization,
            "ctranslate2_version": ctranslate2.__version__,
            "data": os.path.abspath(data), "source_lang": src, "target_lang": tgt,
            "arch": getattr(args, "arch", None),
            "max_source_positions": getattr(args, "max_source_positions", None),
            "max_target_positions": getattr(args, "max_target_positions", None),
            "num_updates": history[-1].get("num_updates"),
            "params": unique_parameters(state["model"]),
            "convert_seconds": seconds,
        }
        meta["model_bytes"] = directory_bytes(converted)
        with open(os.path.join(converted, METADATA), "w") as f:
            json.dump(meta, f, indent=1)
        if os.path.exists(out):
            shutil.rmtree(out)
        os.replace(converted, out)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    meta["out"] = out
    return meta


def read_metadata(ct2_dir: str) -> dict:
    path = os.path.join(ct2_dir, METADATA)
    if not os.path.isfile(os.path.join(ct2_dir, "model.bin")):
        raise ExportError(f"{ct2_dir}: not a CTranslate2 model (no model.bin)")
    if not os.path.isfile(path):
        return {}
    with open(path) as f:
        return json.load(f)


def binarized_sources(data: str, subset: str, src: str, tgt: str, src_dict):
    """The source side of DATA's binarized ``subset``, as fairseq-generate reads it (token ids
    ending in EOS), or None if there is none."""
    from fairseq.data import data_utils

    for a, b in ((src, tgt), (tgt, src)):
        dataset = data_utils.load_indexed_dataset(os.path.join(data, f"{subset}.{a}-{b}.{src}"), src_dict)
        if dataset is not None:
            return dataset
    return None


def translate(ct2_dir: str, data: str, subset: str, src: str, tgt: str, beam: int, lenpen: float,
              max_tokens: int, post_process: str, threads: int, max_len_b: int = 200,
              max_target_positions: int = 1024) -> dict:
    """Translate DATA's binarized ``subset`` with a CTranslate2 model, the way
    ``fairseq-generate --beam B --lenpen L --post-process P`` does it.

    - Same input: the binarized source ids (so the same ``<unk>``s), as dictionary symbols.
    - Same search: CTranslate2's beam search keeps 2·beam candidates per step and finalizes a
      hypothesis when EOS is among the first ``beam`` of them, as fairseq's does; the length
      penalty divides by length**lenpen, where fairseq counts the EOS in the length, so the
      EOS is returned (``return_end_token``) and counted. fairseq's bans (EOS at the first
      step, ``<pad>`` always) apply after its log-softmax; CTranslate2's bans apply before, so
      they renormalize the probabilities: only the first-step EOS ban is used
      (``min_decoding_length=1``: it adds one constant, -log(1 - p(EOS first)), to the score of
      every hypothesis of a sentence, negligible for a trained model), and ``<blank>``
      (CTranslate2's name for ``<pad>``) is left allowed, which a trained model never picks. A sentence whose best hypothesis still holds ``<blank>`` is translated
      again with ``<blank>`` suppressed (counted in ``resuppressed``).
    - Same length limit: fairseq-generate allows ``min(max_len_b, max_target_positions - 1)``
      tokens before a forced EOS (``--max-len-a 0``, its default). CTranslate2 cannot force
      the EOS: it decodes one step more and a hypothesis that reaches the limit is cut to it.
      Greedy output is then the same; in beam search the hypotheses that reach the limit may
      be ranked differently (they only occur for degenerate, looping output).
    - Same text: fairseq's own ``Dictionary.string`` with the same post-processing
      (``--post-process sentencepiece``: pieces joined, ``▁`` -> space).
    """
    import torch
    from fairseq.data import Dictionary

    ctranslate2 = require_ctranslate2()
    src_dict = Dictionary.load(os.path.join(data, f"dict.{src}.txt"))
    tgt_dict = Dictionary.load(os.path.join(data, f"dict.{tgt}.txt"))
    dataset = binarized_sources(data, subset, src, tgt, src_dict)
    if dataset is None:
        raise ExportError(f"--data {data}: no binarized '{subset}' set for {src}-{tgt}")
    sources = []
    for i in range(len(dataset)):
        ids = dataset[i].tolist()
        if ids and ids[-1] == src_dict.eos():
            ids = ids[:-1]  # CTranslate2 appends it (add_source_eos, as the converter sets it)
        sources.append([src_dict[j] for j in ids])
    max_len = min(max_len_b, max_target_positions - 1)
    start = time.time()
    device = "cuda" if ctranslate2.get_cuda_device_count() > 0 else "cpu"
    translator = ctranslate2.Translator(ct2_dir, device=device, intra_threads=threads)
    loaded = time.time()
    options = dict(max_batch_size=max_tokens, batch_type="tokens", beam_size=beam, length_penalty=lenpen,
                   max_decoding_length=max_len + 1, min_decoding_length=1, max_input_length=0,
                   return_end_token=True)
    results = translator.translate_batch(sources, **options)
    redo = [i for i, r in enumerate(results) if "<blank>" in r.hypotheses[0]]
    if redo:
        again = translator.translate_batch([sources[i] for i in redo], suppress_sequences=[["<blank>"]], **options)
        for i, r in zip(redo, again):
            results[i] = r
    translated = time.time()
    hyps, n_tokens, cut = [], 0, 0
    for result in results:
        tokens = result.hypotheses[0]
        if tokens and tokens[-1] == "</s>":
            tokens = tokens[:-1]
        else:
            tokens, cut = tokens[:max_len], cut + 1
        n_tokens += len(tokens) + 1  # as fairseq-generate counts them, EOS included
        ids = torch.tensor([tgt_dict.index(t) for t in tokens], dtype=torch.long)
        hyps.append(tgt_dict.string(ids, post_process, extra_symbols_to_ignore={tgt_dict.eos()}))
    seconds = translated - loaded
    return {"hyps": hyps, "n": len(hyps), "decode_seconds": time.time() - start,
            "generate_seconds": seconds, "load_seconds": loaded - start,
            "sentences_per_second": len(hyps) / max(seconds, 1e-9),
            "tokens_per_second": n_tokens / max(seconds, 1e-9), "hyp_tokens": n_tokens,
            "max_len": max_len, "hyps_at_max_len": cut, "resuppressed": len(redo), "device": device}


def parse_args(argv=None):
    ap = argparse.ArgumentParser(prog="tiekd-export", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("model", help="a fairseq-train --save-dir, or a checkpoint file")
    ap.add_argument("--data", required=True, help="the binarized data dir (its dict.SRC.txt and dict.TGT.txt)")
    ap.add_argument("--out", required=True, help="the CTranslate2 model directory to write")
    ap.add_argument("--quantization", default="float32", choices=QUANTIZATIONS,
                    help="weight type of the converted model (int8: ~4x smaller, faster on CPU)")
    ap.add_argument("--average-last", type=int, default=5,
                    help="for a save dir: average its last K checkpoints first (1: checkpoint_last.pt)")
    ap.add_argument("--source-lang", "-s", default=None)
    ap.add_argument("--target-lang", "-t", default=None)
    ap.add_argument("--force", action="store_true", help="replace --out if it exists")
    return ap.parse_args(argv)


def main(argv=None):
    from .quiet import install, verbose

    install()
    args = parse_args(argv)
    if not verbose():
        logging.getLogger("fairseq").setLevel(logging.WARNING)  # the converter's setup chatter
    try:
        meta = export(args.model, args.data, args.out, args.quantization, args.average_last,
                      args.source_lang, args.target_lang, args.force)
    except ExportError as e:
        sys.exit(f"tiekd-export: error: {e}")
    averaged = f" (average of {', '.join(meta['averaged_checkpoints'])})" if meta["averaged_checkpoints"] else ""
    print(f"{meta['source_checkpoint']}{averaged} -> {meta['out']}: CTranslate2 {meta['ctranslate2_version']}, "
          f"{meta['quantization']}, {meta['model_bytes'] / 2**20:.1f} MiB, {meta['params']:,} parameters")


if __name__ == "__main__":
    main()
