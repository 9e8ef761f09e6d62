import torch
import torch.nn.functional as F

from sar_core.objectives import ObjectiveConfig, RolloutDraw, build_objective, stagger_scale_rollout
from sar_core.token_sampling import SamplingConfig, filter_logits

from .conftest import hand_inputs, hand_upsample

UNFILTERED = SamplingConfig(cfg=0.0, top_k=0, top_p=0.0)


def argmax_maps(logits, schedule):
    return [scale.argmax(-1) for scale in schedule.split(logits)]


def run(recorder, batch, seed=0, **config):
    return build_objective(ObjectiveConfig(kind="sar", **config))(recorder, batch, 0, torch.Generator().manual_seed(seed))


def test_student_sees_at_scale_i_plus_1_the_upsampled_token_drawn_from_the_teachers_scale_i(recorder, batch):
    run(recorder, batch, sampling="argmax")
    teacher, student = recorder.calls
    codebook = recorder.module.codebook
    assert torch.equal(teacher.x, hand_inputs(codebook, batch.token_maps(), batch.schedule))  # teacher: ground truth
    expected = hand_inputs(codebook, argmax_maps(teacher.logits, batch.schedule), batch.schedule)
    torch.testing.assert_close(student.x, expected)
    assert not torch.allclose(student.x, teacher.x)
    assert torch.equal(student.label, teacher.label)  # one class dropout for both passes
    assert student.schedule == batch.schedule and not student.x.requires_grad


def test_deeper_rollouts_feed_each_pass_from_the_previous_one(recorder, batch):
    run(recorder, batch, sampling="argmax", rollout_depth=3)
    teacher, second, third, student = recorder.calls
    codebook, schedule = recorder.module.codebook, batch.schedule
    feed = schedule.scales[:-1]  # intermediate passes only need the scales that feed the graded ones
    assert second.schedule.scales == feed and third.schedule.scales == feed and student.schedule == schedule
    torch.testing.assert_close(second.x, hand_inputs(codebook, argmax_maps(teacher.logits, schedule)[:3], second.schedule))
    torch.testing.assert_close(third.x, hand_inputs(codebook, argmax_maps(second.logits, second.schedule), third.schedule))
    torch.testing.assert_close(student.x, hand_inputs(codebook, argmax_maps(third.logits, third.schedule), schedule))
    assert not second.logits.requires_grad and not third.logits.requires_grad and student.logits.requires_grad


def test_no_gradient_flows_through_sampling_or_into_the_teacher_target(recorder, batch):
    gamma = 0.7
    out = run(recorder, batch, sampling="stochastic", rollout=UNFILTERED, gamma=gamma)
    out.loss.backward()
    teacher, student = recorder.calls
    B, L = batch.tokens.shape
    onehot = F.one_hot(batch.tokens, 64).float()
    # The teacher logits get the teacher-forcing gradient only: nothing from the KL target or the draws.
    torch.testing.assert_close(teacher.logits.grad, (teacher.logits.softmax(-1) - onehot) / (B * L), rtol=1e-4, atol=1e-8)
    # The student logits get gamma * d KL(teacher || student) = gamma * (q - p) / (tokens graded).
    first = batch.schedule.token_counts[0]
    p, q = teacher.logits[:, first:].softmax(-1), student.logits[:, first:].softmax(-1)
    torch.testing.assert_close(student.logits.grad[:, first:], gamma * (q - p) / (B * (L - first)), rtol=1e-4, atol=1e-8)
    assert not student.x.requires_grad


def test_cfg_draws_from_guided_logits_with_the_null_class_pass(recorder, batch):
    # top_k=1 makes a draw the argmax of the logits it is drawn from
    guidance = SamplingConfig(cfg=3.0, cfg_ramp="constant", top_k=1, top_p=0.0)
    run(recorder, batch, sampling="cfg", rollout=guidance)
    teacher, null, student = recorder.calls
    schedule, codebook = batch.schedule, recorder.module.codebook
    assert (null.label == 10).all() and not null.logits.requires_grad
    assert null.schedule.scales == schedule.scales[:-1]  # only the scales that feed others are drawn
    cond = teacher.logits[:, : null.logits.shape[1]].detach()
    guided = cond + 3.0 * (cond - null.logits)
    torch.testing.assert_close(student.x, hand_inputs(codebook, argmax_maps(guided, null.schedule), schedule))
    assert not torch.allclose(student.x, hand_inputs(codebook, argmax_maps(teacher.logits, schedule)[:4], schedule))


def test_argmax_is_deterministic_and_stochastic_draws_follow_the_rng(recorder, batch):
    def student_input(seed, **config):
        recorder.calls.clear()
        run(recorder, batch, seed=seed, **config)
        return recorder.calls[-1].x

    assert torch.equal(student_input(0, sampling="argmax"), student_input(0, sampling="argmax"))
    stochastic = dict(sampling="stochastic", rollout=UNFILTERED)
    a, b = student_input(0, **stochastic), student_input(0, **stochastic)
    assert torch.equal(a, b) and not torch.equal(a, student_input(1, **stochastic))


def test_stochastic_draws_respect_top_k_and_top_p(generator_model, batch):
    schedule, labels = batch.schedule, batch.labels.repeat(8)
    tokens = batch.tokens.repeat(8, 1)
    x = generator_model.scale_inputs(tokens, schedule)
    logits = generator_model(labels, x, schedule)
    for settings in (SamplingConfig(cfg=0.0, top_k=3, top_p=0.0), SamplingConfig(cfg=0.0, top_k=0, top_p=0.5)):
        sampler = RolloutDraw("stochastic", settings)
        ssr = stagger_scale_rollout(generator_model, labels, logits, x, schedule, range(4, 5), sampler, sample_graded=True,
                                    rng=torch.Generator().manual_seed(0))
        drawn = torch.cat(ssr.teacher_samples, dim=1)
        allowed = torch.isfinite(filter_logits(logits, settings.top_k, settings.top_p))
        assert allowed.gather(-1, drawn[..., None]).all()
        assert (allowed.sum(-1) < 64).all() and drawn.unique().numel() > 3  # the filters bite, the draws vary


def test_student_fraction_runs_the_student_on_the_first_rows(recorder, batch):
    run(recorder, batch, sampling="argmax")
    full = recorder.calls[-1].x
    recorder.calls.clear()
    run(recorder, batch, sampling="argmax", student_fraction=0.5)
    teacher, student = recorder.calls
    assert teacher.x.shape[0] == 6 and student.x.shape[0] == 3
    torch.testing.assert_close(student.x, full[:3])


def test_single_scale_student_sees_the_class_token_and_one_upsampled_scale(recorder, batch):
    out = run(recorder, batch, sampling="argmax", csfl_scales="last", student_context="single_scale", csfl_target="teacher_hard")
    teacher, student = recorder.calls
    assert student.schedule.scales == (1, 7)
    drawn_5x5 = argmax_maps(teacher.logits, batch.schedule)[3]
    torch.testing.assert_close(student.x, hand_upsample(recorder.module.codebook, drawn_5x5, 7))
    # hard target: the teacher's own (argmax) token of the 7x7 scale
    expected = F.cross_entropy(student.logits[:, 1:].flatten(0, 1), teacher.logits[:, -49:].argmax(-1).flatten())
    assert abs(out.metrics["loss/csf"] - expected.item()) < 1e-5
    assert [k for k in out.metrics if k.startswith("csf/")] == ["csf/loss/s07"]


def test_random_one_grades_one_transition_drawn_per_step(recorder, batch):
    graded = set()
    for seed in range(12):
        out = run(recorder, batch, seed=seed, sampling="argmax", csfl_scales="random_one")
        keys = [k for k in out.metrics if k.startswith("csf/")]
        assert len(keys) == 1
        graded.add(keys[0])
    assert graded <= {"csf/loss/s02", "csf/loss/s03", "csf/loss/s05", "csf/loss/s07"} and len(graded) >= 3
