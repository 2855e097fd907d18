import json

import pytest

from sharp_mlx.accounting import llama_shape_accounting
from sharp_mlx.plan import PlanError, SharingPlan, parse_plan
from sharp_mlx.sharp import recovery_config


@pytest.mark.parametrize("num_layers", [6, 30, 32])
@pytest.mark.parametrize("preset", ["moderate", "aggressive"])
def test_presets_are_valid_and_spare_first_and_last_layers(preset, num_layers):
    plan = parse_plan(preset, num_layers)
    assert plan.mapping
    used = set(plan.mapping) | set(plan.mapping.values())
    assert min(used) >= 2 and max(used) <= num_layers - 2
    assert all(abs(t - r) == 1 for t, r in plan.mapping.items())


def test_aggressive_shares_more_than_moderate():
    assert len(parse_plan("aggressive", 30).mapping) > len(parse_plan("moderate", 30).mapping)


def test_pairs_spec():
    assert parse_plan("pairs:10-15", 30).mapping == {11: 10, 13: 12, 15: 14}


def test_json_forms(tmp_path):
    inline = parse_plan('{"17": 16, "19": 18}', 30)
    file = tmp_path / "plan.json"
    file.write_text(json.dumps({"plan": {"17": 16, "19": 18}}))
    assert parse_plan(str(file), 30) == inline
    assert parse_plan({17: 16, 19: 18}, 30) == inline
    assert inline.to_json() == {"17": 16, "19": 18}


@pytest.mark.parametrize("spec, message", [
    ('{"5": 5}', "to itself"),
    ('{"5": 4, "4": 3}', "chains"),
    ('{"30": 29}', "out of range"),
    ('{"-1": 0}', "out of range"),
    ('{"a": 1}', "integer"),
    ('{"5": }', "not valid JSON"),
    ("pairs:1", "pairs:A-B"),
    ("no-such-preset", "unknown plan"),
    ("missing.json", "does not exist"),
])
def test_invalid_plans_have_clear_errors(spec, message):
    with pytest.raises(PlanError, match=message):
        parse_plan(spec, 30)


def test_accounting_is_net_of_recovery():
    plan = SharingPlan({11: 10, 13: 12}, 30)
    recovery = recovery_config("lora", rank=64)
    acc = llama_shape_accounting(plan, recovery, hidden=576, intermediate=1536, vocab=49152,
                                 heads=9, kv_heads=3, tied=True)
    per_layer = 3 * 576 * 1536
    assert acc.mlp_params_original == 30 * per_layer
    assert acc.mlp_params_stored == 28 * per_layer
    assert acc.recovery_params == 2 * 3 * 64 * (576 + 1536)
    assert acc.net_mlp_saving == pytest.approx(1 - (28 * per_layer + acc.recovery_params)
                                               / (30 * per_layer))
    assert acc.tensor_bytes == 2 * acc.total_params


def test_vectors_recovery_counts_in_plus_out():
    plan = SharingPlan({1: 0}, 2)
    acc = llama_shape_accounting(plan, recovery_config("vectors"), hidden=8, intermediate=16,
                                 vocab=10, heads=2, kv_heads=2, tied=True)
    assert acc.recovery_params == 3 * (8 + 16)
