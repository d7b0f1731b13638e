"""Where a judge's replies come from: an OpenAI-compatible HTTP endpoint or a local HF VLM.

Both backends answer ``complete(prompts, images) -> replies``; the local one can also return
probabilities over a few one-token choices (``choice_probs``) for the pairwise preference judge.
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import io
import itertools
import json
import os
import socket
import threading
import time
import urllib.parse
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import torch

from vlalign.rewards.judge import JUDGE_BACKENDS


class JudgeRequestError(RuntimeError):
    """The judge endpoint could not be reached or refused the request after all retries."""


def image_data_url(ref: Any, max_pixels: int | None = None) -> str:
    """Any image reference (PIL, path, bytes, HF struct) → ``data:image/png;base64,...``."""
    from PIL import Image

    from vlalign.data.images import cap_pixels, open_image

    img = ref.convert("RGB") if isinstance(ref, Image.Image) else open_image(ref)
    if max_pixels:
        img = cap_pixels(img, max_pixels)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def chat_completions_url(url: str) -> str:
    """Accept the base (``http://host:8000/v1``) or the full ``.../chat/completions`` address."""
    url = url.rstrip("/")
    return url if url.endswith("/chat/completions") else url + "/chat/completions"


class _Retryable(Exception):
    """An attempt failed in a way worth retrying (timeout, connection trouble, 429, 5xx)."""


def redact(text: str, secrets: list[str]) -> str:
    """``text`` with every secret (e.g. the API key, "Bearer <key>") replaced by ``***``, so no error
    message or log line carries an API key."""
    for secret in sorted(secrets, key=len, reverse=True):
        if secret:
            text = text.replace(secret, "***")
    return text


def _origin(parts: urllib.parse.SplitResult) -> tuple[str, str, int]:
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return parts.scheme, (parts.hostname or "").lower(), port


@JUDGE_BACKENDS.register("openai", "http")
class OpenAIChatJudge:
    """POSTs one chat/completions request per sample (``workers`` in parallel, IO-bound).

    The API key, if the endpoint needs one, is read from the environment variable named by
    ``api_key_env`` — never from a config file — and is redacted from every error message. Each
    attempt has an overall deadline of ``timeout`` seconds (connect, send, headers and body together:
    a server that trickles one byte at a time is cut off at the deadline, not after each read), the
    reply is read up to ``max_reply_bytes``, and redirects are followed only to the same origin
    (scheme, host, port), at most ``max_redirects`` times and never with the ``Authorization``
    header. Retries back off exponentially (``backoff * 2**attempt`` seconds) on connection errors,
    timeouts, 429 and 5xx; other HTTP errors (bad model name, bad payload) fail at once with the
    server's message.
    """

    def __init__(
        self,
        url: str,
        model: str = "judge",
        api_key_env: str | None = "OPENAI_API_KEY",
        timeout: float = 60.0,
        retries: int = 3,
        backoff: float = 1.0,
        max_tokens: int = 64,
        temperature: float = 0.0,
        max_pixels: int | None = None,
        workers: int = 4,
        max_reply_bytes: int = 4 * 1024 * 1024,
        max_redirects: int = 3,
    ):
        self.url = chat_completions_url(url)
        parts = urllib.parse.urlsplit(self.url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"judge url {url!r}: use http(s)://host[:port]/v1")
        self.model, self.api_key_env = model, api_key_env
        self.timeout, self.retries, self.backoff = float(timeout), int(retries), float(backoff)
        self.max_tokens, self.temperature = max_tokens, temperature
        self.max_pixels, self.workers = max_pixels, max(1, int(workers))
        self.max_reply_bytes, self.max_redirects = int(max_reply_bytes), int(max_redirects)

    def payload(self, prompt: str, images: list[Any]) -> dict[str, Any]:
        content: list[dict[str, Any]] = [
            {"type": "image_url", "image_url": {"url": image_data_url(im, self.max_pixels)}} for im in images
        ]
        content.append({"type": "text", "text": prompt})
        return {
            "model": self.model,
            "messages": [{"role": "user", "content": content}],
            "max_tokens": self.max_tokens,
            "temperature": self.temperature,
        }

    def _key(self) -> str | None:
        return os.environ.get(self.api_key_env) if self.api_key_env else None

    def _headers(self, credentials: bool = True) -> dict[str, str]:
        headers = {"Content-Type": "application/json"}
        key = self._key()
        if key and credentials:
            headers["Authorization"] = f"Bearer {key}"
        return headers

    def _secrets(self) -> list[str]:
        key = self._key()
        return [f"Bearer {key}", key] if key else []

    def _fail(self, message: str) -> JudgeRequestError:
        return JudgeRequestError(redact(message, self._secrets()))

    def post(self, payload: dict[str, Any]) -> str:
        data = json.dumps(payload).encode("utf-8")
        last = ""
        for attempt in range(self.retries + 1):
            try:
                body = self._attempt(data)
            except _Retryable as exc:
                last = str(exc)
                if attempt < self.retries:
                    time.sleep(self.backoff * 2**attempt)
                continue
            try:
                parsed = json.loads(body.decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError) as exc:
                raise self._fail(f"judge endpoint {self.url} returned no JSON ({exc}): {body[:200]!r}") from None
            return _reply_text(parsed, self.url, self._secrets())
        raise self._fail(
            f"judge endpoint {self.url} failed after {self.retries + 1} attempts: {last}. "
            "Fix: check the server is up and the url ends in /v1 (or /v1/chat/completions)."
        )

    def _attempt(self, data: bytes) -> bytes:
        """One request within the deadline, following same-origin redirects; the reply body."""
        deadline = time.monotonic() + self.timeout
        url, credentials = self.url, True
        origin = _origin(urllib.parse.urlsplit(url))
        for _ in range(self.max_redirects + 1):
            status, reason, location, body = self._exchange(url, data, credentials, deadline)
            if status in (301, 302, 303, 307, 308):
                target = urllib.parse.urljoin(url, location or "")
                if not location or _origin(urllib.parse.urlsplit(target)) != origin:
                    raise self._fail(f"judge endpoint {url} redirected ({status}) to another origin ({target}); "
                                     "not followed. Fix: set url to the endpoint's final address.")
                url, credentials = target, False  # credentials are never sent to a redirected address
                continue
            if status == 429 or status >= 500:
                detail = body[:200].decode("utf-8", "replace")
                raise _Retryable(redact(f"HTTP {status} {reason} {detail}".strip(), self._secrets()))
            if status >= 400:
                detail = body[:300].decode("utf-8", "replace")
                hint = "" if credentials else " (the request was redirected: credentials are not sent to a redirected address)"
                raise self._fail(f"judge endpoint {url} refused the request: HTTP {status} {reason} {detail}{hint}")
            return body
        raise self._fail(f"judge endpoint {self.url}: more than {self.max_redirects} redirects")

    def _exchange(self, url: str, data: bytes, credentials: bool, deadline: float) -> tuple[int, str, str | None, bytes]:
        """(status, reason, Location, body) of one POST; the socket is shut down at ``deadline``."""
        parts = urllib.parse.urlsplit(url)
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise _Retryable(f"no answer within {self.timeout:g} s")
        cls = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
        conn = cls(parts.hostname, parts.port, timeout=remaining)
        expired = threading.Event()

        def cut() -> None:  # wakes a recv blocked on a trickling server: the deadline covers the whole exchange
            expired.set()
            sock = conn.sock
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

        timer = threading.Timer(remaining, cut)
        timer.daemon = True
        timer.start()
        try:
            path = parts.path + (f"?{parts.query}" if parts.query else "")
            conn.request("POST", path or "/", body=data, headers=self._headers(credentials))
            resp = conn.getresponse()
            body = bytearray()
            while chunk := resp.read(65536):
                body += chunk
                if len(body) > self.max_reply_bytes:
                    raise self._fail(f"judge endpoint {url} sent more than max_reply_bytes={self.max_reply_bytes} bytes; "
                                     "not read further. Fix: lower max_tokens or raise max_reply_bytes.")
            if expired.is_set():
                raise _Retryable(f"no complete answer within {self.timeout:g} s")
            return resp.status, resp.reason, resp.getheader("Location"), bytes(body)
        except (OSError, http.client.HTTPException) as exc:
            why = f"no complete answer within {self.timeout:g} s" if expired.is_set() else f"{type(exc).__name__}: {exc}"
            raise _Retryable(redact(why, self._secrets())) from None
        finally:
            timer.cancel()
            conn.close()

    def complete(self, prompts: list[str], images: list[list[Any]]) -> list[str]:
        payloads = [self.payload(p, im) for p, im in zip(prompts, images)]
        if self.workers == 1 or len(payloads) == 1:
            return [self.post(p) for p in payloads]
        with ThreadPoolExecutor(max_workers=min(self.workers, len(payloads))) as pool:
            return list(pool.map(self.post, payloads))


def _reply_text(body: Any, url: str, secrets: list[str] | None = None) -> str:
    try:
        content = body["choices"][0]["message"]["content"]
    except (KeyError, IndexError, TypeError):
        raise JudgeRequestError(redact(f"judge endpoint {url} returned no choices[0].message.content: {str(body)[:300]}",
                                       secrets or [])) from None
    if isinstance(content, list):  # some servers return content parts
        content = "".join(part.get("text", "") for part in content if isinstance(part, dict))
    return content or ""


@JUDGE_BACKENDS.register("fixed")
class FixedReplyJudge:
    """Canned replies, cycled in order: for dry runs of a judge-scored task and for tests (a fixed
    judge output makes a metric computable by hand)."""

    def __init__(self, replies: str | list[str] = "Score: 5"):
        self.replies = [replies] if isinstance(replies, str) else list(replies)
        if not self.replies:
            raise ValueError("fixed judge: give at least one reply")
        self._next = itertools.cycle(self.replies)
        self._lock = threading.Lock()

    def complete(self, prompts: list[str], images: list[list[Any]]) -> list[str]:
        with self._lock:
            return [next(self._next) for _ in prompts]


# ---------------------------------------------------------------- local model


def load_vlm(path: str, dtype: str = "float32", device: str = "cpu") -> tuple[Any, Any]:
    """(model, processor) of any image-text-to-text checkpoint (hub id or local dir), in eval mode."""
    from vlalign.models.load import ModelConfig, load_model

    loaded = load_model(ModelConfig(name_or_path=path, dtype=dtype))  # type: ignore[arg-type]
    return loaded.model.to(device).eval(), loaded.processor


def chat_text(processor: Any, prompt: str, n_images: int) -> str:
    """The prompt in the model's chat format, ending where the assistant starts to speak."""
    from vlalign.models.chat import build_prompt

    return build_prompt(processor, prompt, n_images)


def _open_all(images: list[Any]) -> list[Any]:
    from PIL import Image

    from vlalign.data.images import open_image

    return [im if isinstance(im, Image.Image) else open_image(im) for im in images]


@JUDGE_BACKENDS.register("hf", "local")
class LocalHFJudge:
    """A local VLM as judge: greedy ``generate`` for graded replies, logits for A/B choices.

    Samples are run one at a time: each may hold a different number of images, and a judge call is
    small next to the policy's work.
    """

    def __init__(self, model: str, max_new_tokens: int = 16, dtype: str = "float32", device: str = "cpu",
                 loaded: tuple[Any, Any] | None = None):
        self.model, self.processor = loaded if loaded is not None else load_vlm(model, dtype, device)
        self.max_new_tokens, self.device = max_new_tokens, device

    def _inputs(self, prompt: str, images: list[Any]) -> dict[str, Any]:
        text = chat_text(self.processor, prompt, len(images))
        kwargs: dict[str, Any] = {"text": [text], "return_tensors": "pt"}
        if images:
            kwargs["images"] = [_open_all(images)]
        return self.processor(**kwargs).to(self.device)

    @torch.no_grad()
    def complete(self, prompts: list[str], images: list[list[Any]]) -> list[str]:
        replies = []
        tok = self.processor.tokenizer
        for prompt, ims in zip(prompts, images):
            inputs = self._inputs(prompt, ims)
            out = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens, do_sample=False,
                                      pad_token_id=tok.pad_token_id)
            new = out[0, inputs["input_ids"].shape[1]:]  # (T_new,)
            replies.append(tok.decode(new, skip_special_tokens=True))
        return replies

    def choice_token_ids(self, choices: tuple[str, ...]) -> list[int]:
        """First token id of each choice; choices must start with different tokens."""
        tok = self.processor.tokenizer
        ids = [tok.encode(c, add_special_tokens=False)[0] for c in choices]
        if len(set(ids)) != len(ids):
            raise ValueError(f"choices {choices} share a first token under this tokenizer; pick other labels")
        return ids

    @torch.no_grad()
    def choice_probs(self, prompts: list[str], images: list[list[Any]], choices: tuple[str, ...]) -> torch.Tensor:
        """(N, C) softmax over the choices' next-token logits (the rest of the vocabulary ignored)."""
        ids = self.choice_token_ids(choices)
        rows = []
        for prompt, ims in zip(prompts, images):
            logits = self.model(**self._inputs(prompt, ims)).logits[0, -1]  # (V,) next-token logits
            rows.append(torch.log_softmax(logits.float(), -1)[ids].softmax(-1))  # (C,)
        return torch.stack(rows)  # (N, C)
