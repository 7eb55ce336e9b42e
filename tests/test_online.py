"""Online pseudo-targets (--unlabeled-online): the teacher translates pool sentences drawn at
every update, and they train in that update."""
import re

import numpy as np
import pytest
import torch
from fairseq import options, tasks
from fairseq.data import Dictionary
from fairseq.dataclass.utils import convert_namespace_to_omegaconf
from fairseq_cli import train

import utils
from tiekd_fairseq.errors import ConfigError
from tiekd_fairseq.unlabeled_pool import OnlineWalk


@pytest.fixture(scope="module")
def pool(toy_data, tmp_path_factory):
    """300 toy sources; their parallel copy is ROOT/as_test's test split, for fairseq-generate."""
    return utils.make_pool(tmp_path_factory.mktemp("pool"), toy_data, n=300, seed=5, parallel_copy=True)


def online_args(teacher, pool, *extra):
    return ("--task", "translation_tie_kd", "--teacher-path", teacher, "--criterion", "tie_kd",
            "--kd-iters", "2", "--unlabeled-data", pool, "--unlabeled-online", *extra)


def parsed(data, save_dir, *extra):
    parser = options.get_training_parser()
    args = options.parse_args_and_arch(
        parser, [str(data), "--user-dir", utils.PLUGIN, "--save-dir", str(save_dir),
                 *utils.TRAIN_COMMON, *utils.TINY_ARCH, "--max-update", "1", *map(str, extra)])
    return convert_namespace_to_omegaconf(args)


def online_task(data, save_dir, *extra):
    cfg = parsed(data, save_dir, *extra)
    task = tasks.setup_task(cfg.task)
    return task, task.teacher.place(torch.device("cpu"), torch.float32).models


# -- which sentences an update draws (no CLI) ------------------------------------------------
def test_draws_are_a_pure_function_of_seed_update_and_slot():
    sizes = np.random.default_rng(0).integers(3, 12, size=200)
    walk = OnlineWalk(sizes, tokens_per_slot=60, slots_per_update=2, seed=7)
    draws = [walk.draw(u, s) for u in range(6) for s in range(2)]
    flat = np.concatenate(draws)
    assert len(flat) == len(set(flat.tolist()))  # disjoint: slots, ranks, updates (within a pass)
    assert all(60 - 12 < sizes[d].sum() < 60 + 12 for d in draws)  # about T source tokens each
    again = OnlineWalk(sizes, tokens_per_slot=60, slots_per_update=2, seed=7)  # a restarted run
    assert np.array_equal(again.draw(4, 1), walk.draw(4, 1))
    assert not np.array_equal(OnlineWalk(sizes, 60, 2, seed=8).draw(4, 1), walk.draw(4, 1))
    whole = np.concatenate([walk.draw(u, s) for u in range(40) for s in range(2)])  # 4800 tokens
    assert set(whole[: len(sizes)].tolist()) == set(range(len(sizes)))  # the pool, once, in order


# -- the teacher's translations --------------------------------------------------------------
def test_online_pseudo_targets_equal_fairseq_generate(toy_data, teacher_checkpoint, pool, tmp_path):
    decoding = ("--max-len-a", "1.2", "--max-len-b", "10")
    task, teachers = online_task(toy_data, tmp_path, *online_args(
        teacher_checkpoint, pool, *[a.replace("--", "--pseudo-") if a.startswith("--") else a for a in decoding]))
    drawn, targets = task._online().translate(3, 1, teachers, torch.device("cpu"))
    assert len(drawn) > 10
    out = utils.cli("fairseq-generate", pool.replace("/bin", "/as_test"), "--user-dir", utils.PLUGIN,
                    "--path", teacher_checkpoint, "--gen-subset", "test", "--cpu", "--beam", "1",
                    *decoding, "--batch-size", "64", "--required-batch-size-multiple", "1")
    theirs = {int(m.group(1)): m.group(2) for m in re.finditer(r"^H-(\d+)\t\S+\t(.*)$", out.stdout, re.M)}
    tgt_dict = Dictionary.load(str(toy_data / "dict.tgt.txt"))
    assert {int(i): tgt_dict.string(t) for i, t in zip(drawn, targets)} == {int(i): theirs[int(i)] for i in drawn}
    assert all(t[-1].item() == tgt_dict.eos() for t in targets)


def test_sampled_online_targets_are_seeded_and_new_at_every_update(toy_data, teacher_checkpoint, pool, tmp_path):
    sampling = ("--pseudo-sampling", "--pseudo-sampling-topk", "5", "--unlabeled-online-max-tokens", "600")
    task, teachers = online_task(toy_data, tmp_path, *online_args(teacher_checkpoint, pool, *sampling))
    online, cpu = task._online(), torch.device("cpu")
    first = dict(zip(*online.translate(0, 0, teachers, cpu)))
    again = dict(zip(*online.translate(0, 0, teachers, cpu)))
    assert first.keys() == again.keys() and all(torch.equal(first[i], again[i]) for i in first)
    # the pool is ~2,000 tokens: update 4 (slot 0) walks it again, in a new order
    later = dict(zip(*online.translate(4, 0, teachers, cpu)))
    both = first.keys() & later.keys()
    assert len(both) > 10 and sum(not torch.equal(first[i], later[i]) for i in both) > len(both) // 4


# -- through fairseq-train -------------------------------------------------------------------
def test_online_training_logs_and_restart_matches_uninterrupted_run(toy_data, teacher_checkpoint, pool, tmp_path):
    args = (*utils.TINY_ARCH, *online_args(teacher_checkpoint, pool), "--max-update", "10",
            "--save-interval-updates", "4", "--log-interval", "1")
    full = utils.train(toy_data, tmp_path / "full", *args)
    line = utils.log_lines(full, "num_updates=1,")[0]
    assert re.search(r"pseudo_bsz=[1-9]", line) and re.search(r"decode_share=0\.\d+", line)
    assert utils.log_lines(full, "online pseudo-targets: 375 pool source tokens")  # 1500 / 4
    cmd = utils.train_command(toy_data, tmp_path / "killed", *args)
    seen = utils.run_until(cmd, "checkpoint_1_4.pt (epoch 1 @ 4 updates")
    assert "num_updates=5," not in seen
    resumed = utils.cli("fairseq-train", *cmd[1:])
    assert "Loaded checkpoint" in resumed.stdout + resumed.stderr
    a = torch.load(tmp_path / "full" / "checkpoint_last.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "killed" / "checkpoint_last.pt", weights_only=True)["model"]
    assert all(torch.allclose(a[k], b[k], rtol=0, atol=1e-6) for k in a)
    # the student evaluates without its pool (tiekd-eval once refused: "needs an unlabeled pool")
    out = utils.cli("tiekd-eval", tmp_path / "full", "--data", toy_data, "--ref", toy_data.parent / "raw" / "test.tgt",
                    "--post-process", "none", "--average-last", "1", "--beam", "1")
    assert "BLEU" in out.stdout


@pytest.mark.parametrize("update_freq", ["2", "1,2"])
def test_a_retried_update_draws_its_own_slots(toy_data, teacher_checkpoint, pool, tmp_path, update_freq):
    """fairseq retries an update with the same update_num after an fp16 overflow or an OOM: the
    retry draws from that update's slots again, never the next update's (they trained twice).
    A per-epoch --update-freq list lays the slots out for its largest value."""
    from fairseq import optim

    from test_criterion import first_batch

    args = online_args(teacher_checkpoint, pool, "--kd-iters", "1", "--update-freq", update_freq)
    task, _ = online_task(toy_data, tmp_path, *args)
    cfg = parsed(toy_data, tmp_path, *args)
    task.load_dataset("valid")
    model = task.build_model(cfg.model)
    criterion = task.build_criterion(cfg.criterion)
    optimizer = optim.build_optimizer(cfg.optimizer, list(model.parameters()))
    walk = task._online().walk
    assert walk.slots_per_update == 2
    drawn = []
    draw = walk.draw
    walk.draw = lambda update, slot: drawn.append((update, slot)) or draw(update, slot)
    sample = first_batch(task)
    for update in (5, 5, 6):  # update 5, its retry, update 6; two micro-batches each
        for _ in range(2):
            task.train_step(sample, model, criterion, optimizer, update)
    assert drawn == [(5, 0), (5, 1), (5, 0), (5, 1), (6, 0), (6, 1)]


# -- bad input -------------------------------------------------------------------------------
@pytest.mark.parametrize("extra,message", [
    (("--unlabeled-online",), "--unlabeled-online needs an unlabeled pool: add --unlabeled-data POOL_DIR"),
    (("--unlabeled-data", "POOL", "--unlabeled-online", "--unlabeled-per-epoch", "10"),
     "--unlabeled-per-epoch is an option of the per-epoch pool; with --unlabeled-online"),
    (("--unlabeled-data", "POOL", "--unlabeled-online", "--pseudo-refresh-epochs", "2"),
     "--pseudo-refresh-epochs is an option of the per-epoch pool"),
    (("--unlabeled-data", "POOL", "--unlabeled-online", "--unlabeled-online-max-tokens", "0"),
     "--unlabeled-online-max-tokens must be >= 1, got 0"),
    (("--unlabeled-data", "POOL", "--unlabeled-online-max-tokens", "100"),
     "--unlabeled-online-max-tokens needs --unlabeled-online"),
])
def test_bad_online_options(toy_data, teacher_checkpoint, pool, tmp_path, extra, message):
    args = ("--task", "translation_tie_kd", "--teacher-path", teacher_checkpoint, "--criterion", "tie_kd",
            *[pool if a == "POOL" else a for a in extra])
    with pytest.raises(ConfigError, match=re.escape(message)):
        train.main(parsed(toy_data, tmp_path / "save", *args))
    assert not (tmp_path / "save" / "checkpoint_last.pt").exists()


def test_fully_sharded_with_iterative_passes_is_refused(toy_data, teacher_checkpoint, tmp_path):
    """FSDP reshards the parameters after the wrapped forward; passes i > 0 call the decoder
    outside it. Untestable here (fairscale, CUDA), so refused when fairseq-train builds the
    criterion (here fairseq itself stops earlier, asking for fairscale)."""
    args = ("--task", "translation_tie_kd", "--teacher-path", teacher_checkpoint, "--criterion", "tie_kd",
            "--kd-iters", "2", "--ddp-backend", "fully_sharded")
    cfg = parsed(toy_data, tmp_path / "save", *args)
    with pytest.raises(ConfigError, match="--ddp-backend fully_sharded with --kd-iters > 1 is not supported"):
        tasks.setup_task(cfg.task).build_criterion(cfg.criterion)


# -- one update: the labeled batch and the pseudo pairs as two sub-batches ------------------------
def test_pseudo_sub_batch_trains_as_one_collated_batch_would(toy_data, teacher_checkpoint, pool, tmp_path):
    """The pseudo pairs train as a second sub-batch of the update (not collated into the labeled
    batch, which they would pad to their longest sentence): the summed loss, sample size and
    every gradient equal those of the one collated batch (dropout off)."""
    from fairseq import optim
    from fairseq.data.language_pair_dataset import collate

    from test_criterion import first_batch, no_dropout

    task, teachers = online_task(toy_data, tmp_path, *online_args(teacher_checkpoint, pool))
    cfg = parsed(toy_data, tmp_path, *online_args(teacher_checkpoint, pool))
    task.load_dataset("valid")
    torch.manual_seed(0)
    model = no_dropout(task.build_model(cfg.model)).train()
    criterion = task.build_criterion(cfg.criterion)
    optimizer = optim.build_optimizer(cfg.optimizer, list(model.parameters()))
    sample = first_batch(task)

    loss, size, log = task.train_step(sample, model, criterion, optimizer, update_num=3)
    split = {n: p.grad.clone() for n, p in model.named_parameters()}
    assert log["pseudo_sentences"] > 0

    drawn, targets = task._online().translate(3, 0, teachers, torch.device("cpu"))  # what update 3 drew
    pad = task.tgt_dict.pad()
    items = [{"id": int(i), "source": s[s.ne(pad)], "target": t[t.ne(pad)]}
             for i, s, t in zip(sample["id"], sample["net_input"]["src_tokens"], sample["target"])]
    items += [{"id": 10_000 + j, "source": task.pool[int(k)], "target": t} for j, (k, t) in enumerate(zip(drawn, targets))]
    joint = collate(items, pad, task.tgt_dict.eos(), left_pad_source=task.cfg.left_pad_source,
                    left_pad_target=task.cfg.left_pad_target, input_feeding=True)
    model.zero_grad(set_to_none=True)
    joint_loss, joint_size, _ = criterion(model, joint)
    joint_loss.backward()
    assert size == joint_size and log["pseudo_sentences"] == len(targets)
    torch.testing.assert_close(loss, joint_loss, rtol=1e-5, atol=1e-5)
    for n, p in model.named_parameters():
        torch.testing.assert_close(split[n], p.grad, rtol=1e-4, atol=1e-5, msg=lambda m, n=n: f"{n}: {m}")
