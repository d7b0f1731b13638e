"""Where a training run's time goes, per phase, measured the same way inside every framework's worker.

Phases (wall-clock seconds and process CPU seconds, summed over the run):

- ``data``: building batches (TRL: its data collator; vlalign: ``EncodedDataset.batch``);
- ``generation``: sampling (``generate``, and the model calls that fill a KV cache for it);
- ``reference``: model calls without gradient outside generation (the reference model's forward; for
  vlalign the reference-cache pass and the RL reference pass);
- ``forward``: model calls with gradient (the policy's forward), plus vlalign's output-layer log-probs;
- ``backward``: ``Tensor.backward`` (autograd over the whole graph, output layer included);
- ``optimizer``: ``Optimizer.step``;
- ``other``: the rest of the run (loading, encoding, loss maths outside model calls, logging, saving).

HOW: global module forward hooks that time the calls of the top-level model class (a call, whatever
replaces the instance's ``forward`` — TRL swaps in its fused LM head), and wrappers around
``GenerationMixin.generate``, ``Tensor.backward`` and the optimizers' step hooks, installed at the
start of the worker before the framework builds anything; nested calls are counted once (the
outermost phase wins). The hooks cost about a microsecond per module call.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from typing import Any

from common import cuda_sync

PHASES = ("data", "generation", "reference", "forward", "backward", "optimizer")


class PhaseClock:
    def __init__(self) -> None:
        self.wall = dict.fromkeys(PHASES, 0.0)
        self.cpu = dict.fromkeys(PHASES, 0.0)
        self.calls = dict.fromkeys(PHASES, 0)
        self._active: str | None = None
        self._t0 = (0.0, 0.0)
        self._undo: list[Callable[[], None]] = []

    # ------------------------------------------------------------------ timing
    def timed(self, phase: str | Callable[..., str], fn: Callable[..., Any]) -> Callable[..., Any]:
        """``fn`` wrapped so its time goes to ``phase`` (or to ``phase(*args, **kwargs)``, decided per call)."""
        clock = self

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            if clock._active is not None:
                return fn(*args, **kwargs)
            clock.start(phase(*args, **kwargs) if callable(phase) else phase)
            try:
                return fn(*args, **kwargs)
            finally:
                clock.stop()

        return wrapper

    def patch(self, owner: Any, attr: str, phase: str | Callable[..., str]) -> None:
        original = getattr(owner, attr)
        setattr(owner, attr, self.timed(phase, original))
        self._undo.append(lambda: setattr(owner, attr, original))

    def start(self, name: str) -> None:
        cuda_sync()
        self._active = name
        self._t0 = (time.perf_counter(), time.process_time())

    def stop(self) -> None:
        cuda_sync()
        name, (w0, c0) = self._active, self._t0
        self.wall[name] += time.perf_counter() - w0
        self.cpu[name] += time.process_time() - c0
        self.calls[name] += 1
        self._active = None

    # ------------------------------------------------------------------ the common hooks
    def install(self, model_classes: list[type], extra: list[tuple[Any, str, str | Callable[..., str]]] | None = None,
                ) -> None:
        """Hook the phases' entry points (see module doc). ``model_classes``: the top-level model
        class(es) whose calls are policy (with gradient) or reference (without) passes; ``extra``:
        framework-specific (owner, attribute, phase) entries such as the data collator."""
        import torch
        from torch.nn.modules.module import register_module_forward_hook, register_module_forward_pre_hook
        from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook
        from transformers.generation.utils import GenerationMixin

        classes = tuple(model_classes)
        timed_module: list[Any] = []  # the model whose call is being timed

        def call_start(module: Any, inputs: Any) -> None:
            if self._active is None and type(module) in classes:
                timed_module.append(module)
                self.start("forward" if torch.is_grad_enabled() else "reference")

        def call_end(module: Any, inputs: Any, output: Any) -> None:
            if timed_module and timed_module[-1] is module:
                timed_module.pop()
                self.stop()

        def step_start(optimizer: Any, args: Any, kwargs: Any) -> None:
            if self._active is None:
                self.start("optimizer")

        def step_end(optimizer: Any, args: Any, kwargs: Any) -> None:
            if self._active == "optimizer":
                self.stop()

        handles = [register_module_forward_pre_hook(call_start), register_module_forward_hook(call_end, always_call=True),
                   register_optimizer_step_pre_hook(step_start), register_optimizer_step_post_hook(step_end)]
        self._undo.extend(h.remove for h in handles)
        self.patch(GenerationMixin, "generate", "generation")
        self.patch(torch.Tensor, "backward", "backward")
        for target, attr, phase in extra or []:
            self.patch(target, attr, phase)

    def uninstall(self) -> None:
        while self._undo:
            self._undo.pop()()

    def report(self, total_wall: float, total_cpu: float) -> dict[str, Any]:
        """Per phase: wall s, CPU s, calls, share of the run's wall time; ``other`` = the rest."""
        rows = {p: {"wall_s": round(self.wall[p], 3), "cpu_s": round(self.cpu[p], 3), "calls": self.calls[p]}
                for p in PHASES}
        rows["other"] = {"wall_s": round(total_wall - sum(self.wall.values()), 3),
                         "cpu_s": round(total_cpu - sum(self.cpu.values()), 3), "calls": 0}
        for r in rows.values():
            r["share"] = round(r["wall_s"] / total_wall, 3) if total_wall > 0 else None
        return rows


def model_classes(model_dir: str) -> list[type]:
    """The class(es) ``AutoModelForImageTextToText`` builds for the model in ``model_dir``."""
    from transformers import AutoConfig, AutoModelForImageTextToText

    config = AutoConfig.from_pretrained(model_dir)
    return [AutoModelForImageTextToText._model_mapping[type(config)]]
