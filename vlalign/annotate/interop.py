"""Label Studio and Argilla: export the items as their tasks / records, import their completed annotations.

Both directions keep this app's rules: the tool shows the two responses as left/right in a layout fixed
per item (a coin flip, stored in the task as ``shown_left``), the item is named by its opaque id, and an
import turns left/right back into source sides, creates an account per outside annotator (invite only,
no password) and stores each annotation as a judgement with a stable key, so importing the same file
twice adds nothing.

**Label Studio** (JSON export of tasks, the "JSON" format): per task ``data`` (our fields) and
``annotations: [{"completed_by", "result": [...], "created_at", "lead_time", "was_cancelled"}]``; result
entries read: ``pairwise`` ``{"selected": "left"|"right"}``, ``choices`` from ``tie`` / ``unsafe``,
``labels`` spans on ``left``/``right`` (``{"start", "end", "text", "labels"}``, offsets in UTF-16 units
as the browser counts them, checked against ``text``), a per-region ``textarea`` (same region ``id``,
``{"text": [correction]}``) and ``rating`` ``{"rating": 1..5}`` named ``<side>_<aspect>``.

**Argilla 2.x** (``dataset.records.to_json``: a list of ``Record.to_dict()``): ``{"id", "fields",
"metadata", "suggestions", "responses": {question: [{"value", "user_id"}]}, "vectors"}``; questions:
``preference`` (label left/right/tie), ``<side>_errors`` (span, ``[{"start", "end", "label"}]``),
``<side>_corrections`` (text, one line per marked span in order), ``<side>_<aspect>`` (rating 1–5),
``unsafe`` (multi-label left/right).
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from vlalign.annotate.items import PairItem, left_side, other, public_id
from vlalign.annotate.judgements import Correction, Judgement
from vlalign.annotate.review import NAME_RE
from vlalign.annotate.schema import iso, utcnow
from vlalign.annotate.store import Store, User
from vlalign.registry import Registry

LAYOUT_SEED = "interop"
SIDES = ("left", "right")


class InteropError(ValueError):
    """A file that is not a completed export of the named tool; the message names where and what."""


EXPORTERS: Registry[Callable[[Store, Path, str], list[Path]]] = Registry("export-tasks format")
IMPORTERS: Registry[Callable[[Store, Path], dict[str, Any]]] = Registry("import format")


def _public_id(store: Store, item_id: str) -> str:
    return public_id(store.settings()["secret"], item_id)


def _screen(item: PairItem) -> dict[str, str]:
    """left/right -> source side, fixed per item for a tool that shows every annotator the same layout."""
    left = left_side(item.item_id, LAYOUT_SEED, 0)
    return {"left": left, "right": other(left)}


def _image_refs(store: Store, item: PairItem, out: Path, image_url: str) -> list[str]:
    """data: URIs (self-contained file), or URL prefix + content-hash file names written next to ``out``."""
    if image_url:
        paths = store.image_files(out.parent / "images", item.images)
        return [image_url.rstrip("/") + "/" + paths[h].name for h in item.images]
    refs = []
    for h in item.images:
        mime, data = store.image(h)
        refs.append(f"data:{mime};base64,{base64.b64encode(data).decode()}")
    return refs


def _aspects(store: Store) -> list[str]:
    return list(store.settings().get("aspects") or [])


# ---- Label Studio ------------------------------------------------------------------------------------


def label_studio_config(aspects: list[str]) -> str:
    """The labelling config (XML) the exported tasks are made for."""
    side_parts = []
    for side in SIDES:
        ratings = "\n".join(f'    <Rating name="{side}_{a}" toName="{side}" maxRating="5"/>' for a in aspects)
        side_parts.append(f"""  <Header value="Response {1 if side == 'left' else 2} ({side})"/>
  <Text name="{side}" value="${side}"/>
  <Labels name="{side}_errors" toName="{side}"><Label value="wrong"/></Labels>
  <TextArea name="{side}_correction" toName="{side}" perRegion="true" placeholder="correct text (empty = delete)"/>
{ratings}""")
    return "\n".join([
        "<View>", '  <Image name="image" value="$image"/>', '  <Text name="prompt" value="$prompt"/>', *side_parts,
        '  <Pairwise name="preference" toName="left,right"/>',
        '  <Choices name="tie" toName="prompt"><Choice value="tie"/></Choices>',
        '  <Choices name="unsafe" toName="prompt" choice="multiple"><Choice value="left"/><Choice value="right"/></Choices>',
        "</View>"]) + "\n"


@EXPORTERS.register("label-studio", "labelstudio")
def export_label_studio(store: Store, out: Path, image_url: str = "") -> list[Path]:
    tasks = []
    for it in store.items():
        screen = _screen(it)
        images = _image_refs(store, it, out, image_url)
        tasks.append({"data": {"vlalign_item": _public_id(store, it.item_id), "shown_left": screen["left"],
                               "image": images[0] if images else "", "images": images, "prompt": it.prompt,
                               "left": it.text(screen["left"]), "right": it.text(screen["right"])}})
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(tasks, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    config = out.with_suffix(".label_config.xml")
    config.write_text(label_studio_config(_aspects(store)), encoding="utf-8")
    return [out, config]


def utf16_to_codepoints(text: str, offset: int) -> int:
    """A JavaScript (UTF-16 unit) offset into ``text`` as a Python (code point) offset."""
    units = text.encode("utf-16-le")[: 2 * offset]
    return len(units.decode("utf-16-le", errors="ignore"))


def _ls_span(text: str, value: dict[str, Any], where: str) -> tuple[int, int]:
    start, end = value.get("start"), value.get("end")
    if not isinstance(start, int) or not isinstance(end, int):
        raise InteropError(f"{where}: a labels result needs integer start/end")
    s, e = utf16_to_codepoints(text, start), utf16_to_codepoints(text, end)
    said = value.get("text")
    if isinstance(said, str) and text[s:e] != said and text[start:end] == said:
        s, e = start, end  # a tool that counted code points
    if not 0 <= s < e <= len(text):
        raise InteropError(f"{where}: span ({start}, {end}) outside the {len(text)}-character response")
    return s, e


def _ls_user(annotation: dict[str, Any]) -> str:
    who = annotation.get("completed_by")
    if isinstance(who, dict):
        who = who.get("email") or who.get("id")
    if isinstance(who, str) and "@" in who:
        who = who.split("@")[0]
    return _account_name("ls", who)


def _account_name(prefix: str, raw: Any) -> str:
    name = re.sub(r"[^A-Za-z0-9._@-]", "_", f"{prefix}-{raw}")[:64]
    if not NAME_RE.match(name):
        raise InteropError(f"cannot make an account name from {raw!r}")
    return name


def _ls_judgement(item: PairItem, annotation: dict[str, Any], shown_left: str, aspects: list[str],
                  where: str) -> Judgement | None:
    if annotation.get("was_cancelled"):
        return None
    screen = {"left": shown_left, "right": other(shown_left)}
    choice, unsafe, ratings = None, [], {}
    regions: dict[str, dict[str, Any]] = {}
    for k, r in enumerate(annotation.get("result") or []):
        kind, name, value = r.get("type"), r.get("from_name", ""), r.get("value") or {}
        at = f"{where}.result[{k}]"
        if kind == "pairwise":
            choice = value.get("selected")
        elif kind == "choices" and name == "tie" and "tie" in (value.get("choices") or []):
            choice = choice or "tie"
        elif kind == "choices" and name == "unsafe":
            unsafe = [screen[s] for s in value.get("choices") or [] if s in screen]
        elif kind == "labels" and r.get("to_name") in SIDES:
            side = r["to_name"]
            s, e = _ls_span(item.text(screen[side]), value, at)
            regions.setdefault(r.get("id") or f"r{k}", {}).update(side=side, start=s, end=e)
        elif kind == "textarea" and name.endswith("_correction"):
            text = value.get("text")
            regions.setdefault(r.get("id") or f"t{k}", {})["fix"] = text[0] if isinstance(text, list) and text else (text or "")
        elif kind == "rating":
            side, _, aspect = name.partition("_")
            v = value.get("rating")
            if side in screen and aspect in aspects and isinstance(v, (int, float)) and 1 <= v <= 5:
                ratings.setdefault(screen[side], {})[aspect] = int(v)
    if choice not in ("left", "right", "tie"):
        return None  # no pairwise answer: nothing to import for this annotation
    corrections = [Correction(screen[r["side"]], r["start"], r["end"], r.get("fix", ""), None)
                   for r in regions.values() if "side" in r]
    lead = annotation.get("lead_time")
    return Judgement(item.item_id, "", screen.get(choice, choice), shown_left, corrections, ratings, sorted(set(unsafe)),
                     seconds=float(lead) if isinstance(lead, (int, float)) else None,
                     time=str(annotation.get("created_at") or ""))


@IMPORTERS.register("label-studio", "labelstudio")
def import_label_studio(store: Store, path: Path) -> dict[str, Any]:
    tasks = _read_json_list(path)
    items = {_public_id(store, it.item_id): it for it in store.items()}
    found = []
    for t, task in enumerate(tasks):
        data = task.get("data") or {}
        item = items.get(data.get("vlalign_item"))
        if item is None or data.get("shown_left") not in ("first", "second"):
            raise InteropError(f"{path}: task {t} has no known vlalign_item/shown_left in data (fix: import a "
                               "Label Studio export of tasks made by `vlalign annotate export-tasks`)")
        for a, ann in enumerate(task.get("annotations") or []):
            j = _ls_judgement(item, ann, data["shown_left"], _aspects(store), f"{path}: task {t} annotation {a}")
            if j is not None:
                key = f"ls-{task.get('id', t)}-{ann.get('id', a)}"
                found.append((_ls_user(ann), j, key))
    return _store_all(store, found, "import:label-studio")


# ---- Argilla ----------------------------------------------------------------------------------------


def argilla_settings(aspects: list[str]) -> dict[str, Any]:
    """The dataset settings (fields and questions) the exported records are made for."""
    questions = [{"name": "preference", "type": "label_selection", "labels": ["left", "right", "tie"]},
                 {"name": "unsafe", "type": "multi_label_selection", "labels": ["left", "right"], "required": False}]
    for side in SIDES:
        questions += [{"name": f"{side}_errors", "type": "span", "field": side, "labels": ["wrong"], "required": False},
                      {"name": f"{side}_corrections", "type": "text", "required": False,
                       "description": "one line per marked span, in order of position (empty line = delete)"}]
        questions += [{"name": f"{side}_{a}", "type": "rating", "values": [1, 2, 3, 4, 5], "required": False}
                      for a in aspects]
    return {"fields": [{"name": "image", "type": "image"}, {"name": "prompt", "type": "text"},
                       {"name": "left", "type": "text"}, {"name": "right", "type": "text"}],
            "questions": questions, "metadata": [{"name": "shown_left", "type": "terms"}]}


@EXPORTERS.register("argilla")
def export_argilla(store: Store, out: Path, image_url: str = "") -> list[Path]:
    records = []
    for it in store.items():
        screen = _screen(it)
        images = _image_refs(store, it, out, image_url)
        records.append({"id": _public_id(store, it.item_id),
                        "fields": {"image": images[0] if images else "", "prompt": it.prompt,
                                   "left": it.text(screen["left"]), "right": it.text(screen["right"])},
                        "metadata": {"shown_left": screen["left"]}, "suggestions": {}, "responses": {}, "vectors": {}})
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(records, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    settings = out.with_suffix(".settings.json")
    settings.write_text(json.dumps(argilla_settings(_aspects(store)), indent=2) + "\n", encoding="utf-8")
    return [out, settings]


def _argilla_judgement(item: PairItem, answers: dict[str, Any], shown_left: str, aspects: list[str],
                       where: str) -> Judgement | None:
    screen = {"left": shown_left, "right": other(shown_left)}
    choice = answers.get("preference")
    if choice not in ("left", "right", "tie"):
        return None
    corrections: list[Correction] = []
    for side in SIDES:
        spans = sorted(answers.get(f"{side}_errors") or [], key=lambda s: s.get("start", 0))
        fixes = str(answers.get(f"{side}_corrections") or "").split("\n")
        text = item.text(screen[side])
        for k, span in enumerate(spans):
            s, e = span.get("start"), span.get("end")
            if not isinstance(s, int) or not isinstance(e, int) or not 0 <= s < e <= len(text):
                raise InteropError(f"{where}: {side}_errors[{k}] = {span} is outside the {len(text)}-character response")
            corrections.append(Correction(screen[side], s, e, fixes[k] if k < len(fixes) else "", span.get("label")))
    ratings: dict[str, dict[str, int]] = {}
    for side in SIDES:
        for a in aspects:
            v = answers.get(f"{side}_{a}")
            if isinstance(v, int) and 1 <= v <= 5:
                ratings.setdefault(screen[side], {})[a] = v
    unsafe = sorted({screen[s] for s in answers.get("unsafe") or [] if s in screen})
    return Judgement(item.item_id, "", screen.get(choice, choice), shown_left, corrections, ratings, unsafe)


@IMPORTERS.register("argilla")
def import_argilla(store: Store, path: Path) -> dict[str, Any]:
    records = _read_json_list(path)
    items = {_public_id(store, it.item_id): it for it in store.items()}
    found = []
    for r, rec in enumerate(records):
        item = items.get(str(rec.get("id")))
        shown_left = (rec.get("metadata") or {}).get("shown_left")
        if item is None or shown_left not in ("first", "second"):
            raise InteropError(f"{path}: record {r} has no known id / metadata.shown_left (fix: import Argilla "
                               "records made from `vlalign annotate export-tasks --format argilla`)")
        by_user: dict[str, dict[str, Any]] = {}
        for question, answers in (rec.get("responses") or {}).items():
            for ans in answers:
                if ans.get("status", "submitted") == "submitted":
                    by_user.setdefault(str(ans.get("user_id")), {})[question] = ans.get("value")
        for user_id, answers in by_user.items():
            j = _argilla_judgement(item, answers, shown_left, _aspects(store), f"{path}: record {r}")
            if j is not None:
                found.append((_account_name("argilla", user_id[:8]), j, f"ar-{rec.get('id')}-{user_id}"[:64]))
    return _store_all(store, found, "import:argilla")


# ---- shared ------------------------------------------------------------------------------------------


def _read_json_list(path: Path) -> list[dict[str, Any]]:
    text = Path(path).read_text(encoding="utf-8")
    try:
        rows = json.loads(text) if text.lstrip().startswith("[") else [json.loads(x) for x in text.splitlines() if x.strip()]
    except json.JSONDecodeError as exc:
        raise InteropError(f"{path}: not JSON / JSON lines ({exc})") from None
    if not all(isinstance(r, dict) for r in rows):
        raise InteropError(f"{path}: expected a list of objects")
    return rows


def _store_all(store: Store, found: list[tuple[str, Judgement, str]], origin: str) -> dict[str, Any]:
    """Create missing accounts, then store each judgement under its stable key (re-imports add nothing)."""
    report: dict[str, Any] = {"judgements": 0, "skipped": 0, "new_users": []}
    users: dict[str, User] = {u.name: u for u in store.users()}
    for name, j, key in found:
        if name not in users:
            store.add_user(name, "annotator")
            users[name] = store.user(name)
            report["new_users"].append(name)
        j.annotator = name
        j.time = j.time or iso(utcnow())
        key = hashlib.sha256(key.encode()).hexdigest()[:32]
        _stored, retry = store.submit(j, users[name], client_key=key, origin=origin, require_served=False)
        report["skipped" if retry else "judgements"] += 1
    store.event(None, origin, "", {k: report[k] for k in ("judgements", "skipped")})
    return report
