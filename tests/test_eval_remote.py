"""`tuneforge eval` beyond one local engine: models behind `tuneforge serve`, another run or endpoint as the
baseline, the LLM judge (against a fake judge with canned verdicts for exact counts, and a real served model),
`--engine vllm` without vLLM, and no network code loaded by a local eval.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import loaded_by
from fastapi import FastAPI
from tiny_adapter import make_tiny_adapter
from typer.testing import CliRunner

from tuneforge.cli import app
from tuneforge.eval.judge import wilson
from tuneforge.eval.report import summarize, table_rows
from tuneforge.eval.run import run_task
from tuneforge.eval.suite import TaskConfig
from tuneforge.eval.tasks import Context
from tuneforge.infer.backend import ChatResult

KEY = "sk-eval-test"
QUESTIONS = ["What is 2+2?", "Name a colour.", "你好吗？"]


def invoke(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["eval", *args])
    return result.exit_code, result.output


def samples(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "samples.jsonl").read_text(encoding="utf-8").splitlines()]


def outputs(folder: Path) -> dict[tuple[str, str, str], str]:
    return {(s["task"], s["id"], s["model"]): s["output"] for s in samples(folder)}


@pytest.fixture(scope="module")
def adapter(tiny_qwen3_dir, tmp_path_factory) -> Path:
    return make_tiny_adapter(tiny_qwen3_dir, tmp_path_factory.mktemp("adapter"))


@pytest.fixture(scope="module")
def served(tiny_qwen3_dir, adapter) -> Iterator[str]:
    """`tuneforge serve`'s app over the tiny Qwen3 (served under its path) and its adapter 'tuned', with a key."""
    from tuneforge.infer.engine import load_engine
    from tuneforge.infer.spec import resolve_spec
    from tuneforge.serve.app import create_app, serve_in_background

    engine = load_engine(resolve_spec(model=str(tiny_qwen3_dir), adapters={"tuned": adapter}))
    with serve_in_background(create_app(engine, api_key=KEY)) as url:
        yield url


@pytest.fixture(scope="module")
def suite(tmp_path_factory) -> Path:
    """A probe and a generation task, both by generation (what an endpoint can run)."""
    folder = tmp_path_factory.mktemp("suite")
    data = [{"instruction": q, "output": "4"} for q in QUESTIONS]
    (folder / "held_out.jsonl").write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in data) + "\n")
    path = folder / "gen.yaml"
    path.write_text(
        "name: gen\ntasks:\n"
        "  - {name: probe, type: probe, max_new_tokens: 6, placeholders: {name: Bot, author: Lab}, "
        "questions: {name: ['Who are you?', '你是谁？']}}\n"
        "  - {name: support, type: generation, path: held_out.jsonl, max_new_tokens: 6}\n",
        encoding="utf-8",
    )
    return path


@pytest.fixture
def key_file(tmp_path, monkeypatch) -> Path:
    for name in ("TUNEFORGE_API_KEY", "VLLM_API_KEY", "OPENAI_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    path = tmp_path / "key"
    path.write_text(KEY + "\n")
    return path


def test_endpoint_eval_answers_exactly_as_the_local_engine(served, suite, key_file, tiny_qwen3_dir, adapter, tmp_path):
    remote, local, mixed = tmp_path / "remote", tmp_path / "local", tmp_path / "mixed"
    base = str(tiny_qwen3_dir)
    common = ["--suite", str(suite), "--no-think"]
    code, out = invoke(
        "--endpoint", served, "--served-model", "tuned", "--baseline-model", base, "--api-key-file", str(key_file),
        "--out", str(remote), "--concurrency", "3", *common,
    )  # fmt: skip
    assert code == 0, out
    code, out = invoke("--model", base, "--adapter", str(adapter), "--out", str(local), *common)
    assert code == 0, out
    # Fine-tuned local, baseline through the server: two engines behind one router.
    code, out = invoke(
        "--model", base, "--adapter", str(adapter), "--baseline", served, "--baseline-model", base,
        "--api-key-file", str(key_file), "--out", str(mixed), *common,
    )  # fmt: skip
    assert code == 0, out

    expected = outputs(local)
    assert len(expected) == 2 * (2 + 3) and len(set(expected.values())) > 2  # the adapter changes the answers
    assert outputs(remote) == expected and outputs(mixed) == expected
    results = json.loads((remote / "results.json").read_text())
    assert results["models"] == {"baseline": base, "tuned": "tuned"} and results["endpoint"] == served
    assert list(results["tasks"]) == ["probe", "support"] and results["tasks"]["support"]["n"] == 3
    first = samples(remote)[0]
    # Through an endpoint the server renders the template: the report keeps the messages sent.
    assert first["prompt"] == '[{"role": "user", "content": "Who are you?"}]'
    assert samples(mixed)[0]["prompt"].startswith("<|im_start|>user\nWho are you?<|im_end|>")


def test_likelihood_tasks_are_refused_for_an_endpoint_before_connecting(tmp_path):
    suite = tmp_path / "s.yaml"
    suite.write_text(
        "name: s\ntasks:\n  - {name: heldout, type: loss, path: x.jsonl}\n  - {name: cmmlu, type: mcq, path: c}\n"
        "  - {name: cmmlu-gen, type: mcq, path: c, method: generate}\n"
    )
    url = "http://127.0.0.1:9"  # nothing listens there: the refusal must come first
    args = ["--endpoint", url, "--served-model", "m", "--baseline", "none", "--suite", str(suite)]
    code, out = invoke(*args, "--out", str(tmp_path / "o"))
    assert code == 2
    assert out.splitlines() == [
        f"error: task heldout (loss) needs token log-probabilities, which the endpoint {url} cannot give; "
        "leave it out (--tasks or the suite)",
        f"error: task cmmlu (mcq, method: likelihood) needs token log-probabilities, which the endpoint {url} "
        "cannot give; set method: generate on it",
    ]


def test_pairwise_judge_without_a_baseline_is_refused_before_loading(tmp_path):
    suite = tmp_path / "s.yaml"
    suite.write_text(
        "name: s\ntasks:\n  - {name: j, type: judge, path: p.jsonl, judge: {endpoint: 'http://x', model: m}}\n"
    )
    code, out = invoke("--model", "not-loaded", "--suite", str(suite), "--out", str(tmp_path / "o"))
    assert code == 2 and out.strip() == (
        "error: task j: pairwise judging compares the fine-tuned model with a baseline; drop --baseline none "
        "(a --model without --adapter has none: pass --baseline RUN or URL), or set mode: rubric"
    )


def test_an_unreachable_judge_is_one_line_before_any_model_loads_or_task_runs(tmp_path):
    suite = tmp_path / "s.yaml"
    suite.write_text(
        "name: s\ntasks:\n  - {name: first, type: loss, path: held.jsonl}\n"
        "  - {name: j, type: judge, mode: rubric, path: p.jsonl, judge: {endpoint: 'http://127.0.0.1:9', model: m}}\n"
    )
    # --model names nothing loadable: reaching the load would be another error, and the first task never starts.
    code, out = invoke("--model", str(tmp_path / "not-loaded"), "--suite", str(suite), "--out", str(tmp_path / "o"))
    assert code == 2 and out.startswith("error: task j: judge http://127.0.0.1:9: cannot reach the server (")
    assert len(out.strip().splitlines()) == 1 and not (tmp_path / "o").exists()


def test_endpoint_problems_are_one_line_each(served, suite, key_file, tmp_path, monkeypatch):
    out = ["--suite", str(suite), "--out", str(tmp_path / "o")]
    cases = [
        (["--endpoint", served], "error: eval: --endpoint needs --served-model NAME"),
        (["--endpoint", served, "--served-model", "tuned"], "error: eval: the base of a served model is not known"),
        (["--model", "m", "--baseline", served], f"error: eval: --baseline {served} needs --baseline-model NAME"),
        (["--model", "m", "--baseline", str(tmp_path)], f"error: --baseline {tmp_path}: is not a tuneforge run"),
        (
            ["--endpoint", "http://127.0.0.1:9", "--served-model", "t", "--baseline", "none"],
            "error: http://127.0.0.1:9: cannot reach the server (",
        ),
        (
            ["--endpoint", served, "--served-model", "nope", "--baseline", "none", "--api-key-file", str(key_file)],
            f"error: {served}: no model 'nope' is served there; served: ",
        ),
    ]
    for args, start in cases:
        code, output = invoke(*args, *out)
        assert code == 2 and output.startswith(start) and len(output.strip().splitlines()) == 1, (args, output)
    monkeypatch.setenv("TUNEFORGE_API_KEY", "sk-wrong")
    code, output = invoke("--endpoint", served, "--served-model", "tuned", "--baseline", "none", *out)
    assert code == 2 and output.strip() == (
        f"error: {served}: the server refused the API key; give its key (--api-key-file FILE or TUNEFORGE_API_KEY; "
        "a judge's: api_key_env)"
    )
    assert not (tmp_path / "o").exists()


def test_engine_vllm_without_vllm_is_one_line(tmp_path, monkeypatch):
    import tuneforge.infer.offline_vllm as offline_vllm

    monkeypatch.setattr(offline_vllm.importlib.util, "find_spec", lambda name: None)
    code, out = invoke("--model", "m", "--engine", "vllm", "--out", str(tmp_path / "o"))
    assert code == 2 and out.strip() == (
        "error: --engine vllm: vllm is not installed in this environment (pip install vllm, on Linux with an "
        "NVIDIA GPU); use --engine transformers, or serve the model with vLLM and pass --endpoint URL"
    )


# --- another run as the baseline ----------------------------------------------------------------------------


def lora_run(folder: Path, base: Path, adapter: Path) -> Path:
    """A run folder as `tuneforge train` leaves it for a LoRA on `base`: config.yaml and adapter/."""
    import shutil

    from tuneforge.config import save_config, validate

    config = validate(
        {
            "model": {"name_or_path": str(base)},
            "data": {"datasets": [{"path": "d.json"}]},
            "output": {"dir": str(folder)},
        }
    )
    save_config(config, folder / "config.yaml")
    shutil.copytree(adapter, folder / "adapter")
    return folder


def test_baseline_run_on_the_same_base_shares_one_load(suite, tiny_qwen3_dir, adapter, tmp_path, monkeypatch):
    import shutil

    import tuneforge.model.load as load

    first = lora_run(tmp_path / "first", tiny_qwen3_dir, adapter)
    second = lora_run(tmp_path / "second", tiny_qwen3_dir, make_tiny_adapter(tiny_qwen3_dir, tmp_path / "a2", seed=1))
    # The same weights and adapter as `first`, on a base in another folder: not known to be the same base.
    third = lora_run(tmp_path / "third", shutil.copytree(tiny_qwen3_dir, tmp_path / "base-copy"), adapter)
    loads = []
    real = load.load_model
    monkeypatch.setattr(load, "load_model", lambda *a, **k: loads.append(a) or real(*a, **k))
    common = ["--suite", str(suite), "--no-think"]

    code, out = invoke("--run", str(second), "--baseline", str(first), *common)
    assert code == 0, out
    assert len(loads) == 1  # the baseline run's adapter joins the same base
    shared = second / "eval" / "gen"
    assert json.loads((shared / "results.json").read_text())["models"] == {"baseline": "first", "tuned": "second"}

    loads.clear()
    code, out = invoke("--run", str(second), "--baseline", str(third), "--out", str(tmp_path / "apart"), *common)
    assert code == 0, out
    assert len(loads) == 2  # another base folder: loaded beside it
    apart = tmp_path / "apart"
    assert json.loads((apart / "results.json").read_text())["models"] == {"baseline": "third", "tuned": "second"}
    assert outputs(apart) == outputs(shared)  # the same adapter answers alike, loaded either way
    assert {o for (_, _, m), o in outputs(shared).items() if m == "baseline"} != {
        o for (_, _, m), o in outputs(shared).items() if m == "tuned"
    }


# --- the judge -------------------------------------------------------------------------------------------------


class Answers:
    """The engine interface with canned answers: '<model>: <question>'; a 'cut' question ends inside thinking."""

    def render(self, messages, **_):
        return messages[-1].content

    def generate_batch(self, conversations, params=None, *, model=None, **_):
        results = []
        for conv, name in zip(conversations, model):
            question = conv[-1].content
            if "cut" in question:
                results.append(ChatResult("still thinking", "", [], "length", 1, 1))
            else:
                results.append(ChatResult(None, f"{name}: {question}", [], "stop", 1, 1))
        return results


def fake_judge(reply) -> tuple[FastAPI, list[str]]:
    """An OpenAI-compatible server whose judge 'judge' answers `reply(prompt)`; it records every prompt."""
    asked: list[str] = []
    api = FastAPI()

    @api.get("/v1/models")
    def models() -> dict:
        return {"object": "list", "data": [{"id": "judge", "object": "model", "created": 0, "owned_by": "test"}]}

    @api.post("/v1/chat/completions")
    def chat(body: dict) -> dict:
        prompt = body["messages"][-1]["content"]
        asked.append(prompt)
        message = {"role": "assistant", "content": reply(prompt)}
        choice = {"index": 0, "message": message, "finish_reason": "stop"}
        return {"id": "x", "object": "chat.completion", "created": 0, "model": "judge", "choices": [choice]}

    return api, asked


def pair_reply(prompt: str) -> str:
    """Verdicts by the case named in the question; 'A is tuned' tells the order."""
    tuned_first = "[Answer A]\ntuned:" in prompt
    case = prompt.split("[Question]\n", 1)[1].split()[0]
    if case == "win":  # the tuned answer, wherever it is (its thinking mentions the other tag)
        return "<think>\nmaybe [[B]]?\n</think>\n\n" + ("[[A]]" if tuned_first else "[[B]]")
    if case == "loss":
        return "Verdict: [[B]]" if tuned_first else "Verdict: [[A]]"
    if case == "tie":
        return "[[C]]"
    if case == "position":  # always the first one shown: the two orders disagree, a tie
        return "[[A]]"
    if case == "contradict":
        return "[[A]] ... no, [[B]]"
    if case == "half":  # readable in one order only
        return "[[A]]" if tuned_first else "I cannot decide."
    return "no verdict here"


CASES = ["win 1", "win 2", "win 3", "loss 1", "tie 1", "position 1", "garbage 1", "contradict 1", "half 1", "cut 1"]


def judge_task(tmp_path: Path, url: str, **fields) -> TaskConfig:
    (tmp_path / "prompts.jsonl").write_text("\n".join(json.dumps({"prompt": c}) for c in CASES))
    judge = {"endpoint": url, "model": "judge", "api_key_env": "JUDGE_KEY"}
    return TaskConfig(name="judge", type="judge", path="prompts.jsonl", judge=judge, **fields)


def test_pairwise_judge_counts_wins_ties_losses_and_unparsable_exactly(tmp_path, monkeypatch):
    from tuneforge.serve.app import serve_in_background

    monkeypatch.setenv("JUDGE_KEY", "sk-judge")
    api, asked = fake_judge(pair_reply)
    with serve_in_background(api) as url:
        ctx = Context(Answers(), {"baseline": "base", "tuned": "tuned"}, None, tmp_path)
        rows = run_task(judge_task(tmp_path, url), ctx)
    assert len(asked) == 2 * 9  # both orders of every item but the one cut off in its thinking
    assert not any("cut 1" in prompt for prompt in asked)
    tuned = {r.prompt: r for r in rows if r.model == "tuned"}
    outcomes = [tuned[c].outcome for c in CASES]
    assert outcomes == ["win"] * 3 + ["loss", "tie", "tie", "unparsable", "unparsable", "unparsable"] + [
        "thinking_truncated"
    ]
    assert tuned["position 1"].pred["verdicts"] == ["A", "A"] and tuned["half 1"].pred["verdicts"] == ["A", None]

    result = summarize(rows)["judge"]
    assert result["judge"]["counts"] == {"win": 3, "tie": 2, "loss": 1, "unparsable": 3, "thinking_truncated": 1}
    assert result["metrics"]["win_rate"] == {"baseline": None, "tuned": pytest.approx(4 / 6)}
    low, high = result["judge"]["ci95"]
    assert (low, high) == pytest.approx(wilson(4, 6)) and (round(low, 4), round(high, 4)) == (0.3000, 0.9032)
    (row,) = table_rows({"judge": result})
    assert row == [
        "judge", "win_rate", "—", "0.6667", "—",
        "10 (thinking truncated: baseline 1, tuned 1) (W/T/L 3/2/1, unparsable 3; 95% Wilson CI 0.3000-0.9032)",
    ]  # fmt: skip


def test_rubric_judge_rates_each_model_and_counts_unreadable_ratings(tmp_path, monkeypatch):
    from tuneforge.serve.app import serve_in_background

    def rate(prompt: str) -> str:
        answer = prompt.split("[Answer]\n", 1)[1]
        if answer.startswith("tuned: garbage"):
            return "[[11]]"  # outside 1-10
        return "Rating: [[8]]" if answer.startswith("tuned:") else "Rating: [[3]]"

    monkeypatch.setenv("JUDGE_KEY", "sk-judge")
    api, asked = fake_judge(rate)
    with serve_in_background(api) as url:
        ctx = Context(Answers(), {"baseline": "base", "tuned": "tuned"}, None, tmp_path)
        rows = run_task(judge_task(tmp_path, url, mode="rubric", rubric="accuracy"), ctx)
    assert len(asked) == 2 * 9 and "against these criteria: accuracy." in asked[0]
    result = summarize(rows)["judge"]
    assert result["metrics"]["rating"] == {"baseline": 3.0, "tuned": 8.0}
    assert result["judge"]["unparsable"] == {"baseline": 0, "tuned": 1}
    assert result["judge"]["ci95"] == {"baseline": [3.0, 3.0], "tuned": [8.0, 8.0]}  # no spread


def test_judge_task_through_the_cli_against_tuneforge_serve(served, key_file, tiny_qwen3_dir, tmp_path, monkeypatch):
    """The tiny served model both answers and judges (its verdicts are noise); a position-biased judge gives ties."""
    from tuneforge.serve.app import serve_in_background

    monkeypatch.setenv("JUDGE_KEY", KEY)
    (tmp_path / "prompts.jsonl").write_text("\n".join(json.dumps({"prompt": q}) for q in QUESTIONS))
    api, asked = fake_judge(lambda prompt: "[[A]]")
    with serve_in_background(api) as fake:
        (tmp_path / "judge.yaml").write_text(
            "name: judged\ntasks:\n"
            "  - {name: biased, type: judge, path: prompts.jsonl, max_new_tokens: 4, "
            f"judge: {{endpoint: '{fake}', model: judge, api_key_env: JUDGE_KEY}}}}\n"
            "  - {name: tiny, type: judge, path: prompts.jsonl, max_new_tokens: 4, "
            f"judge: {{endpoint: '{served}', model: tuned, api_key_env: JUDGE_KEY, max_tokens: 8}}}}\n"
        )
        args = ["--endpoint", served, "--served-model", "tuned", "--baseline-model", str(tiny_qwen3_dir)]
        code, out = invoke(*args, "--api-key-file", str(key_file), "--suite", str(tmp_path / "judge.yaml"),
                           "--out", str(tmp_path / "o"), "--no-think")  # fmt: skip
    assert code == 0, out
    assert len(asked) == 2 * len(QUESTIONS)
    tasks = json.loads((tmp_path / "o" / "results.json").read_text())["tasks"]
    assert tasks["biased"]["judge"]["counts"]["tie"] == len(QUESTIONS)
    assert tasks["biased"]["metrics"]["win_rate"]["tuned"] == 0.5
    counts = tasks["tiny"]["judge"]["counts"]
    assert sum(counts.values()) == len(QUESTIONS)
    judged = [s for s in samples(tmp_path / "o") if s["task"] == "tiny" and s["model"] == "tuned"]
    assert all(len(s["pred"]["judgements"]) == 2 and s["outcome"] in counts for s in judged)
    assert "biased" in out and "win_rate" in out


def test_a_local_eval_loads_no_network_client():
    imports = "tuneforge.cli, tuneforge.eval.run, tuneforge.eval.report, tuneforge.eval.judge"
    assert loaded_by(imports, ("openai", "httpx", "httpx2", "vllm")) == []
