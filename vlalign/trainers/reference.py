"""Reference log-probs without a second model in memory.

Two sources, picked by ``reference.mode``:

- ``cache``: the reference model scores every response once, in eval mode, sharded over processes;
  the per-token log-probs of every row are saved to ``<cache_dir>/ref_logps-<key>.pt``. The key
  hashes everything the values depend on: the reference model's WEIGHTS as loaded (a hash of the
  tensors, not the path — a retrained model saved under the same path gets a new key), the data rows,
  the settings that change tokenisation or the scored blocks (max_length, image pixels, the loss and
  its extra block, the forward) and the cache format / vlalign version. The file carries that key and
  a checksum of its values and is verified on load; a mismatch is printed and the cache rebuilt.
  The cache is only ever built from the weights as loaded — before any checkpoint is restored, so a
  resumed run whose cache went missing re-scores with the reference, never with the trained policy.
- ``adapter``: a LoRA policy with its adapter disabled *is* the reference; one extra no-grad forward
  per step, nothing on disk.

Both hand back token log-probs laid out like the policy's (N, T), so every loss (sequence sums,
averages, dense per-token) reads them the same way.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

import vlalign
from vlalign.models.logprobs import unwrap_model
from vlalign.models.shared_prefix import batched_pair_logprobs
from vlalign.trainers.checkpoint import removed_on_failure

CACHE_FORMAT = 2  # bump when the layout or the meaning of the cached values changes


def weights_fingerprint(model: torch.nn.Module) -> str:
    """sha256 of every parameter and buffer as loaded (name, dtype, shape and bytes), in name order."""
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def cache_key(weights: str, data: str, settings: dict[str, Any]) -> str:
    """The cache's identity: reference weights, data rows, loss-relevant settings, code version."""
    payload = {"weights": weights, "data": data, "settings": settings, "format": CACHE_FORMAT,
               "vlalign": vlalign.__version__}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=repr).encode()).hexdigest()


def table_checksum(table: dict[int, list[torch.Tensor]]) -> str:
    h = hashlib.sha256()
    for row in sorted(table):
        for block in table[row]:
            h.update(f"{row}:{block.numel()}|".encode())
            h.update(block.detach().cpu().to(torch.float32).contiguous().numpy().tobytes())
    return h.hexdigest()


@torch.no_grad()
def _score_rows(model: Any, dataset: Any, rows: Sequence[int], batch_size: int, device: Any,
                forward: Any = batched_pair_logprobs) -> dict[int, list[torch.Tensor]]:
    """Token log-probs of every response block of ``rows``: row -> [block 0 (L0,), block 1 (L1,), ...].

    ``forward(model, inputs, response_mask, num_records)`` is the trainer's pair forward (batched or
    shared-prefix: same values), so the reference pass gets the same speed-up as training."""
    out: dict[int, list[torch.Tensor]] = {}
    for i in range(0, len(rows), batch_size):
        chunk = list(rows[i : i + batch_size])
        batch = dataset.batch(chunk).to(device)
        B = len(chunk)
        logps, mask = forward(model, batch.inputs, batch.response_mask, B)  # (N, T), (N, T)
        blocks = logps.shape[0] // B
        for b, row in enumerate(chunk):
            out[row] = [logps[j * B + b][mask[j * B + b].bool()].float().cpu() for j in range(blocks)]
    return out


def load_verified(path: Path, key: str, num_rows: int) -> tuple[dict | None, str | None]:
    """(table, None) when ``path`` holds the cache for ``key`` intact, else (None, why not)."""
    if not path.is_file():
        return None, "no cache file yet"
    try:
        payload = torch.load(path, weights_only=True)
        header, table = payload["header"], payload["table"]
    except Exception as exc:  # noqa: BLE001 - any unreadable file is rebuilt, with the reason
        return None, f"{path} is unreadable ({type(exc).__name__}: {exc})"
    if header.get("key") != key:
        return None, f"{path} was built for other inputs (key {str(header.get('key'))[:12]}…)"
    if len(table) != num_rows or sorted(table) != list(range(num_rows)):
        return None, f"{path} holds {len(table)} rows, the data has {num_rows}"
    if header.get("checksum") != table_checksum(table):
        return None, f"{path} is corrupt (its values do not match their checksum)"
    return table, None


def build_reference_cache(acc: Any, model: Any, dataset: Any, cache_path: Path, batch_size: int, log: Any,
                          forward: Any = batched_pair_logprobs, key: str | None = None) -> dict:
    """Load the verified cache for ``key`` at ``cache_path``, or score every row with ``model`` (which
    MUST hold the reference weights: the caller runs this before any checkpoint is restored), sharded
    across processes, and write it."""
    key = key or cache_path.stem
    table, why = load_verified(cache_path, key, len(dataset))
    if table is not None:
        log.info(f"reference log-probs: reusing verified cache {cache_path}")
        return table
    log.info(f"reference log-probs: scoring {len(dataset)} rows with the reference model -> {cache_path} ({why})")
    base = unwrap_model(model)
    was_training = base.training
    base.eval()
    n, world = len(dataset), acc.num_processes
    mine = list(range(acc.process_index, n, world))
    # FSDP/ZeRO-3 need every process to run the same number of forwards: pad with a repeated row.
    per_proc = -(-n // world)
    mine += mine[-1:] * (per_proc - len(mine))
    scored = _score_rows(model, dataset, mine, batch_size, acc.device, forward)
    if world > 1:
        from accelerate.utils import gather_object

        merged: dict[int, list[torch.Tensor]] = {}
        for part in gather_object([scored]):
            merged.update(part)
        scored = merged
    if acc.is_main_process:
        tmp = cache_path.with_suffix(".tmp")
        header = {"key": key, "checksum": table_checksum(scored), "rows": n, "format": CACHE_FORMAT}
        with removed_on_failure(tmp, cache_path, sum(b.numel() * 4 for blocks in scored.values() for b in blocks)):
            cache_path.parent.mkdir(parents=True, exist_ok=True)
            torch.save({"header": header, "table": scored}, tmp)
            tmp.replace(cache_path)
    acc.wait_for_everyone()
    base.train(was_training)
    return scored


class CachedReference:
    """Reference token log-probs from the cache, scattered into a batch's (N, T) layout."""

    def __init__(self, table: dict[int, list[torch.Tensor]]) -> None:
        self.table = table

    def __call__(self, model: Any, batch: Any) -> torch.Tensor:
        blocks = batch.response_mask.shape[0] // batch.num_records
        values = [self.table[row][j] for j in range(blocks) for row in batch.rows]
        out = torch.zeros(batch.response_mask.shape, dtype=torch.float32, device=batch.response_mask.device)
        flat = torch.cat(values).to(out.device)
        if flat.numel() != int(batch.response_mask.sum()):
            raise ValueError(f"reference cache: rows {batch.rows} hold {flat.numel()} cached tokens but the batch has "
                             f"{int(batch.response_mask.sum())} response tokens; delete the cache to rebuild it")
        # Row-major boolean assignment: the response tokens of row 0, then row 1, ... as cached.
        out[batch.response_mask] = flat
        return out


class AdapterReference:
    """The LoRA policy with its adapter switched off: the exact base model, no extra weights."""

    def __init__(self, forward: Any = batched_pair_logprobs) -> None:
        self.forward = forward  # (model, inputs, response_mask, num_records) -> (logps, mask)

    def __call__(self, model: Any, batch: Any) -> torch.Tensor:
        from vlalign.models.load import disable_adapter

        base = unwrap_model(model)
        with torch.no_grad(), disable_adapter(base):
            logps, _ = self.forward(base, batch.inputs, batch.response_mask, batch.num_records)
        return logps.detach()
