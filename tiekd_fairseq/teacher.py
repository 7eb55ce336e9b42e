"""Load a frozen teacher (or an ensemble of them) from its own fairseq checkpoint.

The teacher is rebuilt from the config stored in its checkpoint (its own architecture and
sizes, whatever the student is) on the student task's dictionaries, after checking that it
was trained on the same language pair with the same dictionaries.
"""

import contextlib
import logging
import os
import re
from typing import List, Optional

import torch
from fairseq import checkpoint_utils, models
from fairseq.data import Dictionary
from fairseq.dataclass.utils import convert_namespace_to_omegaconf

from .checkpoint_loading import ALLOWED_GLOBALS
from .errors import ConfigError
from .losses import ensemble_scores

logger = logging.getLogger(__name__)


class TeacherError(ConfigError):
    """A teacher checkpoint that cannot serve the student's task."""


def _fail(path: str, message: str):
    raise TeacherError(f"--teacher-path {path}: {message}")


def _read_checkpoint(path: str):
    if not os.path.isfile(path):
        _fail(path, "no such file")
    try:
        state = checkpoint_utils.load_checkpoint_to_cpu(path)
    except Exception as err:  # torch raises many kinds for corrupt or foreign files
        refused = re.search(r"Unsupported global: GLOBAL (\S+)", str(err))
        if refused:
            allowed = ", ".join(f"{c.__module__}.{c.__qualname__}" for c in ALLOWED_GLOBALS)
            _fail(path, f"not a readable fairseq checkpoint: it pickles {refused.group(1)}, which "
                  f"safe loading refuses (allowed: tensors, containers, {allowed})")
        from .errors import describe_load_error  # one line, without torch's weights_only=False advice
        _fail(path, f"not a readable fairseq checkpoint ({describe_load_error(path, err)})")
    if not isinstance(state, dict) or "model" not in state:
        _fail(path, "not a fairseq checkpoint (no 'model' entry)")
    cfg = state.get("cfg")
    if cfg is None and state.get("args") is not None:
        cfg = convert_namespace_to_omegaconf(state["args"])
    if cfg is None or cfg.get("model") is None:
        _fail(path, "not a fairseq checkpoint (no stored model config)")
    return state, cfg


def first_dictionary_difference(a: Dictionary, b: Dictionary, a_name: str = "teacher") -> Optional[str]:
    """None if the symbol lists are equal, else a description of the first difference."""
    for i, (x, y) in enumerate(zip(a.symbols, b.symbols)):
        if x != y:
            return f"index {i}: {a_name} has {x!r}, data has {y!r}"
    if len(a) != len(b):
        return f"{a_name} has {len(a)} symbols, data has {len(b)}"
    return None


def _cfg_value(cfg, key):
    """``cfg.key`` of a stored config: an omegaconf/dict config, or an ``argparse.Namespace``
    in checkpoints written from command-line arguments (older fairseq)."""
    if cfg is None:
        return None
    return cfg.get(key) if hasattr(cfg, "get") else getattr(cfg, key, None)


def _check_languages(path, teacher_task_cfg, task):
    for side, mine in (("source_lang", task.cfg.source_lang), ("target_lang", task.cfg.target_lang)):
        theirs = _cfg_value(teacher_task_cfg, side)
        if theirs and mine and theirs != mine:
            _fail(path, f"teacher was trained with {side}={theirs}, the student task has {mine}")


def _check_dictionaries(path, teacher_task_cfg, task):
    """Compare with the teacher's own dictionary files, when its data dir is still there."""
    data = _cfg_value(teacher_task_cfg, "data") or ""
    data_dir = data.split(os.pathsep)[0] if data else ""
    for lang, mine in ((task.cfg.source_lang, task.source_dictionary), (task.cfg.target_lang, task.target_dictionary)):
        dict_file = os.path.join(data_dir, f"dict.{lang}.txt")
        if not data_dir or not os.path.isfile(dict_file):
            logger.warning(
                f"teacher {path}: its dictionary {dict_file or '(no data dir stored)'} is not "
                f"readable; checking vocabulary sizes only"
            )
            continue
        diff = first_dictionary_difference(Dictionary.load(dict_file), mine)
        if diff:
            _fail(path, f"dictionary {dict_file} differs from the data's dict.{lang}.txt at {diff}; "
                  "binarize the student's data with the teacher's dictionaries (fairseq-preprocess "
                  "--srcdict/--tgtdict)")


def _check_vocab_sizes(path, state_dict, task):
    for key, dictionary, side in (
        ("encoder.embed_tokens.weight", task.source_dictionary, "source"),
        ("decoder.embed_tokens.weight", task.target_dictionary, "target"),
        ("decoder.output_projection.weight", task.target_dictionary, "target"),
    ):
        if key in state_dict and state_dict[key].size(0) != len(dictionary):
            _fail(path, f"teacher {side} vocabulary has {state_dict[key].size(0)} symbols "
                  f"({key}), the data's {side} dictionary has {len(dictionary)}")


def load_teacher(path: str, task) -> torch.nn.Module:
    """One frozen teacher, on CPU, in eval mode, with ``requires_grad=False``."""
    state, cfg = _read_checkpoint(path)
    _check_languages(path, cfg.get("task"), task)
    _check_dictionaries(path, cfg.get("task"), task)
    _check_vocab_sizes(path, state["model"], task)
    model = models.build_model(cfg.model, task)
    if getattr(model.decoder, "adaptive_softmax", None) is not None:
        _fail(path, "the teacher has an adaptive softmax output layer (--adaptive-softmax-cutoff); "
              "TIE-KD needs its scores over the whole vocabulary")
    model.load_state_dict(state["model"], strict=True, model_cfg=cfg.model)
    model.eval()
    model.requires_grad_(False)
    n_params = sum(p.numel() for p in model.parameters())
    logger.info(f"teacher {path}: {cfg.model._name}, {n_params:,} parameters, frozen")
    theirs, mine = model.max_positions(), task.max_positions()
    if any(t < m for t, m in zip(theirs, mine)):
        logger.warning(f"teacher {path} accepts at most {theirs} source/target positions, fewer than "
                       f"the student's {mine}: longer pairs are skipped with "
                       f"--skip-invalid-size-inputs-valid-test, otherwise fairseq refuses them")
    return model


def load_teachers(paths: str, task) -> List[torch.nn.Module]:
    """``paths`` separated by ':' (os.pathsep) form an ensemble."""
    names = [p for p in paths.split(os.pathsep) if p]
    if not names:
        raise TeacherError("--teacher-path is required by translation_tie_kd: give the teacher's "
                           "checkpoint (several separated by ':' form an ensemble)")
    return [load_teacher(p, task) for p in names]


class TeacherEnsemble:
    """Frozen teachers that score decoder inputs; several average their probabilities.

    Deliberately not an ``nn.Module`` held by the model or criterion: fairseq saves the
    model's and the criterion's parameters in checkpoints, and the teacher must never be.
    """

    def __init__(self, models_: List[torch.nn.Module], keep_fp32: bool = False):
        self.models = models_
        self.keep_fp32 = keep_fp32
        self._placed = None

    def place(self, device: torch.device, student_dtype: torch.dtype) -> "TeacherEnsemble":
        """Move to the student's device and (unless keep_fp32) half precision, once."""
        dtype = torch.float32 if self.keep_fp32 or not student_dtype.is_floating_point else student_dtype
        if self._placed != (device, dtype):
            for m in self.models:
                m.to(device=device, dtype=dtype)
            self._placed = (device, dtype)
        return self

    def _precision(self, device: torch.device):
        """With keep_fp32, an enclosing autocast (fairseq's --amp wraps the training step in
        one, not validation) must not lower the teacher's precision."""
        if self.keep_fp32:
            return torch.autocast(device_type=device.type, enabled=False)
        return contextlib.nullcontext()

    @torch.no_grad()
    def encode(self, src_tokens, src_lengths):
        with self._precision(src_tokens.device):
            return [m.encoder(src_tokens, src_lengths=src_lengths) for m in self.models]

    @torch.no_grad()
    def features(self, prev_output_tokens, encoder_outs, src_lengths, features_only: bool = True):
        """Each teacher's decoder output: features before the output layer (for the fused loss),
        or with ``features_only=False`` its logits."""
        with self._precision(prev_output_tokens.device):
            return [
                m.decoder(prev_output_tokens, encoder_out=enc, src_lengths=src_lengths,
                          features_only=features_only)[0]
                for m, enc in zip(self.models, encoder_outs)
            ]

    @torch.no_grad()
    def logits(self, prev_output_tokens, encoder_outs, src_lengths):
        """Scores for the next token; for an ensemble, log of the mean probability."""
        outs = self.features(prev_output_tokens, encoder_outs, src_lengths, features_only=False)
        return ensemble_scores(outs)
