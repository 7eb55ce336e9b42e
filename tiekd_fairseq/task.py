"""``translation_tie_kd``: fairseq's ``translation`` task plus a frozen teacher, and the
teacher's pseudo-targets for an unlabeled source pool (refreshed every few epochs) or, for
the sequence-level KD baseline, in place of the labeled targets."""

import contextlib
import logging
import os
import time
import weakref
from dataclasses import dataclass, field
from typing import List, Optional

import numpy as np
import torch
from fairseq import utils
from fairseq.data import ConcatDataset, LanguagePairDataset
from fairseq.logging import metrics
from fairseq.tasks import register_task
from fairseq.tasks.translation import TranslationConfig, TranslationTask
from omegaconf import II

from . import pseudo_targets
from .errors import ConfigError
from .online import OnlinePseudoPairs
from .pseudo_targets import DecodeOptions, PseudoPairs, RowSubset
from .teacher import TeacherEnsemble, load_teachers
from .unlabeled_pool import load_pool, pseudo_count, resample, shard_indices

logger = logging.getLogger(__name__)


@dataclass
class TranslationTieKDConfig(TranslationConfig):
    teacher_path: str = field(
        default="",
        metadata={
            "help": "teacher checkpoint (fairseq .pt); several separated by ':' form an "
            "ensemble whose probabilities are averaged. Each is rebuilt from its own stored "
            "config and must share the data's dictionaries"
        },
    )
    teacher_fp32: bool = field(
        default=False,
        metadata={"help": "keep the teacher in fp32 when the student trains with --fp16/--bf16"},
    )
    unlabeled_data: str = field(
        default="",
        metadata={"help": "unlabeled source pool: the directory (or dataset prefix) written by "
                  "fairseq-preprocess --only-source --srcdict DATA/dict.SRC.txt. The teacher "
                  "translates a fresh shard of it every --pseudo-refresh-epochs epochs and the "
                  "pseudo pairs join the labeled ones"},
    )
    unlabeled_per_epoch: Optional[int] = field(
        default=None,
        metadata={"help": "pool sentences the teacher translates per refresh (default: the whole "
                  "pool); successive shards walk through the pool in a seeded random order"},
    )
    unlabeled_ratio: Optional[float] = field(
        default=None,
        metadata={"help": "share of pseudo pairs among an epoch's examples, in [0, 1]: pseudo "
                  "pairs are resampled to ratio/(1-ratio) times the labeled count (1: pseudo pairs "
                  "only, 0: pool unused). Default: each pair once"},
    )
    pseudo_refresh_epochs: Optional[int] = field(
        default=None, metadata={"help": "decode a new pool shard every K epochs (default: 1)"}
    )
    unlabeled_online: bool = field(
        default=False,
        metadata={"help": "online pseudo-targets: every update draws --unlabeled-online-max-tokens "
                  "source tokens from the pool, the teacher translates them then (greedy unless "
                  "--pseudo-beam/--pseudo-sampling) and they train in that update (a second sub-batch); no cache"},
    )
    unlabeled_online_max_tokens: Optional[int] = field(
        default=None,
        metadata={"help": "pool source tokens drawn per update, per rank and micro-batch "
                  "(default: a quarter of --max-tokens)"},
    )
    seq_kd: bool = field(
        default=False,
        metadata={"help": "sequence-level KD (Kim & Rush 2016): replace the labeled targets by "
                  "the teacher's translations of their sources, decoded once and cached"},
    )
    pseudo_beam: Optional[int] = field(
        default=None, metadata={"help": "teacher's beam size for pseudo-targets (default: 4; 1 with --unlabeled-online)"})
    pseudo_lenpen: float = field(default=1.0, metadata={"help": "length penalty (fairseq-generate --lenpen)"})
    pseudo_max_len_a: float = field(default=1.2, metadata={"help": "pseudo-targets have at most a*src_len+b tokens"})
    pseudo_max_len_b: int = field(default=10, metadata={"help": "see --pseudo-max-len-a"})
    pseudo_sampling: bool = field(
        default=False, metadata={"help": "sample pseudo-targets (best of --pseudo-beam samples) for diverse targets"}
    )
    pseudo_sampling_topk: int = field(default=-1, metadata={"help": "sample from the k most likely tokens (-1: all)"})
    pseudo_sampling_topp: float = field(default=-1.0, metadata={"help": "nucleus sampling mass (-1: off)"})
    pseudo_max_tokens: int = field(default=4096, metadata={"help": "source tokens per decoding batch"})
    pseudo_cache_dir: str = field(
        default="",
        metadata={"help": "where decoded pseudo-targets are cached (default: SAVE_DIR/pseudo_targets). "
                  "Files are keyed by teacher, data, seed and decoding options, so students of "
                  "one teacher can share a directory and decode each set once"},
    )
    # Read from the rest of fairseq's config (no command-line option of their own).
    seed: int = II("common.seed")
    max_tokens: Optional[int] = II("dataset.max_tokens")
    update_freq: List[int] = II("optimization.update_freq")
    ddp_backend: str = II("distributed_training.ddp_backend")
    save_dir: str = II("checkpoint.save_dir")
    max_epoch: int = II("optimization.max_epoch")


def _check_options(cfg: TranslationTieKDConfig):
    def bad(option, value, rule):
        raise ConfigError(f"--{option} must be {rule}, got {value}")

    if cfg.unlabeled_per_epoch is not None and cfg.unlabeled_per_epoch <= 0:
        bad("unlabeled-per-epoch", cfg.unlabeled_per_epoch, "a positive number of sentences")
    if cfg.unlabeled_ratio is not None and not 0 <= cfg.unlabeled_ratio <= 1:
        bad("unlabeled-ratio", cfg.unlabeled_ratio, "in [0, 1]")
    if cfg.pseudo_refresh_epochs is not None and cfg.pseudo_refresh_epochs < 1:
        bad("pseudo-refresh-epochs", cfg.pseudo_refresh_epochs, ">= 1")
    if cfg.pseudo_beam is not None and cfg.pseudo_beam < 1:
        bad("pseudo-beam", cfg.pseudo_beam, ">= 1")
    if cfg.unlabeled_online_max_tokens is not None and cfg.unlabeled_online_max_tokens < 1:
        bad("unlabeled-online-max-tokens", cfg.unlabeled_online_max_tokens, ">= 1")
    if cfg.pseudo_max_tokens < 1:
        bad("pseudo-max-tokens", cfg.pseudo_max_tokens, ">= 1")
    if not cfg.unlabeled_data:
        for option, value in (("unlabeled-per-epoch", cfg.unlabeled_per_epoch),
                              ("unlabeled-ratio", cfg.unlabeled_ratio),
                              ("unlabeled-online", cfg.unlabeled_online or None)):
            if value is not None:
                raise ConfigError(f"--{option} needs an unlabeled pool: add --unlabeled-data POOL_DIR")
    if cfg.unlabeled_online:
        for option, value in (("unlabeled-per-epoch", cfg.unlabeled_per_epoch),
                              ("unlabeled-ratio", cfg.unlabeled_ratio),
                              ("pseudo-refresh-epochs", cfg.pseudo_refresh_epochs)):
            if value is not None:
                raise ConfigError(f"--{option} is an option of the per-epoch pool; with --unlabeled-online "
                                  f"each update draws --unlabeled-online-max-tokens source tokens instead")
        if cfg.unlabeled_online_max_tokens is None and not cfg.max_tokens:
            raise ConfigError("--unlabeled-online needs --unlabeled-online-max-tokens when there is no "
                              "--max-tokens to take a quarter of")
    elif cfg.unlabeled_online_max_tokens is not None:
        raise ConfigError("--unlabeled-online-max-tokens needs --unlabeled-online")


@register_task("translation_tie_kd", dataclass=TranslationTieKDConfig)
class TranslationTieKDTask(TranslationTask):
    """Translation with a frozen teacher, used by the ``tie_kd`` criterion.

    The teacher is loaded when a criterion is built (training, validation), not for
    generation, and lives on the task: it is never part of the student's checkpoint.
    """

    cfg: TranslationTieKDConfig

    def __init__(self, cfg, src_dict, tgt_dict):
        super().__init__(cfg, src_dict, tgt_dict)
        _check_options(cfg)
        self._teacher = None
        self._student = None  # weak reference: where and in which dtype the teacher decodes
        self.pool = load_pool(cfg.unlabeled_data, src_dict, cfg.source_lang) if cfg.unlabeled_data else None
        self._pool_sha256 = None
        self._shard_pairs = (None, None)  # (shard number, pairs) of the last decoded shard
        self._online_pairs = None
        self._online_step = (None, 0)  # (update, micro-batches seen): a slot for each micro-batch

    @property
    def teacher(self) -> TeacherEnsemble:
        if self._teacher is None:
            self._teacher = TeacherEnsemble(load_teachers(self.cfg.teacher_path, self), self.cfg.teacher_fp32)
        return self._teacher

    def build_criterion(self, cfg, **kwargs):
        if self.cfg.ddp_backend == "fully_sharded" and getattr(cfg, "kd_iters", 1) > 1:
            raise ConfigError("--ddp-backend fully_sharded with --kd-iters > 1 is not supported: passes "
                              "after the first call the student's decoder outside FSDP's forward, where "
                              "its parameters are sharded; use --ddp-backend pytorch_ddp (or --kd-iters 1)")
        self.teacher  # load and check it now: bad teachers fail before training starts
        return super().build_criterion(cfg, **kwargs)

    def max_positions(self):
        """The student's limits, and, once the teacher is loaded (training), the teacher's:
        fairseq then filters training and validation batches by what both models accept."""
        limits = super().max_positions()
        if self._teacher is None:
            return limits
        return utils.resolve_max_positions(limits, *(m.max_positions() for m in self._teacher.models))

    def build_model(self, cfg, from_checkpoint=False):
        model = super().build_model(cfg, from_checkpoint)
        self._student = weakref.ref(model)
        return model

    def has_sharded_data(self, split):
        # Makes fairseq-train call load_dataset every epoch, so each epoch gets its shard.
        return self._epoch_pool is not None or super().has_sharded_data(split)

    @property
    def _epoch_pool(self):
        """The pool when it is decoded per epoch (not online)."""
        return None if self.cfg.unlabeled_online else self.pool

    # -- training data -------------------------------------------------------------------
    def load_dataset(self, split, epoch=1, combine=False, **kwargs):
        super().load_dataset(split, epoch=epoch, combine=combine, **kwargs)
        if split != self.cfg.train_subset or not (self._epoch_pool is not None or self.cfg.seq_kd):
            return
        if 0 < self.cfg.max_epoch < epoch:
            return  # fairseq loads epoch max_epoch+1 before it stops, and never trains on it
        labeled = self.datasets[split]
        if self.cfg.seq_kd:  # decoded per shard of sharded data (--data a:b:c), each its own cache
            pairs = self._seq_kd_pairs(labeled.src)
            labeled = self._with_targets(labeled.src, pairs, np.arange(len(pairs)))
            logger.info(f"epoch {epoch:03d}: training on {len(labeled):,} pairs whose targets are the "
                        f"teacher's translations (--seq-kd, {os.path.basename(pairs.prefix)})")
        if self._epoch_pool is None or self.cfg.unlabeled_ratio == 0:
            self.datasets[split] = labeled
            return
        shard = (epoch - 1) // (self.cfg.pseudo_refresh_epochs or 1)
        pairs = self._pool_pairs(shard)
        n_labeled, n_pseudo = pseudo_count(len(labeled), len(pairs), self.cfg.unlabeled_ratio)
        rows = resample(len(pairs), n_pseudo, self.cfg.seed, epoch)  # rows are in source order
        pseudo = self._with_targets(self.pool, pairs, rows)
        self.datasets[split] = pseudo if n_labeled == 0 else self._concat(labeled, pseudo)
        fingerprint = pseudo_targets.selection_sha256(pairs, rows)
        world = pseudo_targets.check_same_on_all_ranks(fingerprint, f"epoch {epoch} pseudo pairs")
        logger.info(f"epoch {epoch:03d}: training on {n_labeled:,} labeled + {len(rows):,} pseudo "
                    f"pairs (pool shard {shard}, sha256 {fingerprint[:16]}"
                    f"{f', the same on all {world} ranks' if world > 1 else ''})")

    # -- online pseudo-targets ------------------------------------------------------------
    def train_step(self, sample, model, criterion, optimizer, update_num, ignore_grad=False):
        if not self.cfg.unlabeled_online:
            return super().train_step(sample, model, criterion, optimizer, update_num, ignore_grad)
        start = time.perf_counter()
        rank, world, _ = pseudo_targets._world()
        if self._online_step[0] != update_num:  # a new update: its first micro-batch
            self._online_step = (update_num, 0)
        # Modulo the slots an update has: when fairseq retries an update (fp16 overflow, OOM)
        # with the same update_num, the retry draws from that update's slots again, never
        # from the next update's.
        micro = self._online_step[1] % max(self.cfg.update_freq)
        self._online_step = (update_num, self._online_step[1] + 1)
        param = next(model.parameters())
        teacher = self.teacher.place(param.device, param.dtype)
        pseudo, sentences, tokens = self._online().sample(update_num, micro * world + rank, teacher.models,
                                                          param.device)
        decoded = time.perf_counter()
        # The pseudo pairs train as a second sub-batch of this update rather than collated into
        # the labeled batch: their lengths are not bucketed with its, and one collated batch is
        # padded to its longest sentence (measured: 3.6x the step time of labeled-only tie_kd,
        # of which decoding was 11%). Gradients add up as over --update-freq micro-batches; DDP
        # synchronises once, after the second backward.
        no_sync = model.no_sync() if pseudo is not None and hasattr(model, "no_sync") else contextlib.nullcontext()
        with no_sync:
            loss, sample_size, logging_output = super().train_step(
                sample, model, criterion, optimizer, update_num, ignore_grad)
        if pseudo is not None:
            pseudo_loss, pseudo_size, pseudo_log = super().train_step(
                pseudo, model, criterion, optimizer, update_num, ignore_grad)
            loss, sample_size = loss + pseudo_loss, sample_size + pseudo_size
            logging_output = {k: logging_output.get(k, 0) + pseudo_log.get(k, 0)
                              for k in {**logging_output, **pseudo_log}}
        logging_output.update(pseudo_sentences=sentences, pseudo_tokens=tokens,
                              pseudo_decode_seconds=decoded - start,
                              step_seconds=time.perf_counter() - start)
        return loss, sample_size, logging_output

    def _online(self) -> OnlinePseudoPairs:
        if self._online_pairs is None:
            _, world, _ = pseudo_targets._world()
            tokens = self.cfg.unlabeled_online_max_tokens or max(1, self.cfg.max_tokens // 4)
            # slots for the largest --update-freq of any epoch (a list gives one per epoch), so
            # that no two updates share a slot whatever the epoch's
            self._online_pairs = OnlinePseudoPairs(self, self.pool, tokens, world * max(self.cfg.update_freq),
                                                   self.cfg.seed, self._decode_options())
            logger.info(f"online pseudo-targets: {tokens:,} pool source tokens per rank and micro-batch "
                        f"at every update, beam {self._decode_options().beam}"
                        f"{', sampled' if self.cfg.pseudo_sampling else ''}")
        return self._online_pairs

    def reduce_metrics(self, logging_outputs, criterion):
        super().reduce_metrics(logging_outputs, criterion)
        if any("pseudo_sentences" in log for log in logging_outputs):
            def total(key):
                return sum(float(log.get(key, 0)) for log in logging_outputs)
            metrics.log_scalar("pseudo_bsz", total("pseudo_sentences"), priority=191, round=1)
            metrics.log_scalar("pseudo_wpb", total("pseudo_tokens"), priority=181, round=1)
            metrics.log_scalar("decode_share", total("pseudo_decode_seconds") / max(total("step_seconds"), 1e-9),
                               total("step_seconds"), round=3)

    def _decode_options(self) -> DecodeOptions:
        c = self.cfg
        beam = c.pseudo_beam or (1 if c.unlabeled_online else 4)
        return DecodeOptions(beam=beam, lenpen=c.pseudo_lenpen, max_len_a=c.pseudo_max_len_a,
                             max_len_b=c.pseudo_max_len_b, sampling=c.pseudo_sampling,
                             sampling_topk=c.pseudo_sampling_topk, sampling_topp=c.pseudo_sampling_topp,
                             max_tokens=c.pseudo_max_tokens)

    def _cached_decode(self, kind: str, sources, indices, meta: dict, seed: int) -> PseudoPairs:
        options = self._decode_options()
        student = self._student() if self._student is not None else None
        param = next(student.parameters()) if student is not None else torch.zeros(0)
        teacher = self.teacher.place(param.device, param.dtype)
        meta = {
            "kind": kind, **meta, "sampling_seed": seed if options.sampling else None,
            "teacher_sha256": [pseudo_targets.file_sha256(p) for p in self.cfg.teacher_path.split(os.pathsep) if p],
            "decoding": pseudo_targets.options_meta(options),
            # what decides which sources are skipped and how long targets may be, and the
            # numerics of the teacher's search
            "max_positions": list(pseudo_targets.max_positions(self, teacher.models)),
            "teacher_dtype": str(next(teacher.models[0].parameters()).dtype), "device": param.device.type,
        }
        cache_dir = self.cfg.pseudo_cache_dir or os.path.join(self.cfg.save_dir, "pseudo_targets")
        prefix = os.path.join(cache_dir, f"{kind}-{pseudo_targets.cache_key(meta)}")
        return pseudo_targets.cached_decode(
            prefix, meta, lambda: pseudo_targets.decode(
                self, teacher.models, sources, indices, options, param.device, seed, kind),
            kind, len(self.tgt_dict))

    def _pool_pairs(self, shard: int):
        if self._shard_pairs[0] != shard:
            per_shard = min(self.cfg.unlabeled_per_epoch or len(self.pool), len(self.pool))
            indices = shard_indices(len(self.pool), per_shard, shard, self.cfg.seed)
            if self._pool_sha256 is None:  # hashed once, when the first shard is needed
                self._pool_sha256 = pseudo_targets.dataset_sha256(self.pool)
            meta = {"shard": shard, "per_shard": per_shard, "pool_sha256": self._pool_sha256,
                    "walk_seed": self.cfg.seed}
            pairs = self._cached_decode(f"pool-shard{shard:04d}", self.pool, indices, meta,
                                        self.cfg.seed + shard)
            self._shard_pairs = (shard, pairs)
        return self._shard_pairs[1]

    def _seq_kd_pairs(self, sources) -> PseudoPairs:
        """The teacher's translations of these labeled sources (the cache key hashes them)."""
        meta = {"split": self.cfg.train_subset, "sources_sha256": pseudo_targets.dataset_sha256(sources)}
        return self._cached_decode("seq-kd", sources, np.arange(len(sources)), meta, self.cfg.seed)

    def _with_targets(self, sources, pairs: PseudoPairs, rows) -> LanguagePairDataset:
        """Pairs (source of row j, target of row j) for j in rows, memory-mapped views."""
        rows = np.asarray(rows, dtype=np.int64)
        return self._pair_dataset(RowSubset(sources, pairs.source_index[rows]), RowSubset(pairs.targets, rows))

    def _concat(self, a: LanguagePairDataset, b: LanguagePairDataset) -> LanguagePairDataset:
        return self._pair_dataset(ConcatDataset([a.src, b.src]), ConcatDataset([a.tgt, b.tgt]))

    def _pair_dataset(self, src, tgt) -> LanguagePairDataset:
        return LanguagePairDataset(
            src, src.sizes, self.src_dict, tgt, tgt.sizes, self.tgt_dict,
            left_pad_source=self.cfg.left_pad_source, left_pad_target=self.cfg.left_pad_target,
            num_buckets=self.cfg.num_batch_buckets, shuffle=True,
            pad_to_multiple=self.cfg.required_seq_len_multiple,
        )

