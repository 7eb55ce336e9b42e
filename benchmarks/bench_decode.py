#!/usr/bin/env python3
"""Teacher pseudo-target decoding throughput vs ``fairseq-generate`` on the same sentences.

Both translate the source side of DATA_BIN's SUBSET with the same teacher, beam, length
limits and --max-tokens batches, on the same threads. fairseq-generate's figure is its own
"sentences/s" (its timer covers generation only); ours times ``pseudo_targets.decode``
(batching, collation and generation). The script also checks that both produce the same
translations.

usage: python benchmarks/bench_decode.py TEACHER.pt DATA_BIN [--subset test] [--beam 4]
"""
import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PLUGIN = os.path.join(REPO, "tiekd_fairseq")


def ours(args, save_dir):
    import numpy as np
    import torch
    from fairseq import options, tasks
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf

    sys.path.insert(0, REPO)
    from tiekd_fairseq import pseudo_targets

    parsed = options.parse_args_and_arch(options.get_training_parser(), [
        args.data, "--user-dir", PLUGIN, "--task", "translation_tie_kd", "--teacher-path", args.teacher,
        "--arch", "tie_kd_transformer_micro", "--cpu", "--save-dir", save_dir])
    task = tasks.setup_task(convert_namespace_to_omegaconf(parsed).task)
    task.load_dataset(args.subset)
    sources = task.dataset(args.subset).src
    teacher = task.teacher.place(torch.device("cpu"), torch.float32)
    options_ = pseudo_targets.DecodeOptions(beam=args.beam, lenpen=args.lenpen, max_len_a=args.max_len_a,
                                            max_len_b=args.max_len_b, max_tokens=args.max_tokens)
    start = time.perf_counter()
    (ids, lengths, tokens), skipped = pseudo_targets.decode(task, teacher.models, sources, range(len(sources)),
                                                            options_, torch.device("cpu"), 1, "bench")
    seconds = time.perf_counter() - start
    targets = np.split(tokens, np.cumsum(lengths)[:-1])
    return ({int(i): task.target_dictionary.string(torch.from_numpy(t)) for i, t in zip(ids, targets)},
            len(ids) / seconds)


def generate(args):
    out = subprocess.run(
        [os.path.join(os.path.dirname(sys.executable), "fairseq-generate"), args.data, "--user-dir", PLUGIN,
         "--path", args.teacher, "--gen-subset", args.subset, "--cpu", "--beam", str(args.beam),
         "--lenpen", str(args.lenpen), "--max-len-a", str(args.max_len_a), "--max-len-b", str(args.max_len_b),
         "--max-tokens", str(args.max_tokens), "--required-batch-size-multiple", "1"],
        capture_output=True, text=True, check=True)
    hyps = {int(m.group(1)): m.group(2) for m in re.finditer(r"^H-(\d+)\t\S+\t(.*)$", out.stdout, re.M)}
    rate = float(re.search(r"Translated .* \(([0-9.]+) sentences/s", out.stdout + out.stderr).group(1))
    return hyps, rate


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("teacher")
    ap.add_argument("data")
    ap.add_argument("--subset", default="test")
    ap.add_argument("--beam", type=int, default=4)
    ap.add_argument("--lenpen", type=float, default=1.0)
    ap.add_argument("--max-len-a", type=float, default=1.2)
    ap.add_argument("--max-len-b", type=int, default=10)
    ap.add_argument("--max-tokens", type=int, default=4096)
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args()

    their_hyps, their_rate = generate(args)
    with tempfile.TemporaryDirectory() as tmp:
        our_hyps, our_rate = ours(args, tmp)
    same = sum(our_hyps.get(i) == h for i, h in their_hyps.items())
    result = {"sentences": len(their_hyps), "fairseq_generate_sent_per_s": round(their_rate, 2),
              "ours_sent_per_s": round(our_rate, 2), "ratio": round(our_rate / their_rate, 3),
              "identical_translations": same}
    print(f"{'':28s}{'sentences/s':>12s}\n{'fairseq-generate':28s}{their_rate:12.2f}\n"
          f"{'tiekd pseudo_targets.decode':28s}{our_rate:12.2f}\nratio (ours / generate): "
          f"{result['ratio']:.3f}; identical translations: {same}/{len(their_hyps)}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
