"""``tie_kd``: label-smoothed CE + word-level KD + hierarchical ranking loss, N passes.

    L = (1 - a) * CE_ls + a / N * sum_{i<N} sum_t [KL_i,t + L_top1_i,t + L_topk_i,t]

Pass 0 feeds the gold prefix; pass i > 0 feeds ``[bos] + argmax(student pass i-1)[:-1]``.
The student's and teachers' encoders run once. Vanilla word-level KD is
``--kd-iters 1 --kd-no-top1 --kd-no-topk``; see README for the paper's ablations.
"""

import math
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from fairseq import utils
from fairseq.logging import metrics
from fairseq.criterions import FairseqCriterion, register_criterion
from fairseq.criterions.label_smoothed_cross_entropy import label_smoothed_nll_loss
from fairseq.dataclass import ChoiceEnum, FairseqDataclass
from omegaconf import II

from .errors import ConfigError
from .losses import TEACHER_TARGETS, next_decoder_input, tie_kd_loss
from .teacher import TeacherEnsemble


@dataclass
class TieKDCriterionConfig(FairseqDataclass):
    kd_rate: float = field(
        default=0.5, metadata={"help": "KD weight a in (1-a)*CE + a*KD, in [0, 1]"}
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


@register_criterion("tie_kd", dataclass=TieKDCriterionConfig)
class TieKDCriterion(FairseqCriterion):
    def __init__(self, task, sentence_avg, kd_rate, kd_iters, kd_topk, label_smoothing,
                 kd_no_kl, kd_no_top1, kd_no_topk, kd_teacher_target, kd_chunk_tokens):
        super().__init__(task)
        vocab = len(task.target_dictionary)
        if not 0.0 <= kd_rate <= 1.0:
            raise ConfigError(f"--kd-rate must be in [0, 1], got {kd_rate}")
        if kd_iters < 1:
            raise ConfigError(f"--kd-iters must be >= 1, got {kd_iters}")
        if not 1 <= kd_topk <= vocab:
            raise ConfigError(f"--kd-topk must be in [1, target vocabulary size {vocab}], got {kd_topk}")
        if not 0.0 <= label_smoothing < 1.0:
            raise ConfigError(f"--label-smoothing must be in [0, 1), got {label_smoothing}")
        if kd_no_kl and kd_no_top1 and kd_no_topk and kd_rate > 0:
            raise ConfigError("--kd-no-kl, --kd-no-top1 and --kd-no-topk leave no KD term; "
                             "use --kd-rate 0 (or --criterion label_smoothed_cross_entropy)")
        if not isinstance(getattr(task, "teacher", None), TeacherEnsemble):
            raise ConfigError(
                f"--criterion tie_kd needs a teacher, and task {type(task).__name__} has none: "
                "use --task translation_tie_kd --teacher-path TEACHER.pt"
            )
        self.sentence_avg = sentence_avg
        self.kd_rate = kd_rate
        self.kd_iters = kd_iters
        self.eps = label_smoothing
        self.kd_options = dict(
            k=kd_topk, kl=not kd_no_kl, top1=not kd_no_top1, topk=not kd_no_topk,
            teacher_target=str(kd_teacher_target), chunk_tokens=kd_chunk_tokens,
        )

    def forward(self, model, sample, reduce=True):
        net_input = sample["net_input"]
        target = sample["target"]
        with captured_encoder_out(model) as encoder_outs:
            net_output = model(**net_input)
        lprobs = model.get_normalized_probs(net_output, log_probs=True)
        ce_loss, nll_loss = label_smoothed_nll_loss(
            lprobs.view(-1, lprobs.size(-1)), target.view(-1), self.eps, ignore_index=self.padding_idx
        )
        mask = target.ne(self.padding_idx)
        ntokens = sample["ntokens"]
        sample_size = target.size(0) if self.sentence_avg else ntokens
        logging_output = {
            "ce_loss": ce_loss.data, "nll_loss": nll_loss.data, "ntokens": ntokens,
            "nsentences": target.size(0), "sample_size": sample_size,
        }
        kd_loss = ce_loss.new_zeros(())
        if self.kd_rate > 0:
            kd_loss = self.distill(model, net_input, net_output[0], encoder_outs[0], mask, logging_output)
        # Training optimises the full objective; validation reports label-smoothed CE as
        # `loss`, comparable with label_smoothed_cross_entropy runs (kd_loss logged apart).
        loss = (1.0 - self.kd_rate) * ce_loss + kd_loss if model.training else ce_loss
        logging_output["loss"] = loss.data
        logging_output["kd_loss"] = kd_loss.data / max(self.kd_rate, 1e-12)  # without the weight a
        return loss, sample_size, logging_output

    def distill(self, model, net_input, logits, encoder_out, mask, logging_output):
        src_tokens, src_lengths = net_input["src_tokens"], net_input["src_lengths"]
        gold_prev = net_input["prev_output_tokens"]
        teacher = self.task.teacher.place(logits.device, next(model.parameters()).dtype)
        teacher_encoder_outs = teacher.encode(src_tokens, src_lengths)
        weight = self.kd_rate / self.kd_iters
        kd_loss, sums = 0.0, torch.zeros(3, device=logits.device)
        prev = gold_prev
        for i in range(self.kd_iters):
            if i > 0:  # the student's own greedy output of the previous pass, no gradient
                prev = next_decoder_input(gold_prev, terms.student_argmax, self.padding_idx)
                logits = model.decoder(prev, encoder_out=encoder_out, src_lengths=src_lengths)[0]
            teacher_logits = teacher.logits(prev, teacher_encoder_outs, src_lengths)
            terms = tie_kd_loss(logits, teacher_logits, mask, weight=weight, **self.kd_options)
            kd_loss = kd_loss + terms.loss
            sums += torch.stack([terms.kl, terms.top1, terms.topk]).float()
            if i == 0:
                agree = (terms.student_argmax == terms.teacher_argmax) & mask
                logging_output["teacher_top1_agree"] = agree.sum().data
        sums /= self.kd_iters  # per-pass averages, like the objective
        logging_output.update(kd_kl=sums[0].data, kd_top1=sums[1].data, kd_topk=sums[2].data)
        return kd_loss

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
