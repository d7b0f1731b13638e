"""Fault injection for the training runs and the data validator; prints a summary table.

    .venv/bin/python scripts/fault_inject.py --minutes 4 --out /tmp/vlalign_faults

What it does, on the built-in tiny LLaVA and a small Shapes set (everything offline, CPU):

1. **kills**: runs a DPO run (save_steps=1) and SIGKILLs it at a random moment, resumes with
   ``resume=true`` (killing the resumed run again now and then), and checks that the final weights are
   bit-identical to an uninterrupted run's;
2. **corrupt checkpoints**: kills a run after its second checkpoint, truncates / empties / deletes a file of
   the newest checkpoint, resumes, and checks that the run names the damaged file, falls back to the
   previous checkpoint and still ends bit-identical;
3. **full / read-only disk**: runs with ``output_dir`` on a small tmpfs (mounted here; needs root — the
   part is skipped with a message where mounting is not allowed) and on a read-only remount of it: the
   run must stop with one clear message (exit 1), no traceback and no ``.tmp`` folder left;
4. **validator fuzz**: writes files of good rows with one generated bad row each (bad JSON, wrong types,
   missing / truncated / huge images, NaN/inf, lone surrogates, non-UTF-8 bytes, ...) and runs
   ``vlalign data validate``: the bad row must be reported by its index, and nothing may crash.

Crash = an exit code other than 0/1/2 or a Python traceback on stderr. Silent wrong result = a run that
exits 0 with weights different from the uninterrupted run's, or a validation that passes a bad row.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import signal
import struct
import subprocess
import sys
import time
import zlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Tally:
    """Counters of the summary table (name -> count); ``notes`` keep what went wrong, verbatim."""

    counts: Counter = field(default_factory=Counter)
    notes: list[str] = field(default_factory=list)

    def add(self, key: str, n: int = 1) -> None:
        self.counts[key] += n


def env() -> dict[str, str]:
    e = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1")
    e["PYTHONPATH"] = str(ROOT) + os.pathsep + e.get("PYTHONPATH", "")
    return e


def crashed(proc: subprocess.CompletedProcess) -> bool:
    return proc.returncode not in (0, 1, 2) or "Traceback (most recent call last)" in (proc.stderr or "")


def final_hash(folder: Path) -> str | None:
    f = folder / "final" / "model.safetensors"
    return hashlib.sha256(f.read_bytes()).hexdigest() if f.is_file() else None


# ------------------------------------------------------------------------------------------- set-up


def prepare(out: Path) -> tuple[Path, Path]:
    """(tiny model folder, preference file) under ``out``, built once."""
    from vlalign.data.shapes.generate import ShapesConfig, generate_shapes
    from vlalign.models.tiny import build_tiny

    model = out / "model"
    if not (model / "config.json").is_file():
        build_tiny("llava", model, size="tiny", seed=0)
    data = out / "shapes"
    if not (data / "preference.jsonl").is_file():
        generate_shapes(data, ShapesConfig(seed=0, n_train=16, n_eval=4, n_safety=4, n_safety_eval=4))
    return model, data / "preference.jsonl"


def dpo_args(model: Path, data: Path, run: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "vlalign.trainers.cli", "dpo", f"model.name_or_path={model}", f"data.train={data}",
            f"output_dir={run}", "data.limit=16", "data.max_length=160", "per_device_batch_size=2", "max_steps=8",
            "save_steps=1", "save_total_limit=2", "learning_rate=2e-3", "warmup_steps=2", "progress=false", "seed=5",
            "forward=batched", *extra]


def run_to_end(args: list[str], timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(args, env=env(), capture_output=True, text=True, timeout=timeout, check=False)


def start_and_kill(args: list[str], after: float) -> bool:
    """Start ``args``, SIGKILL it after ``after`` s; False when it had finished by then."""
    proc = subprocess.Popen(args, env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        proc.wait(timeout=after)
        return False
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        return True


# --------------------------------------------------------------------------------------------- kills


def kill_trials(model: Path, data: Path, out: Path, reference: str, wall: float, deadline: float,
                rng: random.Random, tally: Tally) -> None:
    trial = 0
    while time.time() < deadline:
        run = out / f"kill{trial}"
        shutil.rmtree(run, ignore_errors=True)
        args = dpo_args(model, data, run)
        kills = 0
        finished = False
        for attempt in range(3):  # the first start and up to two resumed runs are killed
            extra = ["resume=true"] if attempt else []
            if rng.random() < 0.3 and attempt:
                break
            if start_and_kill(args + extra, rng.uniform(0.3, wall * 1.1)):
                kills += 1
            else:
                finished = True
                break
        if not finished:
            res = run_to_end(args + ["resume=true"])
            if crashed(res) or res.returncode != 0:
                tally.add("crashes" if crashed(res) else "resume refused")
                tally.notes.append(f"kill trial {trial}: resume exit {res.returncode}: {res.stderr[-600:]}")
                trial += 1
                continue
        tally.add("kills", kills)
        if kills:
            tally.add("kill runs survived")
            same = final_hash(run) == reference
            tally.add("kill runs bit-identical" if same else "silent wrong results")
            if not same:
                tally.notes.append(f"kill trial {trial}: final weights differ from the uninterrupted run")
        trial += 1
        shutil.rmtree(run, ignore_errors=True)


# ------------------------------------------------------------------------------ corrupt checkpoints

DAMAGES = ("truncate model.safetensors", "truncate optimizer.bin", "empty trainer_state.json",
           "delete manifest.json", "truncate scheduler.bin", "flip a byte of model.safetensors")


def damage(folder: Path, how: str) -> str:
    verb, name = how.split(" ", 1) if not how.startswith("flip") else ("flip", "model.safetensors")
    path = folder / name
    if verb == "truncate":
        with open(path, "r+b") as fh:
            fh.truncate(path.stat().st_size // 2)
    elif verb == "empty":
        path.write_text("")
    elif verb == "delete":
        path.unlink()
    else:
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 0xFF
        path.write_bytes(bytes(data))
    return name


def corrupt_trials(model: Path, data: Path, out: Path, reference: str, deadline: float, tally: Tally) -> None:
    for i, how in enumerate(DAMAGES):
        if time.time() > deadline:
            break
        run = out / f"corrupt{i}"
        shutil.rmtree(run, ignore_errors=True)
        args = dpo_args(model, data, run)
        proc = subprocess.Popen(args, env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        while not (run / "checkpoint-3" / "manifest.json").exists() and proc.poll() is None:
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        newest = max((p for p in run.glob("checkpoint-*") if p.name[11:].isdigit()), key=lambda p: int(p.name[11:]))
        name = damage(newest, how)
        tally.add("corrupt checkpoints")
        res = run_to_end(args + ["resume=true"])
        named = f"{newest} is not usable: {name}" in res.stderr
        if crashed(res):
            tally.add("crashes")
            tally.notes.append(f"{how}: crash: {res.stderr[-600:]}")
        elif res.returncode == 0 and named and final_hash(run) == reference:
            tally.add("corrupt checkpoints recovered")
        else:
            tally.add("silent wrong results" if res.returncode == 0 and final_hash(run) != reference else "not recovered")
            tally.notes.append(f"{how}: exit {res.returncode}, named={named}: {res.stderr[-400:]}")
        shutil.rmtree(run, ignore_errors=True)


# ------------------------------------------------------------------------------------------ tmpfs


def disk_trials(model: Path, data: Path, out: Path, tally: Tally) -> None:
    mnt = out / "tmpfs"
    mnt.mkdir(exist_ok=True)
    size = sum(f.stat().st_size for f in model.iterdir()) * 2  # the weights fit twice; weights + Adam state do not
    mount = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mnt)], capture_output=True,
                           text=True, check=False)
    if mount.returncode != 0:
        tally.notes.append(f"tmpfs part skipped: mounting is not allowed here ({mount.stderr.strip()})")
        return
    try:
        for label, prepare_mount in (("disk full", None), ("read-only", "ro")):
            if prepare_mount:
                subprocess.run(["mount", "-o", "remount,ro", str(mnt)], check=True)
            res = run_to_end(dpo_args(model, data, mnt / "run", "overwrite=true"))
            tally.add("disk faults")
            left = list((mnt / "run").glob("*.tmp")) if (mnt / "run").exists() else []
            clear = res.returncode in (1, 2) and not crashed(res) and not left and (
                "could not write" in res.stderr or "Read-only file system" in res.stderr
                or "read-only" in res.stderr)
            if clear:
                tally.add("disk faults with a clear message")
            else:
                tally.add("crashes" if crashed(res) else "unclear disk failures")
                tally.notes.append(f"{label}: exit {res.returncode}, .tmp left: {left}: {res.stderr[-800:]}")
    finally:
        subprocess.run(["umount", str(mnt)], check=False)


# -------------------------------------------------------------------------------------- validator fuzz


def png(width: int, height: int, body: bytes | None = None) -> bytes:
    """A PNG whose header claims ``width`` × ``height`` (the pixel data may be short or absent)."""
    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    raw = body if body is not None else zlib.compress(b"".join(b"\x00" + b"\x80" * 3 * width for _ in range(height)))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", raw) + chunk(b"IEND", b"")


def good_row(i: int, image: str) -> dict:
    return {"id": f"g{i}", "images": [image], "prompt": "What is shown?", "chosen": "A red circle.",
            "rejected": "A blue square.", "meta": {}}


def bad_rows(folder: Path, rng: random.Random) -> dict[str, bytes]:
    """kind -> the bytes of ONE bad JSONL line (images it needs are written into ``folder``)."""
    (folder / "trunc.png").write_bytes(png(32, 32)[:40])
    (folder / "bomb.png").write_bytes(png(20000, 20000, zlib.compress(b"\x00" * 100)))
    (folder / "big.png").write_bytes(png(12000, 12000, zlib.compress(b"\x00" * 100)))
    (folder / "notimage.png").write_bytes(b"this is not an image")
    base = good_row(99, "ok.png")

    def line(row: dict) -> bytes:
        return json.dumps(row).encode()

    return {
        "bad JSON": b'{"id": "b", "images": ["ok.png"], "prompt": "x", "chosen": "a", "rejected": ',
        "not an object": b'["a", "list"]',
        "wrong type (chosen int)": line({**base, "chosen": 7}),
        "wrong type (images str)": line({**base, "images": "ok.png"}),
        "missing field": line({k: v for k, v in base.items() if k != "rejected"}),
        "missing image": line({**base, "images": ["nowhere.png"]}),
        "truncated image": line({**base, "images": ["trunc.png"]}),
        "not an image": line({**base, "images": ["notimage.png"]}),
        "decompression bomb": line({**base, "images": ["bomb.png"]}),
        "huge image (12000²)": line({**base, "images": ["big.png"]}),
        "NaN margin": b'{"id": "b", "images": ["ok.png"], "prompt": "x", "chosen": "a", "rejected": "b", "margin": NaN}',
        "inf margin": b'{"id": "b", "images": ["ok.png"], "prompt": "x", "chosen": "a", "rejected": "b", "margin": Infinity}',
        "lone surrogate": b'{"id": "b", "images": ["ok.png"], "prompt": "x\\udcff", "chosen": "a", "rejected": "b"}',
        "non-UTF-8 bytes": b'{"id": "b", "images": ["ok.png"], "prompt": "x\xff\xfe", "chosen": "a", "rejected": "b"}',
        "empty chosen": line({**base, "chosen": ""}),
        "chosen == rejected": line({**base, "rejected": base["chosen"]}),
        "random bytes": bytes(rng.getrandbits(8) for _ in range(rng.randint(5, 60))).replace(b"\n", b" "),
    }


def fuzz_validator(out: Path, deadline: float, rng: random.Random, tally: Tally) -> None:
    folder = out / "fuzz"
    folder.mkdir(exist_ok=True)
    from PIL import Image

    Image.new("RGB", (32, 32), (200, 30, 30)).save(folder / "ok.png")
    rounds = 0
    while time.time() < deadline or rounds == 0:
        for kind, bad in bad_rows(folder, rng).items():
            n_good = rng.randint(1, 4)
            at = rng.randint(0, n_good)
            lines = [json.dumps(good_row(i, "ok.png")).encode() for i in range(n_good)]
            lines.insert(at, bad)
            path = folder / f"case_{rounds}.jsonl"
            path.write_bytes(b"\n".join(lines) + b"\n")
            report = folder / "report.json"
            report.unlink(missing_ok=True)
            res = subprocess.run([sys.executable, "-m", "vlalign.cli", "data", "validate", str(path), "--report",
                                  str(report), "--format", "canonical"], env=env(), capture_output=True, timeout=300,
                                 check=False)
            res.stderr = res.stderr.decode("utf-8", "replace")
            tally.add("bad rows tried")
            if crashed(res):
                tally.add("validator crashes")
                tally.notes.append(f"validator crash on {kind!r} (row {at}): exit {res.returncode}: "
                                   f"{res.stderr.strip().splitlines()[-1] if res.stderr.strip() else ''}")
                continue
            rows = []
            if report.is_file():
                rows = [e["row"] for e in json.loads(report.read_text()).get("errors", [])]
            if at in rows:
                tally.add("bad rows reported by index")
            else:
                tally.add("bad rows missed")
                tally.notes.append(f"validator: {kind!r} at row {at} not reported (exit {res.returncode}, rows {rows}): "
                                   f"{res.stderr.strip()[-300:]}")
        rounds += 1


# ------------------------------------------------------------------------------------------------ main


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=4.0, help="time for the kill trials and the fuzzing")
    ap.add_argument("--out", type=Path, default=Path("runs/faults"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--skip", nargs="*", default=[], choices=["kills", "corrupt", "disk", "fuzz"])
    args = ap.parse_args()
    rng = random.Random(args.seed)
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    tally = Tally()
    t0 = time.time()
    model, data = prepare(out)
    reference = out / "uninterrupted"
    shutil.rmtree(reference, ignore_errors=True)
    start = time.time()
    res = run_to_end(dpo_args(model, data, reference))
    if res.returncode != 0:
        sys.exit(f"the uninterrupted run failed:\n{res.stderr[-3000:]}")
    wall, ref_hash = time.time() - start, final_hash(reference)
    budget = args.minutes * 60
    if "kills" not in args.skip:
        kill_trials(model, data, out, ref_hash, wall, time.time() + 0.5 * budget, rng, tally)
    if "corrupt" not in args.skip:
        corrupt_trials(model, data, out, ref_hash, time.time() + 0.3 * budget, tally)
    if "disk" not in args.skip:
        disk_trials(model, data, out, tally)
    if "fuzz" not in args.skip:
        fuzz_validator(out, time.time() + 0.2 * budget, rng, tally)
    c = tally.counts
    table = [
        ("kills (SIGKILL at a random moment)", c["kills"]),
        ("  runs killed and resumed / bit-identical", f"{c['kill runs survived']} / {c['kill runs bit-identical']}"),
        ("corrupt newest checkpoints / recovered", f"{c['corrupt checkpoints']} / {c['corrupt checkpoints recovered']}"),
        ("disk full + read-only / clear message", f"{c['disk faults']} / {c['disk faults with a clear message']}"),
        ("bad rows tried / reported by index", f"{c['bad rows tried']} / {c['bad rows reported by index']}"),
        ("training crashes", c["crashes"]),
        ("validator crashes", c["validator crashes"]),
        ("silent wrong results", c["silent wrong results"]),
    ]
    width = max(len(k) for k, _ in table)
    print(f"\nfault injection: {time.time() - t0:.0f} s, uninterrupted run {wall:.1f} s, seed {args.seed}")
    for k, v in table:
        print(f"  {k:<{width}}  {v}")
    for note in tally.notes:
        print(f"  - {note}")
    (out / "summary.json").write_text(json.dumps({"counts": dict(c), "notes": tally.notes}, indent=2) + "\n")


if __name__ == "__main__":
    main()
