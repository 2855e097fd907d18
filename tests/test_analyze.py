"""analyze: layer similarity, MLP replacement errors, the auto plan search, heatmap, CLI."""

import itertools
import json
import math

import mlx.core as mx
import numpy as np
import pytest

from sharp_mlx import analyze, evaluate, models
from sharp_mlx.accounting import account_model
from sharp_mlx.plan import SharingPlan, parse_plan
from sharp_mlx.sharp import build_sharp, recovery_config


@pytest.fixture(scope="module")
def loaded(tiny_llama):
    model, tokenizer, _, _ = models.load_base(str(tiny_llama), dtype="float32")
    return model, tokenizer


@pytest.fixture(scope="module")
def calibration(loaded, text_dir):
    return analyze.calibration_data(str(text_dir), loaded[1], tokens=192, seq_len=64)


def test_self_error_is_zero_and_band_is_measured(loaded, calibration):
    model, _ = loaded
    result = analyze.analyze_layers(model, calibration, distance=2, batch_size=2)
    num_layers = len(model.layers)
    assert result.tokens == 192 and result.num_layers == num_layers
    assert np.allclose(np.diag(result.errors), 0)
    assert np.allclose(np.diag(result.cosine), 1, atol=1e-5)
    assert np.allclose(result.cosine, result.cosine.T, atol=1e-6)
    for t, r in itertools.product(range(num_layers), repeat=2):
        assert np.isnan(result.errors[t, r]) == (abs(t - r) > 2)
        if 0 < abs(t - r) <= 2:
            assert result.errors[t, r] > 0
    assert np.all((result.block_influence >= 0) & (result.block_influence <= 2))
    assert np.all((result.mlp_share > 0) & np.isfinite(result.mlp_share))
    assert result.svd_errors is None
    assert len(result.candidates()) == 2 * (5 + 4)  # |t - r| = 1 and 2
    for module in model.layers:  # recording swapped the classes back
        assert not type(module).__name__.startswith("Recording")
        assert not type(module.mlp).__name__.startswith("Recording")


def manual_states(model, tokens):
    """Per layer: (input, post-attention-norm MLP input, MLP output, output), by hand."""
    h = model.model.embed_tokens(tokens)
    states = []
    for layer in model.layers:
        x = h
        h = x + layer.self_attn(layer.input_layernorm(x), "causal", None)
        mlp_in = layer.post_attention_layernorm(h)
        mlp_out = layer.mlp(mlp_in)
        h = h + mlp_out
        states.append((x, mlp_in, mlp_out, h))
    return states


def test_measures_match_a_hand_computation(loaded, calibration):
    model, _ = loaded
    result = analyze.analyze_layers(model, calibration, distance=1, batch_size=3)
    states = manual_states(model, mx.array(calibration.tokens[:, :-1]))

    def flat(x):
        return np.array(x.reshape(-1, x.shape[-1]))

    t, r = 3, 2
    _, x, y, out = states[t]
    y_r = model.layers[r].mlp(x)
    error = float(mx.square(y_r - y).sum() / mx.square(y).sum())
    assert result.errors[t, r] == pytest.approx(error, rel=1e-4)
    assert result.mlp_share[t] == pytest.approx(float(mx.square(y).sum() /
                                                      mx.square(out).sum()), rel=1e-4)
    a, b = flat(states[t][0]), flat(out)
    cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert result.block_influence[t] == pytest.approx(1 - cos.mean(), abs=1e-5)
    o1, o5 = flat(states[1][3]), flat(states[5][3])
    cos15 = (o1 * o5).sum(1) / np.linalg.norm(o1, axis=1) / np.linalg.norm(o5, axis=1)
    assert result.cosine[1, 5] == pytest.approx(cos15.mean(), abs=1e-5)
    residual = result.matrix("raw", "residual")
    assert residual[t, r] == pytest.approx(error * result.mlp_share[t], rel=1e-6)


def test_svd_error_at_full_rank_is_zero(loaded, calibration):
    model, _ = loaded
    full = recovery_config("lora", rank=64)  # 64 = min(64, 128): the SVD start is exact
    result = analyze.analyze_layers(model, calibration, 1, svd_recovery=full)
    errors = np.array(list(result.candidates("svd").values()))
    assert errors.max() < 1e-6
    low = analyze.analyze_layers(model, calibration, 1, svd_recovery=recovery_config(rank=8))
    assert low.svd_rank == 8 and np.allclose(low.errors, result.errors, equal_nan=True)


def brute_force(candidates, num_layers, num_targets, keep=()):
    best = math.inf
    for targets in itertools.combinations(range(num_layers), num_targets):
        if set(targets) & set(keep):
            continue
        total = 0.0
        for t in targets:
            errors = [e for (tt, r), e in candidates.items() if tt == t and r not in targets]
            if not errors:
                total = math.inf
                break
            total += min(errors)
        best = min(best, total)
    return best


@pytest.mark.parametrize("distance", [1, 2, 3])
def test_choose_plan_is_optimal(distance):
    rng = np.random.default_rng(distance)
    num_layers = 8
    candidates = {(t, r): float(rng.uniform(0.1, 2)) for t in range(num_layers)
                  for r in range(num_layers) if t != r and abs(t - r) <= distance}
    for num_targets in range(0, 7):
        optimum = brute_force(candidates, num_layers, num_targets, keep=(0,))
        if math.isinf(optimum):
            with pytest.raises(ValueError, match="no valid plan"):
                analyze.choose_plan(candidates, num_layers, num_targets, keep=(0,))
            continue
        mapping, total = analyze.choose_plan(candidates, num_layers, num_targets, keep=(0,))
        SharingPlan(mapping, num_layers)  # valid: no chains, in range
        assert len(mapping) == num_targets and 0 not in mapping
        assert total == pytest.approx(optimum)
        assert total == pytest.approx(sum(candidates[t, r] for t, r in mapping.items()))


def test_choose_plan_adjacent_limit():
    candidates = {(t, r): 1.0 for t in range(6) for r in range(6) if abs(t - r) == 1}
    mapping, _ = analyze.choose_plan(candidates, 6, 4)  # T K T T K T
    assert sorted(mapping) == [0, 2, 3, 5] and set(mapping.values()) == {1, 4}
    with pytest.raises(ValueError, match="no valid plan"):
        analyze.choose_plan(candidates, 6, 5)


def test_suggest_plan_meets_its_budget_with_fewest_targets(loaded, text_dir):
    model, tokenizer = loaded
    recovery = recovery_config("lora", rank=4)
    for budget in (0.1, 0.3, 0.5):
        plan = analyze.suggest_plan(model, tokenizer, budget, recovery, data=str(text_dir),
                                    tokens=128, seq_len=64, distance=2, keep=(0,))
        assert isinstance(plan, SharingPlan) and 0 not in plan.mapping
        assert account_model(model, plan, recovery).net_mlp_saving >= budget
        fewer = SharingPlan(dict(list(plan.mapping.items())[1:]), plan.num_layers)
        assert account_model(model, fewer, recovery).net_mlp_saving < budget
    with pytest.raises(ValueError, match="no valid plan"):
        analyze.suggest_plan(model, tokenizer, 0.9, recovery, data=str(text_dir), tokens=128,
                             seq_len=64, distance=1)


def test_suggest_plan_prefers_the_least_error(loaded, calibration):
    model, tokenizer = loaded
    analysis = analyze.analyze_layers(model, calibration, distance=1)
    recovery = recovery_config("lora", rank=4)
    for normalize in analyze.NORMALIZE:  # one target: the single least-error pair
        plan = analyze.suggest_plan(model, tokenizer, 0.1, recovery, analysis=analysis,
                                    normalize=normalize)
        ((t, r),) = plan.mapping.items()
        errors = analysis.candidates("raw", normalize)
        assert errors[t, r] == min(errors.values())


def test_ranking_study_agrees_with_built_sharp_models(loaded, calibration, text_dir, tiny_llama):
    model, tokenizer = loaded
    recovery = recovery_config("lora", rank=4)
    analysis = analyze.analyze_layers(model, calibration, 1, svd_recovery=recovery)
    eval_data = analyze.calibration_data(str(text_dir), tokenizer, 128, 64, split="valid")
    study = analyze.ranking_study(model, analysis, eval_data, recovery)
    assert len(study["pairs"]) == 10
    for key in [k for k in study if k.startswith("spearman_")]:
        assert -1 <= study[key] <= 1
    row = next(p for p in study["pairs"] if (p["target"], p["reference"]) == (4, 5))

    def rise(init):
        config = models.load_base(str(tiny_llama))[2]
        sharp, _ = build_sharp(model, config, SharingPlan({4: 5}, 6), recovery, init)
        sums, counts = evaluate.window_losses(sharp, eval_data)
        return float(sums.sum() / counts.sum()) - study["base_nll"]

    assert row["direct_nll_rise"] == pytest.approx(rise("zero"), abs=1e-4)
    assert row["svd_nll_rise"] == pytest.approx(rise("svd"), abs=1e-4)


def test_spearman():
    assert analyze.spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1)
    assert analyze.spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1)
    assert analyze.spearman([1, 2, 2, 3], [1, 2, 2, 3]) == pytest.approx(1)


def test_cli_table_heatmap_plan_and_json(tiny_llama, text_dir, tmp_path, capsys):
    png, out, report = tmp_path / "heat.png", tmp_path / "plan.json", tmp_path / "a.json"
    analyze.main(["--model", str(tiny_llama), "--data", str(text_dir), "--tokens", "128",
                  "--seq-len", "64", "--distance", "2", "--rank", "4", "--suggest",
                  "--budget", "0.3", "--keep", "0,5", "--rank-by", "svd", "--png", str(png),
                  "-o", str(out), "--json", str(report)])
    printed = capsys.readouterr().out
    assert "mlp t-2" in printed and "svd-res t+1" in printed and "auto plan" in printed
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 20_000
    document = json.loads(out.read_text())
    plan = parse_plan(str(out), 6)
    assert plan.to_json() == document["plan"] and not {0, 5} & set(plan.mapping)
    assert document["net_mlp_saving"] >= 0.3 and document["rank_by"] == "svd"
    assert set(document["errors"]) == {str(t) for t in plan.mapping}
    data = json.loads(report.read_text())
    assert len(data["cosine"]) == 6 and len(data["block_influence"]) == 6
    assert data["suggested"]["plan"] == document["plan"]


def test_cli_reports_errors(tiny_llama, capsys):
    with pytest.raises(SystemExit):
        analyze.main(["--model", str(tiny_llama), "--data", "/nonexistent"])
    assert "error:" in capsys.readouterr().err


@pytest.mark.slow
def test_default_model_analysis_and_auto_plan():
    model, tokenizer, _, _ = models.load_base(None, dtype="float32")
    calibration = analyze.calibration_data("wiki", tokenizer, 512)
    result = analyze.analyze_layers(model, calibration, distance=1)
    assert result.num_layers == 30 and np.allclose(np.diag(result.errors), 0)
    assert np.all(np.isfinite(list(result.candidates().values())))
    recovery = recovery_config("lora", rank=64)
    plan = analyze.suggest_plan(model, tokenizer, 0.5, recovery, analysis=result)
    assert len(plan.mapping) == 18  # 18 targets at rank 64 save 50.8% net (plan.py's table)
    assert account_model(model, plan, recovery).net_mlp_saving >= 0.5


def test_a_sharp_model_is_analyzed_folded(tiny_llama, tmp_path, calibration):
    from sharp_mlx.convert import main as convert_main

    out = tmp_path / "sharp"
    convert_main(["--model", str(tiny_llama), "--plan", '{"2": 1}', "--rank", "4",
                  "--dtype", "float32", "-o", str(out)])
    model, _, config, _ = analyze.load_plain_model(str(out))
    assert config["model_type"] == "llama" and len(model.layers) == 6
    result = analyze.analyze_layers(model, calibration, distance=1)
    assert np.all(np.isfinite(list(result.candidates().values())))
    sharp, *_ = models.load_base(str(out), dtype="float32")
    with pytest.raises(ValueError, match="fold"):
        analyze.analyze_layers(sharp, calibration)
