"""Many tie_kd updates (N=3) retain nothing between steps: no growth in live tensors or RSS."""
import gc

import torch
from fairseq import options, tasks
from fairseq.dataclass.utils import convert_namespace_to_omegaconf
from fairseq.trainer import Trainer

import utils


def live_tensors():
    gc.collect()
    return sum(1 for o in gc.get_objects() if torch.is_tensor(o))


def rss_mib():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 2**20


def test_220_updates_retain_nothing(toy_data, teacher_checkpoint):
    args = options.parse_args_and_arch(options.get_training_parser(), [
        str(toy_data), "--user-dir", utils.PLUGIN, "--task", "translation_tie_kd",
        "--teacher-path", str(teacher_checkpoint), "--criterion", "tie_kd", "--kd-iters", "3",
        *utils.TINY_ARCH, "--optimizer", "adam", "--lr", "1e-3", "--max-tokens", "300", "--cpu"])
    cfg = convert_namespace_to_omegaconf(args)
    task = tasks.setup_task(cfg.task)
    task.load_dataset("train")
    trainer = Trainer(cfg, task, task.build_model(cfg.model), task.build_criterion(cfg.criterion))
    epoch = task.get_batch_iterator(task.dataset("train"), max_tokens=300, seed=1)
    batches = list(epoch.next_epoch_itr(shuffle=False))
    assert len(batches) >= 20  # cycled through, so every batch is seen several times
    counts, rss = [], []
    for step in range(220):
        trainer.train_step([batches[step % len(batches)]])
        if step in (19, 219):
            counts.append(live_tensors())
            rss.append(rss_mib())
    assert trainer.get_num_updates() == 220
    assert counts[1] == counts[0], counts
    assert rss[1] - rss[0] < 25, rss  # MiB; allocator noise only
