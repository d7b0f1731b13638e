"""Which config differences refuse a resume: an option the checkpoint's vlalign did not have yet is no
difference while it keeps its default, and is one as soon as it is set to something else."""

from __future__ import annotations

import copy

from vlalign.trainers.reward_model import RewardModelConfig
from vlalign.trainers.run_folder import config_defaults, resume_changes


def _cfg(**model):
    return RewardModelConfig(model={"name_or_path": "m", **model}, data={"train": "d"}, output_dir="o")


def test_a_key_the_checkpoint_lacks_is_no_change_at_its_default():
    cfg = _cfg()
    saved = cfg.model_dump(mode="json")
    del saved["model"]["heads"]  # written before the option existed
    assert config_defaults(cfg)["model.heads"] == 1
    assert resume_changes(saved, cfg.model_dump(mode="json"), [], config_defaults(cfg)) == []


def test_a_missing_key_set_to_another_value_is_a_change():
    saved = _cfg().model_dump(mode="json")
    del saved["model"]["heads"]
    cfg = _cfg(heads=4)
    assert resume_changes(saved, cfg.model_dump(mode="json"), [], config_defaults(cfg)) == ["model.heads: None -> 4"]


def test_a_changed_value_stays_a_change_whatever_the_defaults():
    cfg = _cfg()
    saved = copy.deepcopy(cfg.model_dump(mode="json"))
    saved["learning_rate"] = 3e-4
    assert resume_changes(saved, cfg.model_dump(mode="json"), [], config_defaults(cfg)) == [
        "learning_rate: 0.0003 -> 1e-05"]
