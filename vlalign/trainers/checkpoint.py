"""Atomic, verified checkpoints: keep-last-N, resume from the newest complete one, the final save.

A checkpoint is written into ``checkpoint-<step>.tmp``: model or adapter weights, optimizer,
scheduler, RNG states (``accelerator.save_state``), then ``trainer_state.json`` (step, data position,
config, fingerprints), then — last — ``manifest.json`` with the size and sha256 of every file; only
then is the folder renamed to ``checkpoint-<step>`` (``rename`` is atomic). Resume verifies the
manifest of the newest checkpoint and falls back to the next older one that verifies, naming what was
wrong (a truncated ``model.safetensors``, an empty ``trainer_state.json``, a missing manifest).

Disk full, read-only folders and other OS errors while saving become one :class:`CheckpointError`
naming the folder, the free space there and roughly how much the checkpoint needs; the half-written
``.tmp`` folder is removed.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

STATE_FILE = "trainer_state.json"
MANIFEST = "manifest.json"
PREFIX = "checkpoint-"
_CHUNK = 1 << 22


class CheckpointError(RuntimeError):
    """A checkpoint (or the final model) could not be written or read; the message names the folder."""


def checkpoint_dirs(output_dir: str | Path) -> list[tuple[int, Path]]:
    """Renamed (not ``.tmp``) checkpoints in ``output_dir`` with a trainer state, as (step, path), oldest first."""
    out = []
    root = Path(output_dir)
    if not root.is_dir():
        return []
    for p in root.iterdir():
        name = p.name
        if not (p.is_dir() and name.startswith(PREFIX) and name[len(PREFIX) :].isdigit()):
            continue
        if (p / STATE_FILE).is_file():
            out.append((int(name[len(PREFIX) :]), p))
    return sorted(out)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def write_manifest(folder: Path) -> dict[str, Any]:
    """Size and sha256 of every file under ``folder`` → ``manifest.json`` (fsynced), written last."""
    files = {}
    for f in sorted(p for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST):
        files[str(f.relative_to(folder))] = {"size": f.stat().st_size, "sha256": sha256_file(f)}
    manifest = {"format": 1, "files": files}
    with open(folder / MANIFEST, "w") as fh:
        json.dump(manifest, fh, indent=1)
        fh.flush()
        os.fsync(fh.fileno())
    return manifest


def verify_checkpoint(folder: Path) -> str | None:
    """None when every file of the manifest is there with its size and checksum, else what is wrong."""
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
        files = manifest["files"]
    except FileNotFoundError:
        return f"{MANIFEST} is missing (written by an older vlalign, or the save did not finish)"
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return f"{MANIFEST} is unreadable ({exc})"
    for name, entry in files.items():
        path = folder / name
        if not path.is_file():
            return f"{name} is missing"
        size = path.stat().st_size
        if size != entry["size"]:
            return f"{name} is truncated or changed ({size} bytes, the manifest says {entry['size']})"
        if sha256_file(path) != entry["sha256"]:
            return f"{name} is corrupt (its sha256 differs from the manifest's)"
    try:
        json.loads((folder / STATE_FILE).read_text())
    except (OSError, ValueError) as exc:
        return f"{STATE_FILE} is unreadable ({exc})"
    return None


def find_resumable(output_dir: str | Path, warn: Callable[[str], None]) -> Path | None:
    """The newest checkpoint that verifies; every newer one that does not is named with its problem."""
    for _, path in reversed(checkpoint_dirs(output_dir)):
        problem = verify_checkpoint(path)
        if problem is None:
            return path
        warn(f"checkpoint {path} is not usable: {problem}; trying the previous one")
    return None


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    """The newest checkpoint that verifies (None if there is none)."""
    return find_resumable(output_dir, lambda _msg: None)


def remove_partial(output_dir: str | Path) -> list[Path]:
    """Delete half-written ``checkpoint-*.tmp`` folders left by a killed run; returns what was removed."""
    root = Path(output_dir)
    removed = [p for p in root.glob(f"{PREFIX}*.tmp") if p.is_dir()] if root.is_dir() else []
    for p in removed:
        shutil.rmtree(p, ignore_errors=True)
    return removed


def state_bytes(*objects: Any) -> int:
    """Bytes of the tensors of modules / optimizers (a lower bound of what a checkpoint writes)."""
    import torch

    total = 0
    for obj in objects:
        tensors = []
        if isinstance(obj, torch.nn.Module):  # parameters + buffers, not state_dict(): FSDP2 hooks run there
            tensors = [*obj.parameters(), *obj.buffers()]
        elif hasattr(obj, "state_dict"):
            for st in obj.state_dict().get("state", {}).values():
                tensors += [v for v in st.values() if isinstance(v, torch.Tensor)]
        total += sum(t.numel() * t.element_size() for t in tensors if isinstance(t, torch.Tensor))
    return total


def write_error(exc: BaseException, folder: Path, needed: int) -> CheckpointError | None:
    """A clear error for an OS-level failure while writing into ``folder`` (None: not a write failure).

    torch's zip writer reports a full disk as ``RuntimeError: ... unexpected pos`` / ``file write failed``
    instead of an OSError, so those count too."""
    text = str(exc)
    if isinstance(exc, OSError):
        why = os.strerror(exc.errno) if exc.errno else text
        if exc.errno == errno.EROFS:
            why = "the file system is read-only"
    elif isinstance(exc, RuntimeError) and any(s in text for s in ("unexpected pos", "file write failed",
                                                                     "PytorchStreamWriter failed")):
        why = "a write failed (torch's writer gives no reason; usually the disk is full)"
    else:
        return None
    probe = folder
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        free = shutil.disk_usage(probe).free
        space = f"{free / 2**20:.1f} MiB free there"
    except OSError:
        space = "free space unknown"
    return CheckpointError(
        f"could not write {folder}: {why}; {space}, the save needs about {needed / 2**20:.1f} MiB. "
        "Free some space (or point output_dir elsewhere) and resume with resume=true"
    )


@contextlib.contextmanager
def removed_on_failure(tmp: Path, where: Path, needed: int) -> Iterator[None]:
    """Run a write; on failure delete the half-written ``tmp`` (file or folder) and turn OS-level
    errors into one :class:`CheckpointError` naming ``where`` (anything else is re-raised)."""
    try:
        yield
    except (OSError, RuntimeError) as exc:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)
        clear = write_error(exc, where, needed)
        if clear is None:
            raise
        raise clear from exc


def write_file(path: Path, text: str) -> None:
    """Write a small output file; an OS error (disk full, read-only) becomes a :class:`CheckpointError`."""
    try:
        path.write_text(text)
    except OSError as exc:
        raise write_error(exc, path, len(text.encode())) from exc


def save_checkpoint(acc: Any, output_dir: str | Path, step: int, state: dict[str, Any], keep: int,
                    needed: int = 0) -> Path:
    """Write checkpoint ``step`` atomically on every process (manifest last), then prune to the newest ``keep``."""
    root = Path(output_dir)
    final = root / f"{PREFIX}{step}"
    tmp = root / f"{PREFIX}{step}.tmp"
    with removed_on_failure(tmp, tmp, needed):
        if acc.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        acc.wait_for_everyone()
        acc.save_state(str(tmp), safe_serialization=True)  # model, optimizer, registered scheduler, RNG
        acc.wait_for_everyone()
        if acc.is_main_process:
            with open(tmp / STATE_FILE, "w") as fh:
                json.dump({"step": step, **state}, fh, indent=2)
                fh.flush()
                os.fsync(fh.fileno())
            write_manifest(tmp)
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
    if acc.is_main_process:
        for _, old in checkpoint_dirs(root)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    acc.wait_for_everyone()
    return final


def load_checkpoint(acc: Any, path: str | Path) -> dict[str, Any]:
    """Restore model, optimizer, scheduler and RNG states from ``path``; returns the trainer state."""
    try:
        acc.load_state(str(path))
        return json.loads((Path(path) / STATE_FILE).read_text())
    except Exception as exc:
        raise CheckpointError(f"could not restore checkpoint {path}: {type(exc).__name__}: {exc}. Delete that "
                              "folder to resume from the previous checkpoint") from exc


def _atomic_dir(target: Path, write: Callable[[Path], None], needed: int) -> None:
    """``write(tmp)`` into ``<target>.tmp``, then replace ``target`` by it; OS errors become CheckpointError."""
    tmp = target.with_name(target.name + ".tmp")
    with removed_on_failure(tmp, target, needed):
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        write(tmp)
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)


def full_state_dict(acc: Any, model: Any) -> dict[str, Any]:
    """The whole model's tensors on the main process: FSDP/ZeRO-3 shards gathered, else ``state_dict()``.

    FSDP2 goes through torch's ``get_model_state_dict(full_state_dict=True, cpu_offload=True)`` directly:
    accelerate's ``get_state_dict`` adds ``broadcast_from_rank0=True``, which on CPU processes (gloo)
    returns DTensors without storage that ``save_pretrained`` cannot write."""
    if getattr(acc, "is_fsdp2", False):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        # on CPU the "offloaded" tensors may alias FSDP's gather buffers, which later hooks free: own copies
        return {k: v.detach().clone() for k, v in state.items()}
    return acc.get_state_dict(model)


def save_final(acc: Any, model: Any, processor: Any, output_dir: str | Path, merge_lora: bool = True) -> dict[str, str]:
    """Save the trained model so ``AutoModelForImageTextToText.from_pretrained(output_dir/final)`` loads it.

    Full fine-tuning: ``final/`` holds the model + processor. LoRA: the adapter goes to ``adapter/``
    (+ processor) and, when ``merge_lora``, a merged full copy to ``final/``; without merging (e.g. a
    4-bit base, which cannot be merged exactly) ``final/`` is not written and the adapter is the result.
    Each folder is written under ``<name>.tmp`` and renamed when complete. Returns what was written, by kind.
    """
    from peft import PeftModel

    root = Path(output_dir)
    acc.wait_for_everyone()
    unwrapped = acc.unwrap_model(model)
    state = full_state_dict(acc, model)
    written: dict[str, str] = {}
    if not acc.is_main_process:
        acc.wait_for_everyone()
        return written
    needed = state_bytes(unwrapped)

    def saver(obj: Any, **kw: Any) -> Callable[[Path], None]:
        return lambda d: (obj.save_pretrained(d, safe_serialization=True, **kw), processor.save_pretrained(d))

    if isinstance(unwrapped, PeftModel):
        _atomic_dir(root / "adapter", saver(unwrapped), needed)
        written["adapter"] = str(root / "adapter")
        quantized = getattr(unwrapped.base_model.model, "is_loaded_in_4bit", False)
        if merge_lora and not quantized:
            merged = unwrapped.merge_and_unload()  # in place: training is over, no second copy in memory
            _atomic_dir(root / "final", saver(merged), needed)
            written["merged"] = str(root / "final")
    else:
        _atomic_dir(root / "final", saver(unwrapped, state_dict=state), needed)
        written["final"] = str(root / "final")
    acc.wait_for_everyone()
    return written
