"""`tuneforge eval` speed and resumability: one forward per MCQ question, the item cache, --nproc."""

from __future__ import annotations

import json
import shutil

import pytest
from conftest import ASSETS, DATA_DIR, needs_assets
from typer.testing import CliRunner

from tuneforge.cli import app

EVAL_DIR = ASSETS / "eval"
needs_benchmarks = pytest.mark.skipif(
    not EVAL_DIR.is_dir(), reason=f"benchmark files not found at {EVAL_DIR} (../shared/assets)"
)


def suite_file(tmp_path):
    """A suite with one task of each engine request kind: generation, next-token letters, held-out loss."""
    suite = tmp_path / "fast.yaml"
    suite.write_text(
        f"""name: fast
tasks:
  - {{name: probe, type: probe, max_new_tokens: 4, placeholders: {{name: Bot, author: Team}}}}
  - {{name: cmmlu, type: mcq, path: {EVAL_DIR / "cmmlu"}, layout: cmmlu}}
  - {{name: loss, type: loss, path: {DATA_DIR / "alpaca_en_demo.json"}}}
""",
        encoding="utf-8",
    )
    return suite


def eval_args(model_dir, suite, out, *extra: str) -> list[str]:
    return ["eval", "--model", str(model_dir), "--suite", str(suite), "--limit", "3", "--out", str(out), *extra]


def samples(out) -> list[dict]:
    return [json.loads(line) for line in (out / "samples.jsonl").read_text(encoding="utf-8").splitlines()]


def assert_same_samples(got: list[dict], want: list[dict]) -> None:
    """Equal samples; scores to float rounding (an item batched with others is padded differently)."""
    assert [(s["task"], s["id"], s["model"]) for s in got] == [(s["task"], s["id"], s["model"]) for s in want]
    for a, b in zip(got, want):
        assert a["score"] == pytest.approx(b["score"], abs=1e-5)
        assert {k: v for k, v in a.items() if k != "score"} == {k: v for k, v in b.items() if k != "score"}


@needs_assets
@needs_benchmarks
def test_mcq_letters_from_one_forward_equal_scoring_each_letter_alone(tiny_qwen3_dir):
    from tuneforge.eval.run import run_task
    from tuneforge.eval.suite import TaskConfig
    from tuneforge.eval.tasks import LETTERS, Context, _mcq_messages, load_questions
    from tuneforge.infer.engine import load_engine
    from tuneforge.infer.spec import resolve_spec

    engine = load_engine(resolve_spec(model=str(tiny_qwen3_dir)))
    task = TaskConfig(name="cmmlu", type="mcq", path=str(EVAL_DIR / "cmmlu"), layout="cmmlu", subjects=["anatomy"])
    questions = load_questions(task, EVAL_DIR / "cmmlu", "test")["anatomy"][:5]
    prompts = [engine.render(_mcq_messages(q, [], english=False), enable_thinking=False) for q in questions]
    assert all(p.endswith("答案：<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n") for p in prompts)

    one_forward = engine.next_token_logprobs(prompts, list(LETTERS))
    # The scoring this replaced: each letter as a continuation of its own, four sequences per question.
    per_letter = engine.score([p for p in prompts for _ in LETTERS], list(LETTERS) * len(prompts))
    old = [[per_letter[4 * k + j][0] for j in range(4)] for k in range(len(prompts))]
    assert [x for row in one_forward for x in row] == pytest.approx([x for row in old for x in row], abs=1e-5)

    rows = run_task(task, Context(engine, {"tuned": engine.names[0]}, False, EVAL_DIR, limit=5))
    assert [r.id for r in rows] == [f"anatomy/{i}" for i in range(5)]
    assert [r.pred for r in rows] == [LETTERS[max(range(4), key=scores.__getitem__)] for scores in old]
    assert [r.score["accuracy"] for r in rows] == [float(r.pred == q.answer) for r, q in zip(rows, questions)]


@needs_assets
@needs_benchmarks
def test_a_rerun_recomputes_nothing_done_and_a_torn_last_line_only_its_item(tiny_qwen3_dir, tmp_path, monkeypatch):
    from tuneforge.infer.engine import Engine

    computed: list[tuple[str, int]] = []  # (engine method, items asked for) per call
    for method in "generate_batch", "next_token_logprobs", "score_ids":
        real = getattr(Engine, method)

        def counted(self, items, *args, _real=real, _method=method, **kwargs):
            computed.append((_method, len(items)))
            return _real(self, items, *args, **kwargs)

        monkeypatch.setattr(Engine, method, counted)

    suite, out = suite_file(tmp_path), tmp_path / "evals" / "report"
    cache = tmp_path / "evals" / ".cache" / "items.jsonl"  # beside --out (with --run: RUN/eval/.cache)

    def run() -> dict[str, int]:
        computed.clear()
        result = CliRunner().invoke(app, eval_args(tiny_qwen3_dir, suite, out))
        assert result.exit_code == 0, result.output
        counts: dict[str, int] = {}
        for method, n in computed:
            counts[method] = counts.get(method, 0) + n
        return counts

    # probe: 3 questions; cmmlu: 3 questions, one forward each; loss: 3 conversations (one model: --model alone).
    assert run() == {"generate_batch": 3, "next_token_logprobs": 3, "score_ids": 3}
    first = samples(out)
    lines = cache.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 9 and all(json.loads(line).keys() == {"key", "value"} for line in lines)

    assert run() == {}  # everything done is read back: no engine call at all
    assert samples(out) == first

    data = cache.read_bytes()
    cache.write_bytes(data[: len(data) - 20])  # killed inside the last append: a torn last line
    assert run() == {"score_ids": 1}  # only the last item (the last loss conversation) again
    assert_same_samples(samples(out), first)
    assert len(cache.read_text(encoding="utf-8").splitlines()) == 9  # the torn line was cut, its item appended

    # Another model (here: the same weights with another generation config) has another fingerprint: all computed.
    tuned = tmp_path / "tiny-copy"
    shutil.copytree(tiny_qwen3_dir, tuned)
    (tuned / "generation_config.json").write_text(json.dumps({"eos_token_id": 151645}))
    computed.clear()
    result = CliRunner().invoke(app, eval_args(tuned, suite, out))
    assert result.exit_code == 0, result.output
    assert sum(n for _, n in computed) == 9


@needs_assets
@needs_benchmarks
@pytest.mark.slow  # two more processes start torch and load the model: 2.5 min on 2 cores at load 13
def test_nproc_2_gives_the_same_report_as_one_process(tiny_qwen3_dir, tmp_path):
    suite = suite_file(tmp_path)
    reports = {}
    for nproc in 1, 2:
        out = tmp_path / f"nproc{nproc}" / "report"  # separate folders: separate caches, so both compute
        result = CliRunner().invoke(app, eval_args(tiny_qwen3_dir, suite, out, "--nproc", str(nproc)))
        assert result.exit_code == 0, result.output
        reports[nproc] = samples(out)
    assert len(reports[2]) == 9
    assert_same_samples(reports[2], reports[1])
