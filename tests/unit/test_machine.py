"""The machine description every reported figure carries."""

from __future__ import annotations

from vlalign.machine import best_instruction_set, machine_info, machine_line


def test_widest_instruction_set_wins():
    assert best_instruction_set({"sse2", "avx", "avx2", "avx512f", "avx512bw"}) == "avx512"
    assert best_instruction_set({"sse2", "avx", "avx2"}) == "avx2"
    assert best_instruction_set({"sse2"}) == "default"


def test_machine_info_names_the_kernels_in_use():
    import torch

    info = machine_info()
    assert info["torch_cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert info["torch"] == torch.__version__
    line = machine_line(info)
    assert info["cpu"] in line and f"torch kernels {info['torch_cpu_capability']}" in line
