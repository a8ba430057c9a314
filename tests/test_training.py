import pytest
import torch

from jointdit.flow import FlowConfig
from jointdit.model.jointdit import JointDiT
from jointdit.training import TrainConfig, lr_at, train, validation_loss
from tests.conftest import TINY, randomize, tiny_batch


def test_training_lowers_validation_loss_and_logs():
    torch.manual_seed(0)
    model = JointDiT(TINY)
    data = tiny_batch()
    flow = FlowConfig()
    before = validation_loss(model, data, flow)
    logged = []
    history = train(
        model,
        data,
        data,
        TrainConfig(steps=60, batch_size=6, lr=3e-3, eval_every=30),
        flow,
        log=lambda step, rec: logged.append(step),
        progress=False,
    )
    after = validation_loss(model, data, flow)
    assert after["loss"] < 0.8 * before["loss"]
    assert logged == list(range(1, 61))
    assert [h["step"] for h in history if "val_loss" in h] == [30, 60]


def test_validation_loss_is_deterministic():
    model = JointDiT(TINY)
    data = tiny_batch()
    assert validation_loss(model, data, FlowConfig()) == validation_loss(model, data, FlowConfig())


def test_stage_a_contract_leaves_the_experts_untouched():
    # Stage A starts from trained experts (here: random ones) and fresh, zero-gated joint layers
    model = randomize(JointDiT(TINY))
    for block in model.blocks:
        for mod in (block.joint.video_modulation, block.joint.audio_modulation):
            torch.nn.init.zeros_(mod[1].weight)
            torch.nn.init.zeros_(mod[1].bias)
    frozen_before = {k: v.clone() for k, v in model.state_dict().items() if ".joint." not in k}
    cfg = TrainConfig(steps=5, batch_size=4, trainable=("blocks.*.joint.*",), eval_every=100)
    train(model, tiny_batch(), tiny_batch(), cfg, FlowConfig(), progress=False)
    for k, v in model.state_dict().items():
        if ".joint." in k:
            continue
        torch.testing.assert_close(v, frozen_before[k], rtol=0, atol=0)
    joint_moved = any(
        not torch.equal(p, torch.zeros_like(p))
        for n, p in model.named_parameters()
        if "joint" in n and "modulation" in n
    )
    assert joint_moved


def test_learning_rate_warms_up_then_decays():
    cfg = TrainConfig(steps=100, lr=1.0, warmup_steps=10)
    assert lr_at(0, cfg) == 0.1 and lr_at(9, cfg) == 1.0
    assert lr_at(99, cfg) < 0.2 and lr_at(50, cfg) < lr_at(20, cfg)


def test_bf16_and_checkpointed_training_steps_run():
    torch.manual_seed(0)
    model = randomize(JointDiT(TINY))
    cfg = TrainConfig(steps=2, batch_size=2, grad_checkpointing=True, bf16=True, eval_every=2)
    history = train(model, tiny_batch(), tiny_batch(), cfg, FlowConfig(), progress=False)
    assert all(torch.isfinite(torch.tensor(h["train_loss"])) for h in history)
    assert model.grad_checkpointing


def test_compiled_training_matches_eager():
    results = []
    for compiled in (False, True):
        torch.manual_seed(0)
        model = randomize(JointDiT(TINY))
        cfg = TrainConfig(steps=2, batch_size=2, compile=compiled, eval_every=2)
        results.append(train(model, tiny_batch(), tiny_batch(), cfg, FlowConfig(), progress=False))
    for eager, compiled in zip(*results, strict=True):
        assert abs(eager["train_loss"] - compiled["train_loss"]) < 1e-4


@pytest.mark.parametrize("grad_accum", [0, 5])
def test_grad_accum_outside_the_batch_is_refused(grad_accum):
    cfg = TrainConfig(steps=1, batch_size=4, grad_accum=grad_accum)
    match = rf"grad_accum={grad_accum} .*batch_size=4 over 1 process"
    with pytest.raises(ValueError, match=match):
        train(JointDiT(TINY), tiny_batch(), tiny_batch(), cfg, FlowConfig(), progress=False)
