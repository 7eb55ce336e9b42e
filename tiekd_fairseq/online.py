"""Online pseudo-targets: at every update the frozen teacher translates a few pool sentences,
and they train in that update: a second sub-batch of the same update (see
``TranslationTieKDTask.train_step``), so DDP, ``--update-freq``, fp16 loss scaling and the
criterion work unchanged."""

import time

import numpy as np
import torch
from fairseq import utils
from fairseq.data.language_pair_dataset import collate

from . import pseudo_targets
from .unlabeled_pool import OnlineWalk


class OnlinePseudoPairs:
    def __init__(self, task, pool, tokens_per_slot: int, slots_per_update: int, seed: int,
                 options: pseudo_targets.DecodeOptions):
        self.task, self.pool, self.seed, self.options = task, pool, seed, options
        self.walk = OnlineWalk(pool.sizes, tokens_per_slot, slots_per_update, seed)
        self._generator = None

    def generator(self, models):
        if self._generator is None:
            self._generator = pseudo_targets.build_generator(self.task, models, self.options)
        return self._generator

    def translate(self, update: int, slot: int, models, device):
        """(pool indices, the teacher's translations) for slot ``slot`` of update ``update``;
        sources longer than the models accept are skipped."""
        drawn = self.walk.draw(update, slot)
        drawn = drawn[self.pool.sizes[drawn] <= pseudo_targets.max_positions(self.task, models)[0]]
        if len(drawn) == 0:
            return drawn, []
        task = self.task
        items = [{"id": i, "source": self.pool[int(k)]} for i, k in enumerate(drawn)]
        sample = collate(items, task.src_dict.pad(), task.src_dict.eos(),
                         left_pad_source=task.cfg.left_pad_source, left_pad_target=task.cfg.left_pad_target)
        seed = (self.seed * 1_000_003 + update) * 1009 + slot  # sampling: new draws every update
        with utils.set_torch_seed(seed), pseudo_targets.BeamableAttention(models, self.options.beam):
            best = pseudo_targets.translate_batch(task, self.generator(models), models, sample, device)
        targets = [None] * len(drawn)
        for row, t in zip(sample["id"].tolist(), best):  # collate sorted the rows by length
            targets[row] = t
        return drawn, targets

    def sample(self, update: int, slot: int, models, device):
        """This slot's pseudo pairs as a training sample (None if every drawn source was too
        long), and (sentences, target tokens)."""
        drawn, targets = self.translate(update, slot, models, device)
        if not targets:
            return None, 0, 0
        task = self.task
        items = [{"id": j, "source": self.pool[int(k)], "target": t} for j, (k, t) in enumerate(zip(drawn, targets))]
        sample = collate(items, task.tgt_dict.pad(), task.tgt_dict.eos(), left_pad_source=task.cfg.left_pad_source,
                         left_pad_target=task.cfg.left_pad_target, input_feeding=True,
                         pad_to_multiple=task.cfg.required_seq_len_multiple)
        if device.type == "cuda":
            sample = utils.move_to_cuda(sample, device=device)
        return sample, len(targets), int(sum(len(t) for t in targets))
