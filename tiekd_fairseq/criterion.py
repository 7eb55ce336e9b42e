"""``tie_kd``: label-smoothed CE + word-level KD + hierarchical ranking loss, N passes.

    L = (1 - a) * CE_ls + a / N * sum_{i<N} sum_t [KL_i,t + L_top1_i,t + L_topk_i,t]

Pass 0 feeds the gold prefix; pass i > 0 feeds ``[bos] + argmax(student pass i-1)[:-1]``.
The student's and teachers' encoders run once. Vanilla word-level KD is
``--kd-iters 1 --kd-no-top1 --kd-no-topk``; docs/options.md lists the paper's ablations.

With ``--kd-fused-output auto`` (the default) and decoders whose output layer is a plain
linear projection, the decoders return features and ``fused_output`` makes the logits chunk
by chunk inside the loss (the gold pass's label-smoothed CE included): no ``B x T x V``
tensor of either model exists. Other output layers take the unfused path.
"""

import logging
import math
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import List, Optional, Tuple

import torch
from fairseq import utils
from fairseq.criterions import FairseqCriterion, register_criterion
from fairseq.criterions.label_smoothed_cross_entropy import label_smoothed_nll_loss
from fairseq.dataclass import ChoiceEnum, FairseqDataclass
from fairseq.logging import metrics
from fairseq.models import BaseFairseqModel, FairseqEncoderDecoderModel
from fairseq.models.transformer import TransformerDecoderBase, TransformerModelBase
from omegaconf import II
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.checkpoint import checkpoint

from .errors import ConfigError
from .fused_output import fused_tie_kd_loss
from .losses import TEACHER_TARGETS, next_decoder_input, tie_kd_loss
from .teacher import TeacherEnsemble

logger = logging.getLogger(__name__)


@dataclass
class TieKDCriterionConfig(FairseqDataclass):
    kd_rate: float = field(
        default=0.5, metadata={"help": "KD weight a in (1-a)*CE + a*KD, in (0, 1]"}
    )
    kd_iters: int = field(
        default=3,
        metadata={"help": "N distillation passes: 1 gold-prefix pass + N-1 passes on the "
                  "student's own greedy predictions"},
    )
    kd_topk: int = field(
        default=5, metadata={"help": "k of the ranking terms (teacher's and student's top-k)"}
    )
    label_smoothing: float = field(
        default=0.1, metadata={"help": "label smoothing of the CE term"}
    )
    kd_no_kl: bool = field(
        default=False, metadata={"help": "drop the KL term (ranking terms only)"}
    )
    kd_no_top1: bool = field(
        default=False, metadata={"help": "drop the top-1 ranking term L_top1"}
    )
    kd_no_topk: bool = field(
        default=False, metadata={"help": "drop the top-k ranking term L_topk"}
    )
    kd_teacher_target: ChoiceEnum(TEACHER_TARGETS) = field(
        default="full",
        metadata={"help": "what the KL term distils: full teacher distribution; top1 (one-hot "
                  "teacher top-1); topk (teacher renormalised over its top-k); no_top1 "
                  "(teacher without its top-1, renormalised)"},
    )
    kd_chunk_tokens: int = field(
        default=0,
        metadata={"help": "target positions per KD chunk (bounds memory; 0 = automatic); "
                  "results do not depend on it"},
    )
    kd_fused_output: ChoiceEnum(["auto", "off"]) = field(
        default="auto",
        metadata={"help": "auto: when the student's and teachers' output layers are bias-free "
                  "linear projections (fairseq's TransformerDecoder, tied or not), the loss "
                  "makes their logits chunk by chunk from the decoder features, so no "
                  "B x T x V tensor is held (same results); other output layers use the "
                  "unfused path, with a log line saying why. off: always the unfused path"},
    )
    kd_checkpoint_passes: bool = field(
        default=False,
        metadata={"help": "recompute the student decoder's activations of passes 2..N during "
                  "backward (non-reentrant activation checkpointing) instead of holding N "
                  "decoder graphs: less memory, one more decoder forward per extra pass, "
                  "same results"},
    )
    sentence_avg: bool = II("optimization.sentence_avg")


@contextmanager
def captured_encoder_out(model):
    """Keep the encoder output of a full ``model(...)`` call, so later passes reuse it.

    The gold pass goes through ``model(...)`` (the DistributedDataParallel wrapper's forward,
    which gradient synchronisation relies on); later passes call the decoder alone.
    """
    outputs = []
    handle = model.encoder.register_forward_hook(lambda _m, _in, out: outputs.append(out))
    try:
        yield outputs
    finally:
        handle.remove()


def unwrapped(model: nn.Module) -> nn.Module:
    """The model inside fairseq's distributed wrappers (ModuleProxyWrapper, DDP)."""
    while not isinstance(model, BaseFairseqModel) and isinstance(getattr(model, "module", None), nn.Module):
        model = model.module
    return model


def plain_projection(decoder: nn.Module) -> Tuple[Optional[torch.Tensor], str]:
    """The weight of the decoder's output layer if that layer is a bias-free linear projection
    (logits = features @ weight.T) that the fused loss can stand in for; else None and why."""
    name = type(decoder).__name__
    if not isinstance(decoder, TransformerDecoderBase):
        return None, f"{name} is not a fairseq TransformerDecoder"
    for method in ("output_layer", "get_normalized_probs", "get_normalized_probs_scriptable"):
        if getattr(type(decoder), method) is not getattr(TransformerDecoderBase, method):
            return None, f"{name} overrides {method}"
    projection = getattr(decoder, "output_projection", None)  # absent with an adaptive softmax
    if type(projection) is not nn.Linear or projection.bias is not None:
        return None, f"the output projection of {name} is not a bias-free nn.Linear"
    return projection.weight, ""


def _wrapper_reason(model: nn.Module) -> str:
    """Why a distributed wrapper forbids the fused loss, which reads the output projection's
    weight outside the wrapper's forward: DDP with find_unused_parameters marks that weight
    unused (its gradient then arrives twice), and FSDP has resharded it."""
    for m in model.modules():
        if isinstance(m, DistributedDataParallel) and m.find_unused_parameters:
            return "DDP runs with --find-unused-parameters"
        if type(m).__name__ == "FullyShardedDataParallel":
            return "--ddp-backend fully_sharded shards the output projection"
    return ""


def _model_reason(model: nn.Module) -> str:
    """Why the model's gold pass cannot return features that the fused CE stands in for."""
    cls = type(model)
    if not isinstance(model, FairseqEncoderDecoderModel):
        return f"{cls.__name__} is not a fairseq encoder-decoder model"
    if cls.get_normalized_probs not in (TransformerModelBase.get_normalized_probs,
                                        BaseFairseqModel.get_normalized_probs):
        return f"{cls.__name__} overrides get_normalized_probs"
    return ""


@register_criterion("tie_kd", dataclass=TieKDCriterionConfig)
class TieKDCriterion(FairseqCriterion):
    def __init__(self, task, sentence_avg, kd_rate, kd_iters, kd_topk, label_smoothing,
                 kd_no_kl, kd_no_top1, kd_no_topk, kd_teacher_target, kd_chunk_tokens,
                 kd_fused_output="auto", kd_checkpoint_passes=False):
        super().__init__(task)
        vocab = len(task.target_dictionary)
        if kd_rate == 0.0:
            raise ConfigError("--kd-rate 0 leaves label-smoothed CE alone and would load the teacher for "
                              "nothing: use --criterion label_smoothed_cross_entropy (with --task "
                              "translation_tie_kd if the teacher makes pseudo-targets)")
        if not 0.0 < kd_rate <= 1.0:
            raise ConfigError(f"--kd-rate must be in (0, 1], got {kd_rate}")
        if kd_iters < 1:
            raise ConfigError(f"--kd-iters must be >= 1, got {kd_iters}")
        if not 1 <= kd_topk <= vocab:
            raise ConfigError(f"--kd-topk must be in [1, target vocabulary size {vocab}], got {kd_topk}")
        if not 0.0 <= label_smoothing < 1.0:
            raise ConfigError(f"--label-smoothing must be in [0, 1), got {label_smoothing}")
        if kd_no_kl and kd_no_top1 and kd_no_topk:
            raise ConfigError("--kd-no-kl, --kd-no-top1 and --kd-no-topk leave no KD term; "
                             "use --criterion label_smoothed_cross_entropy")
        if not isinstance(getattr(task, "teacher", None), TeacherEnsemble):
            raise ConfigError(
                f"--criterion tie_kd needs a teacher, and task {type(task).__name__} has none: "
                "use --task translation_tie_kd --teacher-path TEACHER.pt"
            )
        self.sentence_avg = sentence_avg
        self.kd_rate = kd_rate
        self.unk_idx = task.target_dictionary.unk()
        self.kd_iters = kd_iters
        self.eps = label_smoothing
        self.kd_options = dict(
            k=kd_topk, kl=not kd_no_kl, top1=not kd_no_top1, topk=not kd_no_topk,
            teacher_target=str(kd_teacher_target), chunk_tokens=kd_chunk_tokens,
        )
        self.fused_output = str(kd_fused_output) == "auto"
        self.checkpoint_passes = kd_checkpoint_passes
        self._unfused_reasons = set()  # logged once each
        self._model_checked = False

    def forward(self, model, sample, reduce=True):
        self.check_model_once(model)
        net_input = sample["net_input"]
        target = sample["target"]
        mask = target.ne(self.padding_idx)
        ntokens = sample["ntokens"]
        sample_size = target.size(0) if self.sentence_avg else ntokens
        logging_output = {"ntokens": ntokens, "nsentences": target.size(0), "sample_size": sample_size}
        projections = self.fused_projections(model)
        with captured_encoder_out(model) as encoder_outs:
            if projections is None:
                net_output = model(**net_input)
            else:  # the gold pass still goes through model(...), the DDP wrapper's forward
                net_output = model(**net_input, features_only=True)
        if projections is None:
            lprobs = model.get_normalized_probs(net_output, log_probs=True)
            ce_loss, nll_loss = label_smoothed_nll_loss(
                lprobs.view(-1, lprobs.size(-1)), target.view(-1), self.eps, ignore_index=self.padding_idx
            )
            objective = (1.0 - self.kd_rate) * ce_loss + self.distill(
                model, net_input, net_output[0], encoder_outs[0], mask, logging_output)
        else:
            ce = dict(ce_target=target, label_smoothing=self.eps, ce_weight=1.0 - self.kd_rate)
            objective = self.distill(model, net_input, net_output[0], encoder_outs[0], mask, logging_output,
                                     projections, ce)
            ce_loss, nll_loss = logging_output["ce_loss"], logging_output["nll_loss"]
        logging_output.update(ce_loss=ce_loss.data, nll_loss=nll_loss.data)
        # Training optimises the full objective; validation reports label-smoothed CE as
        # `loss`, comparable with label_smoothed_cross_entropy runs (kd_loss logged apart).
        loss = objective if model.training else ce_loss
        logging_output["loss"] = loss.data
        return loss, sample_size, logging_output

    def fused_projections(self, model) -> Optional[Tuple[torch.Tensor, List[torch.Tensor]]]:
        """(student projection weight, teachers' projection weights) when the fused loss
        applies, else None (the reason logged once)."""
        if not self.fused_output:
            return None
        student, reason = plain_projection(unwrapped(model).decoder)
        reason = _wrapper_reason(model) or _model_reason(unwrapped(model)) or (f"student: {reason}" if reason else "")
        teachers = []
        for i, teacher in enumerate(self.task.teacher.models):
            weight, why = plain_projection(teacher.decoder)
            reason = reason or (f"teacher {i + 1}: {why}" if why else "")
            teachers.append(weight)
        if reason:
            if reason not in self._unfused_reasons:
                self._unfused_reasons.add(reason)
                logger.info(f"--kd-fused-output auto: unfused output layer and loss, because {reason}")
            return None
        return student, teachers

    def check_model_once(self, model):
        """Refuse, before the first step, students the loss cannot train:
        - an adaptive-softmax decoder returns no logits over the vocabulary to distil;
        - fairseq's --checkpoint-activations with N >= 2 under torch's DDP: its reentrant
          recomputation runs one backward per pass through each checkpointed layer, and DDP
          fails on the second ("Expected to mark a variable ready only once")."""
        if self._model_checked:
            return
        self._model_checked = True
        if getattr(unwrapped(model).decoder, "adaptive_softmax", None) is not None:
            raise ConfigError("--criterion tie_kd needs the student's logits over the whole vocabulary; "
                              "an adaptive-softmax student has none: drop --adaptive-softmax-cutoff")
        if self.kd_iters < 2:
            return
        modules = list(model.modules())
        if any(isinstance(m, DistributedDataParallel) for m in modules) and \
                any(hasattr(m, "precheckpoint_forward") for m in modules):
            raise ConfigError(
                f"--checkpoint-activations with --kd-iters {self.kd_iters} fails under --ddp-backend "
                "pytorch_ddp (each pass re-runs fairseq's reentrant checkpointing): drop it and use "
                "--kd-checkpoint-passes, or use --ddp-backend legacy_ddp"
            )

    def student_decoder(self, model, prev, encoder_out, src_lengths, features_only):
        """A later pass of the student decoder (logits, or features for the fused loss)."""

        def run(prev_output_tokens):
            return model.decoder(prev_output_tokens, encoder_out=encoder_out, src_lengths=src_lengths,
                                 features_only=features_only)[0]

        if self.checkpoint_passes and torch.is_grad_enabled():
            # non-reentrant: the recomputation joins the one backward, so each parameter's
            # gradient is ready once (DDP) and the dropout masks are replayed
            return checkpoint(run, prev, use_reentrant=False)
        return run(prev)

    def distill(self, model, net_input, first_output, encoder_out, mask, logging_output,
                projections=None, ce=None):
        """The N passes' weighted KD terms; with ``projections`` (fused) ``first_output`` holds
        the gold pass's features and the total also holds ``ce``'s weighted CE."""
        src_tokens, src_lengths = net_input["src_tokens"], net_input["src_lengths"]
        gold_prev = net_input["prev_output_tokens"]
        teacher = self.task.teacher.place(first_output.device, next(model.parameters()).dtype)
        teacher_encoder_outs = teacher.encode(src_tokens, src_lengths)
        weight = self.kd_rate / self.kd_iters
        fused = projections is not None
        total, sums = 0.0, torch.zeros(3, device=first_output.device)
        prev, student_output = gold_prev, first_output
        for i in range(self.kd_iters):
            if i > 0:  # the student's own greedy output of the previous pass, no gradient
                prev = next_decoder_input(gold_prev, terms.student_argmax, self.padding_idx, self.unk_idx)
                student_output = self.student_decoder(model, prev, encoder_out, src_lengths, fused)
            if fused:
                features = teacher.features(prev, teacher_encoder_outs, src_lengths)
                terms = fused_tie_kd_loss(student_output, projections[0], features, projections[1], mask,
                                          weight=weight, teacher_fp32=teacher.keep_fp32, **self.kd_options,
                                          **(ce if i == 0 else {}))
                if i == 0:
                    logging_output.update(ce_loss=terms.ce, nll_loss=terms.nll)
            else:
                teacher_logits = teacher.logits(prev, teacher_encoder_outs, src_lengths)
                terms = tie_kd_loss(student_output, teacher_logits, mask, weight=weight, **self.kd_options)
            total = total + terms.loss
            sums += torch.stack([terms.kl, terms.top1, terms.topk]).float()
            if i == 0:
                agree = (terms.student_argmax == terms.teacher_argmax) & mask
                logging_output["teacher_top1_agree"] = agree.sum().data
        sums /= self.kd_iters  # per-pass averages, like the objective
        logging_output.update(kd_kl=sums[0].data, kd_top1=sums[1].data, kd_topk=sums[2].data,
                              kd_loss=sums.sum().data)  # without the weight a
        return total

    @staticmethod
    def reduce_metrics(logging_outputs) -> None:
        def total(key):
            return sum(float(log.get(key, 0)) for log in logging_outputs)

        ntokens, sample_size = total("ntokens"), total("sample_size")
        if sample_size == 0:
            return
        ln2 = math.log(2)
        metrics.log_scalar("loss", total("loss") / sample_size / ln2, sample_size, round=3)
        metrics.log_scalar("nll_loss", total("nll_loss") / ntokens / ln2, ntokens, round=3)
        metrics.log_derived("ppl", lambda meters: utils.get_perplexity(meters["nll_loss"].avg))
        metrics.log_scalar("ce", total("ce_loss") / sample_size / ln2, sample_size, round=3)
        metrics.log_scalar("kd_loss", total("kd_loss") / sample_size / ln2, sample_size, round=3)
        # KL in bits per token; the ranking terms are probability margins per token.
        metrics.log_scalar("kd_kl", total("kd_kl") / ntokens / ln2, ntokens, round=4)
        metrics.log_scalar("kd_top1", total("kd_top1") / ntokens, ntokens, round=4)
        metrics.log_scalar("kd_topk", total("kd_topk") / ntokens, ntokens, round=4)
        metrics.log_scalar("teacher_top1_agree", total("teacher_top1_agree") / ntokens, ntokens, round=4)

    @staticmethod
    def logging_outputs_can_be_summed() -> bool:
        return True
