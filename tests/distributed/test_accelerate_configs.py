"""The launcher configs in configs/accelerate pass accelerate's own validation: the launch command's
(``accelerate launch --config_file ...``: enums, process counts, plugin switches), and for DeepSpeed and
FSDP the plugin dataclasses built from their sections (unknown or misspelled keys fail there).
DeepSpeed itself is GPU-only and not installed here; this is as far as a CPU machine can check it."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

CONFIGS = sorted((Path(__file__).resolve().parents[2] / "configs" / "accelerate").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_launch_config_passes_accelerates_validation(path):
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser

    args = launch_command_parser().parse_args(["--config_file", str(path), "train.py"])
    args, _, _ = _validate_launch_command(args)
    raw = yaml.safe_load(path.read_text())
    assert args.num_processes == raw["num_processes"]
    assert bool(args.use_deepspeed) == (raw["distributed_type"] == "DEEPSPEED")
    assert bool(args.use_fsdp) == (raw["distributed_type"] == "FSDP")


@pytest.mark.parametrize("path", [p for p in CONFIGS if "deepspeed" in p.stem], ids=lambda p: p.stem)
def test_deepspeed_section_builds_accelerates_plugin(path):
    from accelerate.utils import DeepSpeedPlugin

    section = yaml.safe_load(path.read_text())["deepspeed_config"]
    plugin = DeepSpeedPlugin(**section)  # unknown keys: TypeError; bad values: ValueError
    assert plugin.deepspeed_config["zero_optimization"]["stage"] == section["zero_stage"]
    assert plugin.deepspeed_config["gradient_clipping"] == section["gradient_clipping"]


@pytest.mark.parametrize("path", [p for p in CONFIGS if "fsdp" in p.stem], ids=lambda p: p.stem)
def test_fsdp_section_builds_accelerates_plugin(path):
    from accelerate.utils import FullyShardedDataParallelPlugin

    section = yaml.safe_load(path.read_text())["fsdp_config"]
    renamed = {"fsdp_offload_params": "cpu_offload", "fsdp_version": "fsdp_version"}
    kwargs = {renamed.get(k, k.removeprefix("fsdp_")): v for k, v in section.items()}
    plugin = FullyShardedDataParallelPlugin(**kwargs)
    assert plugin.fsdp_version == 2
