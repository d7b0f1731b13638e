"""Judge-scored open answers through a fake OpenAI-compatible judge on loopback: single-answer grading
per aspect, pairwise win-rate with both orders (a position-biased judge scores 0.5), and the judge's
prompt, raw reply and parse failures kept per item."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from test_evaluation_benchmarks import Canned, run

from vlalign.evaluation.context import JudgeConfig
from vlalign.evaluation.judging import parse_winner


class ContentJudge(BaseHTTPRequestHandler):
    """Grades "good" answers 9 and others 3, writes nonsense for "garbled" ones; in pairwise prompts
    always picks "A" (a maximally position-biased judge)."""

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        text = next(c["text"] for c in body["messages"][0]["content"] if c["type"] == "text")
        if "Answer A:" in text:
            reply = "Winner: A"
        else:
            answer = text.split("Answer: ", 1)[1].split("\n", 1)[0]
            reply = "hmm" if "garbled" in answer else ("Score: 9" if "good" in answer else "Score: 3")
        out = json.dumps({"choices": [{"message": {"content": reply}}]}).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    def log_message(self, *args):
        pass


@pytest.fixture
def judge_url():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), ContentJudge)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{srv.server_address[1]}/v1"
    srv.shutdown()
    srv.server_close()


def test_parse_winner():
    assert parse_winner("Winner: B") == "b" and parse_winner("**A**") == "a" and parse_winner("winner = tie") == "tie"
    assert parse_winner("Both are fine.") is None


def test_judge_task_grades_and_pairwise_by_hand(tmp_path, judge_url):
    from PIL import Image

    Image.new("RGB", (8, 8), (9, 9, 9)).save(tmp_path / "im.png")
    rows = [{"id": f"q{i}", "images": ["im.png"], "prompt": f"Question {i}?", "meta": {}} for i in range(3)]
    (tmp_path / "prompts.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    ref = tmp_path / "ref_answers.jsonl"
    ref.write_text("".join(json.dumps({"task": "judge", "id": f"q{i}", "answer": f"reference {i}"}) + "\n" for i in range(3)))
    cfg = JudgeConfig(backend="openai", backend_kwargs={"url": judge_url, "retries": 0, "workers": 2, "api_key_env": None},
                      aspects=["helpfulness", "faithfulness"], reference_answers=str(ref))
    ctx = Canned(tmp_path, {"q0": "a good answer", "q1": "a poor answer", "q2": "garbled"}, judge=cfg)
    m = run("judge", ctx)
    # grades 9, 3 and one unparsed reply → mean over the parsed two = 6, failure rate 1/3 (per aspect)
    assert m["judge_helpfulness_score"] == pytest.approx(6.0) and m["judge_faithfulness_score"] == pytest.approx(6.0)
    assert m["judge_helpfulness_parse_failure_rate"] == pytest.approx(1 / 3)
    # the judge always says "A": the policy wins when first (1) and loses when second (0) → 0.5 per item,
    # and the two orders never agree (position consistency 0): both orders cancel the bias
    assert m["judge_win_rate"] == pytest.approx(0.5) and m["judge_position_consistency"] == 0.0
    rows = ctx.answers["judge"]
    garbled = next(r for r in rows if r["id"] == "q2" and r["aspect"] == "helpfulness")
    assert garbled["raw"] == "hmm" and garbled["parse_failure"] is True and "Answer: garbled" in garbled["judge_prompt"]
    pw = next(r for r in rows if r["id"] == "q0" and r["aspect"] == "pairwise")
    assert pw["policy_outcome"] == [1.0, 0.0] and "Answer A: a good answer" in pw["judge_prompt"][0]
    assert "Answer A: reference 0" in pw["judge_prompt"][1] and pw["reference_answer"] == "reference 0"


def test_pairwise_needs_a_reference(tmp_path):
    from PIL import Image

    from vlalign.evaluation.context import EvalDataError

    Image.new("RGB", (8, 8), (9, 9, 9)).save(tmp_path / "im.png")
    (tmp_path / "prompts.jsonl").write_text(json.dumps({"id": "q", "images": ["im.png"], "prompt": "Hi?", "meta": {}}) + "\n")
    ctx = Canned(tmp_path, {"q": "hello"}, judge=JudgeConfig(backend="fixed", aspects=[]))
    with pytest.raises(EvalDataError, match="--ref MODEL or judge.reference_answers"):
        run("judge", ctx)
