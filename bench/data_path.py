"""Benchmark of the data path (issue 15): generated rows → load → validate → encode, beside TRL's loading.

One command::

    python bench/data_path.py --out runs/bench_data          # 100k rows; --rows 20000 for a quick look

It writes ``--rows`` preference rows (TRL's conversational vision layout: ``images`` = one 448×448 JPEG as
a ``datasets.Image``, ``prompt`` / ``chosen`` / ``rejected`` as messages) as Parquet shards, then
measures, each phase in a fresh process:

- ``startup``: ``load_records`` of all rows with an empty ``datasets`` cache (read + adapter + checks with
  every image fully decoded, ``--num-proc`` processes), then the same call again (the cached map);
- ``rate``: rows/s through load + validate + encode (the streaming source: adapter, checks and the
  tiny LLaVA processor, in 0, 1, 2 workers) over ``--rate-rows`` rows;
- ``rss``: peak RSS (the process and its encoding workers, sampled every 0.2 s) of a streaming pass
  (load + validate + encode, ``--rss-workers``) over the first 10% of the rows and over all of them —
  the two must stay within 10% of each other;
- ``trl``: TRL 1.16's own path for the same rows — ``datasets.load_dataset("parquet")`` (first run and
  cached) and ``DPOTrainer``'s train dataloader (its vision collator decodes and processes on the fly,
  with no validation) at 0, 1, 2 workers.

Each image's bytes are unique (a JPEG comment holding the row number), so no cache can skip a decode.
The machine's load average is recorded before and after every phase: on a shared machine the absolute
numbers say little, the ratios more. Results: ``OUT/data_path.json`` and a summary on stdout.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine_info, package_versions, rss_snapshot

PROMPTS = ["What colour is the square?", "Describe the image.", "Is there a circle?", "How many shapes are there?"]


# ----------------------------------------------------------------------------------------- data


def base_images(side: int, n: int = 32) -> list[bytes]:
    """``n`` distinct 448×448 JPEGs (gradients with a coloured square), ~20 KB each."""
    from PIL import Image, ImageDraw

    out = []
    for k in range(n):
        img = Image.linear_gradient("L").resize((side, side)).convert("RGB")
        draw = ImageDraw.Draw(img)
        c = ((k * 67) % 256, (k * 131) % 256, (k * 29) % 256)
        x = (k * 37) % (side // 2)
        draw.rectangle((x, x, x + side // 3, x + side // 3), fill=c)
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=85)
        out.append(buf.getvalue())
    return out


def unique(jpeg: bytes, i: int) -> bytes:
    """The same picture with a COM segment holding ``i``: different bytes, identical pixels."""
    comment = f"row {i}".encode()
    return jpeg[:2] + b"\xff\xfe" + (len(comment) + 2).to_bytes(2, "big") + comment + jpeg[2:]


def generate(folder: Path, rows: int, shards: int, side: int) -> list[Path]:
    """Parquet shards of TRL-layout preference rows (reused when the manifest matches)."""
    import datasets

    manifest = {"rows": rows, "shards": shards, "side": side, "layout": "trl-conversational"}
    files = [folder / f"train-{k:05d}-of-{shards:05d}.parquet" for k in range(shards)]
    if (folder / "manifest.json").is_file() and json.loads((folder / "manifest.json").read_text()) == manifest:
        return files
    folder.mkdir(parents=True, exist_ok=True)
    def turn() -> Any:
        return datasets.List({"role": datasets.Value("string"),
                              "content": datasets.List({"type": datasets.Value("string"), "text": datasets.Value("string")})})

    features = datasets.Features({"images": datasets.List(datasets.Image()), "prompt": turn(),
                                  "chosen": turn(), "rejected": turn()})

    def msg(role: str, text: str, image: bool = False) -> list[dict[str, Any]]:
        parts = ([{"type": "image", "text": None}] if image else []) + [{"type": "text", "text": text}]
        return [{"role": role, "content": parts}]

    images = base_images(side)
    per = rows // shards
    for k, path in enumerate(files):
        block = range(k * per, rows if k == shards - 1 else (k + 1) * per)
        ds = datasets.Dataset.from_dict({
            "images": [[{"bytes": unique(images[i % len(images)], i), "path": None}] for i in block],
            "prompt": [msg("user", PROMPTS[i % 4], image=True) for i in block],
            "chosen": [msg("assistant", f"A square of colour {i % 32}, row {i}.") for i in block],
            "rejected": [msg("assistant", f"A circle of colour {(i + 5) % 32}, row {i}.") for i in block],
        }, features=features)
        ds.to_parquet(str(path))
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return files


# ----------------------------------------------------------------------------------------- phases (children)


def phase_startup(spec: dict[str, Any]) -> dict[str, Any]:
    from vlalign.data.validate import load_records

    out = {}
    for run in ("first", "cached"):
        t0 = time.perf_counter()
        res = load_records(spec["train"], num_proc=spec["num_proc"], progress=False)
        out[f"{run}_s"] = round(time.perf_counter() - t0, 2)
        out["records"] = len(res.records)
    out["first_rows_per_s"] = round(out["records"] / out["first_s"], 1)
    return out


def _stream(spec: dict[str, Any], rows: int, workers: int) -> dict[str, Any]:
    """``rows`` rows of ``spec["train"]`` through the streaming source: read, adapter, checks, encode."""
    from transformers import AutoProcessor

    from vlalign.data.config import DataConfig
    from vlalign.data.stream import stream_source

    processor = AutoProcessor.from_pretrained(spec["model"])
    micro = 8
    cfg = DataConfig(train=spec["train"], streaming=True, num_workers=workers, max_length=256, shuffle_buffer=256)
    src = stream_source(cfg, processor, "pair", micro_batch=micro, seed=0)
    baseline = rss_snapshot()["hwm_mb"]
    tree = TreeRss()
    t0 = time.perf_counter()
    steps = rows // micro
    for step in range(steps):
        src.micro_batches(step)
    wall = time.perf_counter() - t0
    src.close()
    tree.stop()
    return {"rows": steps * micro, "wall_s": round(wall, 2), "rows_per_s": round(steps * micro / wall, 1),
            "baseline_rss_mb": round(baseline, 1), "peak_rss_mb": round(rss_snapshot()["hwm_mb"], 1),
            "peak_tree_rss_mb": round(tree.peak_mb, 1)}


class TreeRss:
    """Peak of (this process + its worker processes) memory, sampled every 0.2 s: the main process's
    RSS plus each worker's PSS (forked workers share their parent's pages; summing their RSS would count
    the shared pages once per worker)."""

    def __init__(self) -> None:
        import threading

        import psutil

        self.peak_mb, self._stop = 0.0, threading.Event()
        self._proc = psutil.Process()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        import psutil

        while not self._stop.wait(0.2):
            try:
                workers = self._proc.children(recursive=True)
                total = (self._proc.memory_info().rss + sum(p.memory_full_info().pss for p in workers)) / 2**20
            except psutil.Error:
                continue
            self.peak_mb = max(self.peak_mb, total)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def phase_rate(spec: dict[str, Any]) -> dict[str, Any]:
    return _stream(spec, spec["rate_rows"], spec["workers"])


def phase_rss(spec: dict[str, Any]) -> dict[str, Any]:
    out = _stream(spec, spec["rows_used"], spec["rss_workers"])
    out["peak_above_baseline_mb"] = round(out["peak_rss_mb"] - out["baseline_rss_mb"], 1)
    return out


def phase_trl(spec: dict[str, Any]) -> dict[str, Any]:
    import datasets
    from transformers import AutoModelForImageTextToText, AutoProcessor
    from trl import DPOConfig, DPOTrainer

    out: dict[str, Any] = {}
    for run in ("first", "cached"):
        t0 = time.perf_counter()
        ds = datasets.load_dataset("parquet", data_files=spec["files"], split="train")
        out[f"load_{run}_s"] = round(time.perf_counter() - t0, 2)
    processor = AutoProcessor.from_pretrained(spec["model"])
    model = AutoModelForImageTextToText.from_pretrained(spec["model"])
    for workers in spec["worker_counts"]:
        args = DPOConfig(output_dir=spec["tmp"], per_device_train_batch_size=8, dataloader_num_workers=workers,
                         max_length=256, report_to=[], use_cpu=True, precompute_ref_log_probs=False)
        t0 = time.perf_counter()
        trainer = DPOTrainer(model=model, args=args, train_dataset=ds, processing_class=processor)
        init = time.perf_counter() - t0
        loader = trainer.get_train_dataloader()
        n, t0 = 0, time.perf_counter()
        for batch in loader:
            n += batch["input_ids"].shape[0] // 2 if "input_ids" in batch else 8
            if n >= spec["rate_rows"]:
                break
        wall = time.perf_counter() - t0
        out[f"workers_{workers}"] = {"trainer_init_s": round(init, 2), "rows": n, "rows_per_s": round(n / wall, 1)}
        del trainer, loader
    return out


PHASES = {"startup": phase_startup, "rate": phase_rate, "rss": phase_rss, "trl": phase_trl}


# ----------------------------------------------------------------------------------------- parent


def run_child(phase: str, spec: dict[str, Any], out: Path) -> dict[str, Any]:
    """One phase in a fresh interpreter (its own peak RSS, its own empty datasets cache)."""
    work = out / f"{phase}-{spec.get('tag', '')}".rstrip("-")
    work.mkdir(parents=True, exist_ok=True)
    (work / "spec.json").write_text(json.dumps(spec, indent=2))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "HF_DATASETS_CACHE": str(work / "datasets_cache"), "PYTHONUNBUFFERED": "1"}
    load_before = [round(x, 2) for x in os.getloadavg()]
    t0 = time.perf_counter()
    with (work / "log.txt").open("w") as log:
        proc = subprocess.run([sys.executable, __file__, "--child", phase, "--spec", str(work / "spec.json"),
                               "--result", str(work / "result.json")], stdout=log, stderr=subprocess.STDOUT, env=env,
                              check=False)
    result: dict[str, Any] = (json.loads((work / "result.json").read_text()) if proc.returncode == 0
                              else {"error": f"exit {proc.returncode}; see {work / 'log.txt'}"})
    result.update(load_avg_before=load_before, load_avg_after=[round(x, 2) for x in os.getloadavg()],
                  process_wall_s=round(time.perf_counter() - t0, 1))
    print(f"[data_path] {phase} {spec.get('tag', '')}: {json.dumps(result)}", flush=True)
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="runs/bench_data")
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--shards", type=int, default=20)
    ap.add_argument("--image-side", type=int, default=448)
    ap.add_argument("--rate-rows", type=int, default=2000, help="rows per throughput measurement")
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--num-proc", type=int, default=2, help="processes of the validation map (startup)")
    ap.add_argument("--rss-workers", type=int, default=2, help="encoding workers of the peak-RSS passes")
    ap.add_argument("--phases", nargs="+", default=list(PHASES), choices=list(PHASES))
    ap.add_argument("--child", choices=list(PHASES))
    ap.add_argument("--spec")
    ap.add_argument("--result")
    args = ap.parse_args(argv)
    if args.child:
        spec = json.loads(Path(args.spec).read_text())
        Path(args.result).write_text(json.dumps(PHASES[args.child](spec), indent=2))
        return 0

    out = Path(args.out).resolve()
    t0 = time.perf_counter()
    files = [str(f) for f in generate(out / "data", args.rows, args.shards, args.image_side)]
    print(f"[data_path] {args.rows} rows in {args.shards} shards ready ({time.perf_counter() - t0:.0f} s)", flush=True)
    from vlalign.models.tiny import build_tiny

    model = out / "model"
    if not (model / "config.json").is_file():
        build_tiny("llava", model, size="tiny", seed=0)
    tenth = max(1, args.shards // 10)
    base = {"files": files, "train": str(out / "data" / "train-*.parquet"), "model": str(model),
            "rate_rows": args.rate_rows, "num_proc": args.num_proc, "tmp": str(out / "tmp"),
            "rss_workers": args.rss_workers,
            "worker_counts": args.workers}
    previous = json.loads((out / "data_path.json").read_text()) if (out / "data_path.json").is_file() else {}
    same_data = all(previous.get(k) == v for k, v in (("rows", args.rows), ("shards", args.shards),
                                                       ("image_side", args.image_side)))
    report: dict[str, Any] = {**(previous if same_data else {}),  # phases run separately add up
                              "commands": [*(previous.get("commands", []) if same_data else []),
                                           " ".join(["python", *sys.argv])],
                              "machine": machine_info(threads=int(os.environ.get("OMP_NUM_THREADS", os.cpu_count()))),
                              "versions": package_versions(["vlalign", "datasets", "transformers", "trl", "torch"]),
                              "rows": args.rows, "shards": args.shards, "image_side": args.image_side}
    def save(partial: dict[str, Any]) -> None:  # after every phase: a long run keeps what it measured
        (out / "data_path.json").write_text(json.dumps(partial, indent=2) + "\n")

    if "startup" in args.phases:
        report["startup"] = run_child("startup", base, out)
        save(report)
    if "rate" in args.phases:
        report["rate"] = {w: run_child("rate", {**base, "workers": w, "tag": f"w{w}"}, out) for w in args.workers}
        save(report)
    if "trl" in args.phases:
        report["trl"] = run_child("trl", base, out)
        save(report)
    if "rss" in args.phases:
        report["rss"] = {}
        for name, n_shards in (("tenth", tenth), ("all", args.shards)):
            sub = out / f"subset-{n_shards}"  # a folder holding just those shards (links, no copies)
            sub.mkdir(parents=True, exist_ok=True)
            for f in files[:n_shards]:
                if not (sub / Path(f).name).exists():
                    os.symlink(f, sub / Path(f).name)
            n_rows = args.rows if n_shards == args.shards else args.rows // args.shards * n_shards
            report["rss"][name] = run_child("rss", {**base, "train": str(sub), "rows_used": n_rows, "tag": name}, out)
        peaks = [report["rss"][k].get("peak_tree_rss_mb") for k in ("tenth", "all")]
        if all(peaks):
            report["rss"]["all_over_tenth"] = round(peaks[1] / peaks[0], 3)
    report["load_avg_end"] = [round(x, 2) for x in os.getloadavg()]
    save(report)
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
