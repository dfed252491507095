"""The learn-fast options: predictor lr multiplier, time budget, kNN monitor subsets, multi-crop."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import tiny_byol, tiny_config

from byol import budget, engine, monitor
from byol.augment import BYOLAugment
from byol.budget import budget_steps
from byol.checkpoint import load_checkpoint
from byol.config import ConfigError, load_config, parse_duration
from byol.engine import Trainer
from byol.models.byol import regression_loss
from byol.monitor import monitor_subsets
from byol.optim import LARS, build_optimizer, set_lr, split_decay_groups

# ---------------------------------------------------------------------------------------------
# predictor learning-rate multiplier


def _cfg(**kw):
    return load_config(None, [f"{k}={v}" for k, v in kw.items()]).optim


def test_predictor_lr_mult_puts_exactly_the_predictor_in_its_own_groups():
    model = tiny_byol()
    cfg = _cfg(**{"optim.predictor_lr_mult": 10, "optim.weight_decay": 1e-4})
    opt = build_optimizer([model.online], cfg, 0.5, predictor=model.predictor)
    assert isinstance(opt, LARS)
    pred_ids = {id(p) for p in model.predictor.parameters()}
    online_ids = {id(p) for p in model.online.parameters()}
    mine = [g for g in opt.param_groups if g.get("lr_mult", 1.0) == 10]
    rest = [g for g in opt.param_groups if g.get("lr_mult", 1.0) == 1.0]
    assert {id(p) for g in mine for p in g["params"]} == pred_ids
    assert {id(p) for g in rest for p in g["params"]} == online_ids
    assert all(g["lr"] == pytest.approx(5.0) for g in mine)
    assert all(g["lr"] == pytest.approx(0.5) for g in rest)
    # the same decay / LARS split as the predictor gets on its own
    ref = split_decay_groups([model.predictor], 1e-4)
    for g, r in zip(mine, ref):
        assert [id(p) for p in g["params"]] == [id(p) for p in r["params"]]
        assert g["lars_exclude"] == r["lars_exclude"] and g["weight_decay"] == r["weight_decay"]
    set_lr(opt, 0.2)  # the schedule's lr keeps the multiplier
    assert sorted({round(g["lr"], 6) for g in opt.param_groups}) == [0.2, 2.0]


def test_predictor_lr_mult_one_is_the_paper_two_groups():
    model = tiny_byol()
    opt = build_optimizer([model.online], _cfg(), 0.3, predictor=model.predictor)
    ref = split_decay_groups([model.online, model.predictor], 1e-6)
    assert len(opt.param_groups) == len(ref) == 2
    for g, r in zip(opt.param_groups, ref):
        assert [id(p) for p in g["params"]] == [id(p) for p in r["params"]]
        assert "lr_mult" not in g


def test_predictor_lr_mult_is_validated():
    with pytest.raises(ConfigError, match="predictor_lr_mult"):
        load_config(None, ["optim.predictor_lr_mult=0"])


def test_predictor_lr_mult_trains_the_predictor_faster(tmp_path):
    """One SGD step from the same weights: the predictor moves mult times as far."""
    moved = {}
    for mult in (1, 4):
        torch.manual_seed(0)
        cfg = tiny_config(tmp_path / f"m{mult}", **{"train.max_steps": 1, "optim.name": "sgd",
                                                    "optim.momentum": 0.0, "optim.weight_decay": 0,
                                                    "optim.predictor_lr_mult": mult,
                                                    "optim.warmup_epochs": 0})
        t = Trainer(cfg)
        before = {k: v.clone() for k, v in t.model.state_dict().items()}
        t.train()
        after = t.model.state_dict()
        moved[mult] = {part: sum(float((after[k] - before[k]).abs().sum()) for k in after
                                 if k.startswith(part) and after[k].is_floating_point()
                                 and "running" not in k)
                       for part in ("predictor.", "online.")}
    assert moved[4]["predictor."] == pytest.approx(4 * moved[1]["predictor."], rel=1e-3)
    assert moved[4]["online."] == pytest.approx(moved[1]["online."], rel=1e-3)


# ---------------------------------------------------------------------------------------------
# time budget


@pytest.mark.parametrize("text,seconds", [("10m", 600), ("90s", 90), ("1.5h", 5400), ("", 0),
                                          ("0", 0), (45, 45), ("2min", 120)])
def test_parse_duration(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("bad", ["ten minutes", "5x", "-3m", "m"])
def test_bad_time_budget_is_a_config_error(bad):
    with pytest.raises(ConfigError, match="train.time_budget"):
        load_config(None, [f"train.time_budget={bad}"])


def test_budget_turns_a_rate_into_a_step_count():
    # 600 s budget, 30 s spent on 23 steps, 2 steps/s: 570 s * 0.97 margin * 2 = 1105.8 more
    assert budget_steps(23, 30.0, 600.0, 2.0) == 23 + 1105
    assert budget_steps(23, 30.0, 600.0, 2.0, margin=1.0) == 23 + 1140
    # a monitor costing 5 s every 100 steps: 0.55 s per step
    assert budget_steps(0, 0.0, 110.0, 2.0, monitor_s=5.0, monitor_every=100, margin=1.0) == 200
    # an exhausted budget still ends one step after the last one done
    assert budget_steps(50, 900.0, 600.0, 2.0) == 51


def _fixed_rate(monkeypatch, steps_per_s=1.0, elapsed=2.0):
    monkeypatch.setattr(Trainer, "_budget_inputs", lambda self: (steps_per_s, elapsed))


def test_time_budget_fixes_the_step_count_and_stores_it(tmp_path, monkeypatch):
    _fixed_rate(monkeypatch)  # 1 step/s, 2 s spent when the probe ends: (40 - 2) * 0.97 = 36.86 -> +36 steps
    cfg = tiny_config(tmp_path, **{"train.time_budget": "40s", "train.epochs": 1,
                                   "log.save_every": 100})
    t = Trainer(cfg)
    assert not t.budget_fixed
    res = t.train()
    want = budget_steps(budget.BUDGET_PROBE[1], 2.0, 40.0, 1.0)
    assert res["steps"] == res["total_steps"] == want == budget.BUDGET_PROBE[1] + 36
    ck = load_checkpoint(tmp_path / "last.pt")
    assert ck["schedule"]["total_steps"] == want and ck["schedule"]["budget_fixed"]
    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert any(r.get("budget_total_steps") == want for r in rows)
    # the lr schedule ends at the chosen count: the last logged lr is the cosine's last step
    last = [r for r in rows if "lr" in r][-1]
    assert last["step"] == want and last["lr"] == pytest.approx(
        engine.warmup_cosine(want - 1, want, t.warmup_steps, t.peak_lr), abs=1e-9)


def test_time_budget_resume_ends_at_the_same_step_bitwise(tmp_path, monkeypatch):
    det = {"train.deterministic": True, "train.time_budget": "40s", "log.save_every": 100}
    _fixed_rate(monkeypatch)
    Trainer(tiny_config(tmp_path / "a", **det)).train()
    stop = budget.BUDGET_PROBE[1] + 7  # stopped after the count was fixed
    Trainer(tiny_config(tmp_path / "b", **det, **{"train.max_steps": stop})).train()
    assert load_checkpoint(tmp_path / "b" / "last.pt")["step"] == stop
    _fixed_rate(monkeypatch, steps_per_s=50.0)  # a faster machine must not change the count
    Trainer(tiny_config(tmp_path / "b", **det), resume=str(tmp_path / "b")).train()
    a, b = load_checkpoint(tmp_path / "a" / "last.pt"), load_checkpoint(tmp_path / "b" / "last.pt")
    assert a["step"] == b["step"] == budget.BUDGET_PROBE[1] + 36
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k


def test_recheck_window_sits_in_the_first_part_of_the_run():
    p1 = budget.BUDGET_PROBE[1]
    # 15% of a 4,000-step run: steps 300-600, the second half of the steps before it
    assert budget.recheck_window(0, 4000) == (300, 600)
    # a resumed session counts from its first step; never sooner than 2 x the first probe's end
    assert budget.recheck_window(1000, 1400) == (1000 + p1, 1000 + 2 * p1)
    # too short a run for a second look
    assert budget.recheck_window(0, 4 * p1 - 1) is None


def test_rate_probe_leaves_out_paused_seconds(monkeypatch):
    clock = iter([10.0, 30.0])
    monkeypatch.setattr(budget.time, "perf_counter", lambda: next(clock))
    probe = budget.RateProbe(0, torch.device("cpu"), (100, 200))
    assert not probe.mark(150, paused_s=0.0)  # not a bound of the window: no time read
    assert not probe.mark(100, paused_s=1.0)
    assert probe.mark(200, paused_s=11.0)  # 20 s between the marks, 10 of them in the monitor
    assert probe.rate() == pytest.approx(100 / 10.0)


def test_rate_probe_is_the_median_of_its_chunks_so_one_slow_stretch_does_not_set_it(monkeypatch):
    # 8 chunks of 10 steps over steps 100-180: 1 s each, except the third (another program
    # starting: 6 s) -> the median chunk rate is 10 steps/s where the whole window's mean is 80/13
    seconds = [1.0, 1.0, 6.0, 1.0, 1.0, 1.0, 1.0, 1.0]
    times = [0.0]
    for s in seconds:
        times.append(times[-1] + s)
    clock = iter(times)
    monkeypatch.setattr(budget.time, "perf_counter", lambda: next(clock))
    probe = budget.RateProbe(0, torch.device("cpu"), (100, 180), chunks=8)
    assert probe.bounds == list(range(100, 181, 10))
    done = [probe.mark(step) for step in range(95, 185)]
    assert done.count(True) == 1 and done[180 - 95]  # complete at the window's end, only there
    assert len(probe.marks) == 9
    assert sorted(probe.chunk_rates()) == pytest.approx([10 / 6] + [10.0] * 7)
    assert probe.rate() == pytest.approx(10.0)
    # a window shorter than its chunk count is timed step by step
    assert budget.RateProbe(0, torch.device("cpu"), (10, 13), chunks=8).bounds == [10, 11, 12, 13]
    # the first probe (40 steps) is one window, as the engine makes it
    assert budget.RateProbe(0, torch.device("cpu")).bounds == list(budget.BUDGET_PROBE)


def _rates(monkeypatch, reads, windows=None):
    """The i-th budget decision reads ``reads[i]`` (steps/s, elapsed s; the last one from then
    on); returns the steps at which they were read. ``windows`` gets each probe's chunk bounds."""
    seen = []
    windows = [] if windows is None else windows

    def inputs(self):
        seen.append(self.state.step)
        windows.append(self._rate.bounds)
        return reads[min(len(seen), len(reads)) - 1]

    monkeypatch.setattr(Trainer, "_budget_inputs", inputs)
    return seen


def _two_rates(monkeypatch, first=(1.0, 2.0), second=(0.5, 100.0), windows=None):
    """The probe reads ``first`` (steps/s, elapsed s); the re-check reads ``second``. Returns
    the steps at which they were read; ``windows`` gets each probe's chunk bounds."""
    return _rates(monkeypatch, [first, second], windows)


def test_time_budget_is_checked_again_later_and_the_second_count_holds(tmp_path, monkeypatch):
    # probe: 1 step/s, 2 s spent at step 50 of a 200-s budget -> 50 + int(198 * 0.97) = 242 steps;
    # re-check over steps 50-100 (2 x the probe's end, past 15% of 242): 0.5 steps/s, 100 s spent
    # -> 100 + int(100 * 0.97 * 0.5) = 148 steps, where the run ends
    windows = []
    seen = _two_rates(monkeypatch, windows=windows)
    cfg = tiny_config(tmp_path, **{"train.time_budget": "200s", "train.epochs": 1,
                                   "log.save_every": 1000})
    res = Trainer(cfg).train()
    p1 = budget.BUDGET_PROBE[1]
    assert seen == [p1, 2 * p1]
    # the first probe is one window; the re-check's is timed in BUDGET_CHUNKS chunks (median)
    assert windows == [list(budget.BUDGET_PROBE), [50, 56, 62, 69, 75, 81, 88, 94, 100]]
    first, final = budget_steps(p1, 2.0, 200.0, 1.0), budget_steps(2 * p1, 100.0, 200.0, 0.5)
    assert (first, final) == (242, 148)
    assert res["steps"] == res["total_steps"] == final
    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["budget_total_steps"] for r in rows if "budget_total_steps" in r] == [first, final]
    ck = load_checkpoint(tmp_path / "last.pt")
    assert ck["schedule"]["total_steps"] == final and ck["schedule"]["budget_final"]


def test_time_budget_resume_after_the_recheck_is_bitwise(tmp_path, monkeypatch):
    det = {"train.deterministic": True, "train.time_budget": "200s", "train.epochs": 1,
           "log.save_every": 1000}
    _two_rates(monkeypatch)
    Trainer(tiny_config(tmp_path / "a", **det)).train()
    _two_rates(monkeypatch)
    stop = 2 * budget.BUDGET_PROBE[1] + 5  # stopped after the re-check
    Trainer(tiny_config(tmp_path / "b", **det, **{"train.max_steps": stop})).train()
    seen = _two_rates(monkeypatch, first=(50.0, 1.0), second=(50.0, 1.0))
    Trainer(tiny_config(tmp_path / "b", **det), resume=str(tmp_path / "b")).train()
    assert seen == []  # the stored count is final: no new measurement
    a, b = load_checkpoint(tmp_path / "a" / "last.pt"), load_checkpoint(tmp_path / "b" / "last.pt")
    assert a["step"] == b["step"] == 148
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k


def test_late_windows_sit_at_half_three_quarters_and_near_the_end_of_the_run():
    # a 4,000-step session whose re-check ended at step 600: steps 1,600-2,000, 2,600-3,000
    # and 3,400-3,680
    assert budget.late_windows(0, 4000, 600) == [(1600, 2000), (2600, 3000), (3400, 3680)]
    # placed on the session's own steps, and only those still to come
    assert budget.late_windows(1000, 5000, 2700) == [(3600, 4000), (4400, 4680)]
    # none in a run whose re-check came late, nor where a window would span under 2 chunks
    assert budget.late_windows(0, 148, 100) == []
    assert budget.late_windows(0, 100, 0) == []


# probe at 50: 1 step/s, 2 s spent of 260 -> 50 + int(258 * 0.97) = 300; re-check over 50-100:
# 1 step/s, 52 s spent -> 100 + int(208 * 0.97) = 301; late checks over 40-50% and 65-75% of it
_SLOWER = [(1.0, 2.0), (1.0, 52.0), (0.5, 160.0)]  # at step 150: 150 + int(100 * .97 * .5) = 198
# consistent with 3 steps/s from the first late check on (steps 150 / 293 / 440)
_FASTER = [(1.0, 2.0), (1.0, 52.0), (3.0, 110.0), (3.0, 158.0), (3.0, 207.0)]
# 1 step/s through the first late check (step 150), 3 steps/s at the second (step 227)
_FASTER_LAST = [(1.0, 2.0), (1.0, 52.0), (1.0, 102.0), (3.0, 127.0)]


def _late_run(tmp_path, monkeypatch, reads):
    """A run with a 260-s budget whose budget decisions read ``reads`` (see ``_rates``): the
    trainer, its result, the steps the rates were read at, the counts decided and the last
    logged lr row."""
    seen = _rates(monkeypatch, reads)
    t = Trainer(tiny_config(tmp_path, **{"train.time_budget": "260s", "train.epochs": 1,
                                         "log.save_every": 1000}))
    res = t.train()
    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    counts = [r["budget_total_steps"] for r in rows if "budget_total_steps" in r]
    return t, res, seen, counts, [r for r in rows if "lr" in r][-1]


def test_a_late_check_shortens_the_count_on_a_machine_that_slowed_down(tmp_path, monkeypatch):
    t, res, seen, counts, last = _late_run(tmp_path, monkeypatch, _SLOWER)
    assert seen == [50, 100, 150]  # after the first late check the run is too short for another
    assert budget_steps(150, 160.0, 260.0, 0.5) == 198
    assert res["steps"] == res["total_steps"] == 198
    assert counts == [300, 301, 198]
    # the schedules end at the shortened count
    assert last["step"] == 198 and last["lr"] == pytest.approx(
        engine.warmup_cosine(197, 198, t.warmup_steps, t.peak_lr), abs=1e-9)
    ck = load_checkpoint(tmp_path / "last.pt")
    assert ck["schedule"]["total_steps"] == 198 and ck["schedule"]["budget_final"]


def test_the_first_late_check_lengthens_the_count_on_a_machine_that_sped_up(tmp_path, monkeypatch):
    # 3x faster after the re-check: at step 150, 110 s spent of 260 -> 150 + int(150 * .97 * 3)
    # = 586 steps; the later checks are placed on that count and hold it (they could only
    # shorten it: at step 293, 293 + int(102 * .97 * 3) = 589 stays 586; at 539 likewise)
    t, res, seen, counts, last = _late_run(tmp_path, monkeypatch, _FASTER)
    assert budget_steps(150, 110.0, 260.0, 3.0) == 586
    assert budget.late_windows(0, 586, 150) == [(234, 293), (381, 440), (498, 539)]
    assert seen == [50, 100, 150, 293, 440, 539]
    assert res["steps"] == res["total_steps"] == 586
    assert counts == [300, 301, 586, 586, 586, 586]
    assert last["step"] == 586 and last["lr"] == pytest.approx(
        engine.warmup_cosine(585, 586, t.warmup_steps, t.peak_lr), abs=1e-9)


def test_the_last_late_check_never_lengthens_the_run(tmp_path, monkeypatch):
    # the first late check (step 150, same rate) keeps ~the count: 150 + int(158 * .97) = 303;
    # the second (step 227) and the third (step 279) read 3x the rate: 227 + int(133 * .97 * 3)
    # = 614, but they may only shorten the count, so the run ends at 303
    _, res, seen, counts, _ = _late_run(tmp_path, monkeypatch, _FASTER_LAST)
    assert seen == [50, 100, 150, 227, 279]
    assert budget_steps(227, 127.0, 260.0, 3.0) > 303
    assert res["steps"] == res["total_steps"] == 303
    assert counts == [300, 301, 303, 303, 303]


def test_the_third_late_check_shortens_the_count_of_a_machine_that_kept_slowing(tmp_path, monkeypatch):
    # 1 step/s through the second late check (303 steps, windows 197-227 and 258-279 on it),
    # then half that: at step 279, 231 s spent -> 279 + int(29 * .97 * .5) = 293
    reads = [(1.0, 2.0), (1.0, 52.0), (1.0, 102.0), (1.0, 179.0), (0.5, 231.0)]
    _, res, seen, counts, _ = _late_run(tmp_path, monkeypatch, reads)
    assert budget.late_windows(0, 303, 150) == [(197, 227), (258, 279)]
    assert seen == [50, 100, 150, 227, 279]
    assert counts == [300, 301, 303, 303, 293]
    assert res["steps"] == res["total_steps"] == 293


def test_time_budget_resume_after_a_late_check_is_bitwise(tmp_path, monkeypatch):
    det = {"train.deterministic": True, "train.time_budget": "260s", "train.epochs": 1,
           "log.save_every": 1000}
    _rates(monkeypatch, _SLOWER)
    Trainer(tiny_config(tmp_path / "a", **det)).train()
    _rates(monkeypatch, _SLOWER)
    Trainer(tiny_config(tmp_path / "b", **det, **{"train.max_steps": 160})).train()
    seen = _rates(monkeypatch, [(50.0, 1.0)])
    Trainer(tiny_config(tmp_path / "b", **det), resume=str(tmp_path / "b")).train()
    assert seen == []  # the stored count is final: no new measurement
    a, b = load_checkpoint(tmp_path / "a" / "last.pt"), load_checkpoint(tmp_path / "b" / "last.pt")
    assert a["step"] == b["step"] == 198
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k


def test_no_budget_keeps_the_epochs_schedule(tmp_path):
    t = Trainer(tiny_config(tmp_path))
    assert t.budget_fixed and t.total_steps == 8 and t.num_epochs == 2


# ---------------------------------------------------------------------------------------------
# kNN monitor


def test_monitor_subsets_are_fixed_by_the_seed_and_held_out():
    b1, q1 = monitor_subsets(1000, 1000, 300, 100, seed=3, same_images=True)
    b2, q2 = monitor_subsets(1000, 1000, 300, 100, seed=3, same_images=True)
    b3, _ = monitor_subsets(1000, 1000, 300, 100, seed=4, same_images=True)
    assert torch.equal(b1, b2) and torch.equal(q1, q2) and not torch.equal(b1, b3)
    assert len(b1) == 300 and len(q1) == 100
    assert not set(b1.tolist()) & set(q1.tolist())  # no query is in the bank
    b, q = monitor_subsets(1000, 200, 0, 50, seed=0, same_images=False)
    assert len(b) == 1000 and len(q) == 50 and int(q.max()) < 200


def test_monitor_never_queries_training_images_of_the_same_split(tmp_path):
    cfg = tiny_config(tmp_path, **{"data.val_split": "train", "log.knn_every_steps": 4,
                                   "log.knn_bank": 40, "log.knn_queries": 16, "log.knn_k": 5})
    t = Trainer(cfg)
    t.train()
    idx = t.monitor.indices
    assert idx["same_images"] and len(idx["bank"]) == 40 and len(idx["queries"]) == 16
    assert not set(idx["bank"].tolist()) & set(idx["queries"].tolist())
    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    knn = [r for r in rows if "knn_top1_k5" in r]
    assert [r["step"] for r in knn] == [0, 4, 8]  # at init, every 4 steps, the end
    assert all(r["elapsed_s"] >= 0 for r in knn)
    assert knn[0]["elapsed_s"] <= knn[-1]["elapsed_s"]


# ---------------------------------------------------------------------------------------------
# multi-crop


def test_local_views_shapes_and_order():
    cfg = load_config(None, ["augment.image_size=16", "augment.local_crops=3",
                             "augment.interpolation=bilinear"]).augment
    aug = BYOLAugment(cfg, 3)
    images = torch.randint(0, 256, (5, 3, 20, 20), dtype=torch.uint8)
    g = torch.Generator().manual_seed(0)
    local = aug.local_views(images, g)
    assert local.shape == (15, 3, 8, 8)  # 3 crops x 5 images, half of image_size


def test_multicrop_loss_is_the_mean_over_pairs():
    model = tiny_byol(fuse_views=False)
    torch.manual_seed(1)
    v1, v2 = torch.randn(4, 3, 16, 16), torch.randn(4, 3, 16, 16)
    local = torch.randn(8, 3, 8, 8)  # 2 local views of 4 images
    loss, _ = model(v1, v2, local)
    with torch.no_grad():
        z1, z2 = model.online(v1), model.online(v2)
        t1, t2 = model.target(v1), model.target(v2)
        p1, p2 = model.predictor(z1), model.predictor(z2)
        pl = model.predictor(model.online(local)).view(2, 4, -1)
        pairs = [regression_loss(p1, t2), regression_loss(p2, t1)]
        pairs += [regression_loss(p, t) for p in pl for t in (t1, t2)]
    assert float(loss.detach()) == pytest.approx(2 * float(sum(pairs)) / len(pairs), rel=1e-5)
    loss.backward()  # the local views train the online network
    assert model.online.backbone.conv1.weight.grad is not None


def test_multicrop_pretraining_runs_and_folder_data_is_refused(tmp_path):
    cfg = tiny_config(tmp_path / "a", **{"augment.local_crops": 2, "train.max_steps": 2})
    assert Trainer(cfg).train()["steps"] == 2
    from PIL import Image

    root = tmp_path / "imgs"
    root.mkdir()
    for i in range(20):
        Image.new("RGB", (20, 20), (i * 10, 0, 0)).save(root / f"{i}.png")
    cfg = tiny_config(tmp_path / "b", **{"augment.local_crops": 2, "data.source": "unlabeled_folder",
                                         "data.path": str(root), "data.in_memory": False})
    with pytest.raises(engine.TrainingError, match="augment.local_crops"):
        Trainer(cfg)


def test_report_draws_knn_against_minutes_only_when_timed(tmp_path):
    from byol.eval.plots import plot_training

    m = tmp_path / "metrics.jsonl"
    m.write_text('{"step": 0, "epoch": 0, "elapsed_s": 3.0, "knn_top1_k20": 70.0}\n'
                 '{"step": 5, "epoch": 0.5, "loss": 3.0, "lr": 0.1, "tau": 0.99}\n'
                 '{"step": 10, "epoch": 1, "elapsed_s": 63.0, "knn_top1_k20": 80.0}\n')
    names = {p.name for p in plot_training(m, tmp_path / "a")}
    assert names == {"loss.png", "knn.png", "knn_minutes.png"}
    m.write_text('{"step": 10, "epoch": 1, "knn_top1_k20": 80.0}\n')
    assert {p.name for p in plot_training(m, tmp_path / "b")} == {"knn.png"}


def test_total_steps_sets_the_schedule_length(tmp_path):
    cfg = tiny_config(tmp_path, **{"train.total_steps": 5, "train.epochs": 1})
    t = Trainer(cfg)
    assert t.total_steps == 5 and t.num_epochs == 2  # 4 steps per epoch
    assert t.train()["steps"] == 5
    with pytest.raises(ConfigError, match="total_steps"):
        load_config(None, ["train.total_steps=5", "train.time_budget=1m"])


def test_monitor_verdict_compares_the_last_point_with_the_init_point():
    rows = [{"step": 0, "knn_top1_k20": 70.0}, {"step": 5, "loss": 1.0},
            {"step": 10, "knn_top1_k20": 74.5}, {"step": 20, "knn_top1_k20": 76.25}]
    assert monitor.monitor_verdict(rows, 20) == {"init": 70.0, "final": 76.25, "gain": 6.25, "step": 20}
    assert monitor.monitor_verdict(rows[1:], 20) is None  # no point at init (a resumed run's tail)
    assert monitor.monitor_verdict(rows[:1], 20) is None  # no point after it
    assert monitor.monitor_verdict(rows, 5) is None  # another k


def test_a_run_that_did_not_help_says_so(tmp_path, caplog, monkeypatch):
    monkeypatch.setattr(monitor, "HELPED_MARGIN", 1000.0)  # no tiny run gains 1000 points
    cfg = tiny_config(tmp_path, **{"log.knn_every_steps": 4, "log.knn_bank": 40,
                                   "log.knn_queries": 16, "log.knn_k": 5})
    with caplog.at_level("INFO", logger="byol"):
        res = Trainer(cfg).train()
    v = res["knn_monitor"]
    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    knn = [r["knn_top1_k5"] for r in rows if "knn_top1_k5" in r]
    assert (v["init"], v["final"], v["step"]) == (knn[0], knn[-1], res["steps"])
    assert v["gain"] == round(knn[-1] - knn[0], 2)
    assert json.loads((tmp_path / "train_result.json").read_text())["knn_monitor"] == v
    text = caplog.text
    assert "vs the same network at random init" in text
    assert "has not (yet) improved the features" in text and "crop_scale" in text
    # colour images (the synthetic source) seen mostly in colour: the colour shortcut is named
    assert cfg.model.in_chans == 3 and "grayscale_p=0.8" in text


def test_the_colour_hint_is_only_for_colour_views(tmp_path):
    base = {"log.knn_every_steps": 4}
    hint = monitor.KnnMonitor._colour_hint
    for extra, wanted in (({}, True),
                          ({"augment.view1.grayscale_p": 0.8, "augment.view2.grayscale_p": 0.8}, False),
                          ({"model.in_chans": 1, "augment.mean": "[0.5]", "augment.std": "[0.25]"}, False)):
        cfg = tiny_config(tmp_path, **base, **extra)
        holder = type("M", (), {"cfg": cfg})()
        assert bool(hint(holder)) is wanted, extra


def test_a_monitor_point_before_any_log_row_of_an_epoch_with_the_bar_off(tmp_path):
    """log.progress=false gives a disabled tqdm, which has no postfix until one is set: a monitor
    point that comes before the epoch's first log row must not crash the run (it did, at step
    2,000 of a 10-minute run on generated shapes)."""
    cfg = tiny_config(tmp_path, **{"log.knn_every_steps": 2, "log.knn_bank": 40,
                                   "log.knn_queries": 16, "log.knn_k": 5, "log.log_every": 1000,
                                   "log.progress": False})
    res = Trainer(cfg).train()
    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "knn_top1_k5" in r] == list(range(0, res["steps"] + 1, 2))


def test_the_verdict_knows_the_monitors_noise(tmp_path, caplog):
    # one standard error of a difference of two accuracies on n queries each
    assert monitor.verdict_noise(50.0, 50.0, 100) == pytest.approx(100 * (0.5 / 100) ** 0.5, abs=0.01)
    assert monitor.verdict_noise(10.6, 12.6, 500) == pytest.approx(2.03, abs=0.01)
    assert monitor.verdict_noise(70.0, 77.0, 4000) < monitor.verdict_noise(70.0, 77.0, 1000)
    cfg = tiny_config(tmp_path, **{"log.out_dir": str(tmp_path)})
    m = monitor.KnnMonitor(cfg, torch.device("cpu"), True)
    m.indices = {"bank": list(range(2000)), "queries": list(range(500))}
    v = {"init": 10.6, "final": 12.6, "gain": 2.0, "step": 4243}
    v["noise"] = m.noise(v)
    with caplog.at_level("INFO", logger="byol"):
        m.say_verdict(v)
    assert "not clearly ahead" in caplog.text and "2.0 points with bank 2000" in caplog.text
    assert "has not (yet) improved" not in caplog.text
    caplog.clear()
    with caplog.at_level("INFO", logger="byol"):
        m.say_verdict({**v, "final": 30.6, "gain": 20.0})  # far above the noise: no warning
    assert "WARNING" not in caplog.text
