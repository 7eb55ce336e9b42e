"""The criterion through torch's DistributedDataParallel, which fairseq's default
--ddp-backend pytorch_ddp wraps the student in (inside its ModuleProxyWrapper): one CPU
process, gloo, world size 1. (fairseq 0.12's own wrapper passes CUDA device ids, so it is
built here as it builds it, with device_ids=None.)"""
import copy
import logging

import pytest
import torch
import torch.distributed as dist
from fairseq.distributed import ModuleProxyWrapper
from torch.nn.parallel import DistributedDataParallel

from test_criterion import first_batch, no_dropout
from test_criterion import setup as setup_criterion
from test_fused_criterion import TIED, assert_same
from test_online import online_args, online_task, parsed, pool  # noqa: F401 (pool: a fixture)
from tiekd_fairseq.errors import ConfigError

LOSS_SCALE = 128.0  # as --fp16's scaler multiplies the loss before backward


@pytest.fixture(scope="module", autouse=True)
def process_group(tmp_path_factory):
    store = dist.FileStore(str(tmp_path_factory.mktemp("ddp") / "store"), 1)
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def ddp(model, **options):
    return ModuleProxyWrapper(DistributedDataParallel(model, device_ids=None, **options))


def steps(criterion, model, sample, n=2):
    """n forward + backward steps (the second finds out whether DDP's reducer finished the
    first); loss, logging output and gradients of each."""
    out = []
    for _ in range(n):
        model.zero_grad(set_to_none=True)
        loss, _, log = criterion(model, sample)
        (loss * LOSS_SCALE).backward()
        grads = {n.replace("module.module.", ""): p.grad / LOSS_SCALE for n, p in model.named_parameters()}
        out.append((loss.detach(), log, grads))
    return out


@pytest.mark.parametrize("embeddings", [(), TIED], ids=["untied", "tied"])
@pytest.mark.parametrize("variant", [("--kd-fused-output", "auto"),
                                     ("--kd-fused-output", "auto", "--kd-checkpoint-passes"),
                                     ("--kd-fused-output", "off", "--kd-checkpoint-passes")],
                         ids=["fused", "fused+checkpointed", "unfused+checkpointed"])
def test_under_ddp_same_as_unfused_without(toy_data, teacher_checkpoint, embeddings, variant):
    cfg, task, plain = setup_criterion(toy_data, teacher_checkpoint, *embeddings, "--kd-iters", "3",
                                       "--kd-fused-output", "off")
    _, _, criterion = setup_criterion(toy_data, teacher_checkpoint, *embeddings, "--kd-iters", "3", *variant)
    torch.manual_seed(0)
    student = no_dropout(task.build_model(cfg.model)).train()
    wrapped = ddp(copy.deepcopy(student))
    sample = first_batch(task)
    for want, got in zip(steps(plain, student, sample), steps(criterion, wrapped, sample)):
        assert_same(want, got)


def test_find_unused_parameters_takes_the_unfused_path(toy_data, teacher_checkpoint, caplog):
    """With --find-unused-parameters DDP marks the untied output projection unused (the fused
    loss reads it outside DDP's forward) and then fails when its gradient arrives ("mark a
    variable ready only once"): the criterion falls back to the unfused path, saying why."""
    cfg, task, plain = setup_criterion(toy_data, teacher_checkpoint, "--kd-iters", "2", "--kd-fused-output", "off")
    _, _, criterion = setup_criterion(toy_data, teacher_checkpoint, "--kd-iters", "2")
    torch.manual_seed(0)
    student = no_dropout(task.build_model(cfg.model)).train()
    wrapped = ddp(copy.deepcopy(student), find_unused_parameters=True)
    sample = first_batch(task)
    with caplog.at_level(logging.INFO, logger="tiekd_fairseq.criterion"):
        for want, got in zip(steps(plain, student, sample), steps(criterion, wrapped, sample)):
            assert_same(want, got)
    assert any("because DDP runs with --find-unused-parameters" in r.getMessage() for r in caplog.records)


def test_fairseq_checkpoint_activations_refused_under_ddp(toy_data, teacher_checkpoint):
    """fairseq's --checkpoint-activations recomputes each layer in a reentrant backward of its
    own, one per pass, so DDP sees a parameter made ready twice; refused at the first step,
    before any update, naming what works."""
    cfg, task, criterion = setup_criterion(toy_data, teacher_checkpoint, "--checkpoint-activations",
                                           "--kd-iters", "2")
    student = task.build_model(cfg.model).train()
    sample = first_batch(task)
    with pytest.raises(ConfigError, match="--checkpoint-activations with --kd-iters 2 fails under --ddp-backend "
                                          "pytorch_ddp .*use --kd-checkpoint-passes"):
        criterion(ddp(student), sample)
    assert all(p.grad is None for p in student.parameters())
    loss, _, _ = criterion(student, sample)  # without DDP (one process) it works
    loss.backward()
    _, _, one_pass = setup_criterion(toy_data, teacher_checkpoint, "--checkpoint-activations", "--kd-iters", "1")
    steps(one_pass, ddp(copy.deepcopy(student)), sample)  # and so does one pass under DDP


def test_what_the_refusal_prevents(toy_data, teacher_checkpoint):
    """The failure itself (if a torch release makes it work, the refusal can go)."""
    cfg, task, criterion = setup_criterion(toy_data, teacher_checkpoint, "--checkpoint-activations",
                                           "--kd-iters", "2")
    criterion._model_checked = True  # skip the check
    wrapped = ddp(task.build_model(cfg.model).train())  # (DDP's hooks live as long as the wrapper)
    loss, _, _ = criterion(wrapped, first_batch(task))
    with pytest.raises(RuntimeError, match="mark a variable ready only once"):
        loss.backward()


def test_online_update_under_ddp(toy_data, teacher_checkpoint, pool, tmp_path):
    """--unlabeled-online trains an update's pseudo pairs as a second sub-batch, the first
    backward inside DDP's no_sync: two updates through DDP give the unwrapped model's losses and
    gradients."""
    from fairseq import optim

    args = online_args(teacher_checkpoint, pool, "--kd-iters", "3")
    cfg = parsed(toy_data, tmp_path, *args)
    tasks_ = [online_task(toy_data, tmp_path, *args)[0] for _ in range(2)]  # a task counts its micro-batches
    for task in tasks_:
        task.load_dataset("valid")
    criterion = tasks_[0].build_criterion(cfg.criterion)
    torch.manual_seed(0)
    student = no_dropout(tasks_[0].build_model(cfg.model)).train()
    wrapped = ddp(copy.deepcopy(student))
    sample = first_batch(tasks_[0])
    for update in (3, 4):
        results = []
        for task, model in zip(tasks_, (student, wrapped)):
            model.zero_grad(set_to_none=True)
            optimizer = optim.build_optimizer(cfg.optimizer, list(model.parameters()))
            loss, _, log = task.train_step(sample, model, criterion, optimizer, update_num=update)
            assert log["pseudo_sentences"] > 0
            grads = {n.replace("module.module.", ""): p.grad.clone() for n, p in model.named_parameters()}
            results.append((loss.detach(), grads))
        (want_loss, want), (got_loss, got) = results
        torch.testing.assert_close(got_loss, want_loss)
        assert want.keys() == got.keys()
        for n in want:
            torch.testing.assert_close(got[n], want[n], rtol=1e-5, atol=1e-7, msg=lambda m, n=n: f"{n}: {m}")
