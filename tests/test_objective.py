"""objective.py: one entry per method.objective, the config's choices, and builders that resolve to what trains."""

from __future__ import annotations

import dataclasses
import math
import typing

import pytest

from tuneforge.config import MethodConfig
from tuneforge.objective import OBJECTIVES, Objective, Scored, log_sigmoid


def test_the_config_offers_exactly_the_objectives_that_have_an_entry():
    choices = typing.get_args(MethodConfig.model_fields["objective"].annotation)
    assert choices == tuple(OBJECTIVES) == ("sft", "dpo", "orpo", "simpo", "kto", "grpo")
    assert all(Objective.of(MethodConfig(objective=name)).name == name for name in choices)


@pytest.mark.parametrize("name", list(OBJECTIVES))
def test_each_objective_names_a_trainer_that_builds_itself_and_arguments_it_accepts(name):
    pytest.importorskip("trl", reason="the [preference] extra (TRL) is not installed")
    from transformers import TrainingArguments

    from tuneforge.train.preference import PreferenceMixin
    from tuneforge.train.run import trainer_class
    from tuneforge.train.trainer import SFTTrainer

    method = MethodConfig(objective=name)
    objective = Objective.of(method)
    args_class, settings = objective.arguments(method, 256)
    assert issubclass(args_class, TrainingArguments)
    assert set(settings) <= {f.name for f in dataclasses.fields(args_class)}
    trainer = trainer_class(objective)
    assert trainer.__name__ == {"sft": "SFTTrainer", "simpo": "SimPOTrainer"}.get(name, f"{name.upper()}Trainer")
    assert issubclass(trainer, SFTTrainer if name == "sft" else PreferenceMixin)
    # What the eval reports and the plots draw follow the same entry: sft has no rewards, kto no pairs, and grpo's
    # rewards are its reward functions' (metrics.jsonl), not a log-ratio of one answer.
    no_reward = name in ("sft", "grpo")
    assert (objective.reward is None, objective.pair_loss is None) == (no_reward, no_reward or name == "kto")


def test_held_out_pair_metrics_follow_trls_formulas():
    chosen, rejected = Scored(logp=-4.0, ref_logp=-6.0, tokens=4), Scored(logp=-9.0, ref_logp=-8.0, tokens=3)
    dpo = OBJECTIVES["dpo"]
    method = MethodConfig(objective="dpo", beta=0.5)
    assert dpo.reward(method, chosen) == 1.0 and dpo.reward(method, rejected) == -0.5
    assert dpo.pair_loss(method, chosen, rejected) == pytest.approx(math.log1p(math.exp(-1.5)))
    hinge = MethodConfig(objective="dpo", beta=0.5, dpo_loss="hinge")
    assert dpo.pair_loss(hinge, chosen, rejected) == 0.0  # margin 1.5 clears the hinge
    ipo = MethodConfig(objective="dpo", beta=0.5, dpo_loss="ipo")
    assert dpo.pair_loss(ipo, chosen, rejected) == pytest.approx((2.0 / 4 - (-1.0) / 3 - 1.0) ** 2)
    simpo = MethodConfig(objective="simpo", beta=2.0, simpo_gamma=0.5)
    assert OBJECTIVES["simpo"].reward(simpo, chosen) == 2.0 * -1.0  # beta times the mean log-prob per token
    assert OBJECTIVES["simpo"].pair_loss(simpo, chosen, rejected) == pytest.approx(-log_sigmoid(2.0 * 2.0 - 0.5))
    orpo = MethodConfig(objective="orpo", beta=0.1)
    log_odds = (-1.0 + 3.0) - (math.log1p(-math.exp(-1.0)) - math.log1p(-math.exp(-3.0)))
    assert OBJECTIVES["orpo"].pair_loss(orpo, chosen, rejected) == pytest.approx(1.0 - 0.1 * log_sigmoid(log_odds))
    assert log_sigmoid(-1000.0) == -1000.0 and log_sigmoid(1000.0) == 0.0  # no overflow at either end
