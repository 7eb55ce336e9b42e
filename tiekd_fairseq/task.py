"""``translation_tie_kd``: fairseq's ``translation`` task plus a frozen teacher."""

from dataclasses import dataclass, field

from fairseq.tasks import register_task
from fairseq.tasks.translation import TranslationConfig, TranslationTask

from .teacher import TeacherEnsemble, load_teachers


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


@register_task("translation_tie_kd", dataclass=TranslationTieKDConfig)
class TranslationTieKDTask(TranslationTask):
    """Translation with a frozen teacher, used by the ``tie_kd`` criterion.

    The teacher is loaded when a criterion is built (training, validation), not for
    generation, and lives on the task: it is never part of the student's checkpoint.
    """

    cfg: TranslationTieKDConfig

    def __init__(self, cfg, src_dict, tgt_dict):
        super().__init__(cfg, src_dict, tgt_dict)
        self._teacher = None

    @property
    def teacher(self) -> TeacherEnsemble:
        if self._teacher is None:
            self._teacher = TeacherEnsemble(load_teachers(self.cfg.teacher_path, self), self.cfg.teacher_fp32)
        return self._teacher

    def build_criterion(self, cfg, **kwargs):
        self.teacher  # load and check it now: bad teachers fail before training starts
        return super().build_criterion(cfg, **kwargs)
