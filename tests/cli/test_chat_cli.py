"""`caramba chat`: driven through piped stdin and through a pseudo-terminal, against a model
trained by `caramba run` (tiny standard manifest, 30 steps on real English)."""

from __future__ import annotations

import json
import os
import pty
import re
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest

MANIFEST = """\
version: 2
name: tiny_chat
targets:
  - type: experiment
    name: train
    backend: torch
    task: task.language_modeling
    data: {ref: dataset.tokens, config: {path: "corpus:english", vocab_size: 8192}}
    system:
      ref: system.language_model
      config:
        model:
          type: TransformerModel
          tie_embeddings: true
          embedder: {type: token, vocab_size: 8192, d_model: 64}
          topology:
            type: StackedTopology
            layers:
              - type: ResidualTopology
                layers:
                  - {type: RMSNormLayer, d_model: 64}
                  - {type: AttentionLayer, d_model: 64, n_heads: 1, mode: standard}
              - {type: RMSNormLayer, d_model: 64}
              - {type: LinearLayer, d_in: 64, d_out: 8192}
    objective: objective.next_token_ce
    trainer: trainer.standard
    runs:
      - id: short
        seed: 2
        steps: 30
        train: {batch_size: 8, block_size: 64, lr: 0.003, device: cpu, dtype: float32}
    runtime: {sample_prompts: []}
"""
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def caramba(*args: str, cwd: Path, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "caramba_cli.main", *args], cwd=cwd, env=ENV,
                          input=stdin, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("chat")
    (root / "tiny.yml").write_text(MANIFEST)
    result = caramba("run", "tiny.yml", "--runs-dir", "runs", cwd=root)
    assert result.returncode == 0, result.stderr
    return root


def test_chat_through_piped_stdin(trained: Path) -> None:
    script = ("And God said unto Moses\n/stats\n\nThe king\n/stats\n/reset\nHello\n/stats\n"
              "/exit\nnever read\n")
    result = caramba("chat", "tiny.yml", "--runs-dir", "runs", "-n", "10", "--seed", "0",
                     "--cache-kind", "q8_0", "--no-newline-ends-reply", cwd=trained,
                     stdin=script)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    stats = [json.loads(line) for line in lines if line.startswith("{")]
    assert len(stats) == 3 and all(s["new_tokens"] >= 1 for s in stats)
    assert stats[0]["cache_kinds"] == {"k": "q8_0", "v": "q8_0"}
    # The cache outlives a turn: turn 2 prefills its own message and the one token of turn
    # 1's reply that was never fed back, not the conversation again.
    first, second, after_reset = stats
    assert first["prefill_tokens"] == first["prompt_tokens"]
    turn_1 = first["prompt_tokens"] + first["new_tokens"]
    assert second["prompt_tokens"] > turn_1 and second["prefill_tokens"] < turn_1
    assert second["prefill_tokens"] == second["prompt_tokens"] - turn_1 + 1
    assert after_reset["prefill_tokens"] == after_reset["prompt_tokens"]  # /reset: fresh cache
    replies = [line for line in result.stderr.splitlines() if "tokens/s" in line]
    assert len(replies) == 3  # one per message; /stats, the blank line and /reset are not
    assert all("cache k q8_0, v q8_0" in line for line in replies)
    assert f"prefilled {second['prefill_tokens']} of {second['prompt_tokens']} tokens" \
        in replies[1]
    assert "conversation cleared" in result.stderr
    assert "caramba chat" in result.stderr and "context 64 tokens" in result.stderr


def test_chat_with_a_draft_keeps_both_caches_across_turns(trained: Path) -> None:
    script = "And God said unto Moses\n/stats\nThe king\n/stats\n/exit\n"
    result = caramba("chat", "tiny.yml", "--runs-dir", "runs", "-n", "8", "--temperature",
                     "0", "--cache-kind", "fp32", "--no-newline-ends-reply", "--draft",
                     "runs/tiny_chat/train", cwd=trained, stdin=script)
    assert result.returncode == 0, result.stderr
    first, second = [json.loads(line) for line in result.stdout.splitlines()
                     if line.startswith("{")]
    assert first["rounds"] >= 1 and first["prefill_tokens"] == first["prompt_tokens"]
    turn_1 = first["prompt_tokens"] + first["new_tokens"]
    assert second["prefill_tokens"] == second["prompt_tokens"] - turn_1 + 1
    assert "acceptance" in result.stderr and "prefilled" in result.stderr


def test_chat_ends_cleanly_at_end_of_input_with_auto_cache(trained: Path) -> None:
    result = caramba("chat", "tiny.yml", "--runs-dir", "runs", "-n", "6", cwd=trained,
                     stdin="The lord\n")
    assert result.returncode == 0, result.stderr
    assert "(probe" in result.stderr or "(persisted" in result.stderr


def test_chat_in_a_pseudo_terminal_prompts_and_answers(trained: Path) -> None:
    main, child = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "caramba_cli.main", "chat", "tiny.yml", "--runs-dir", "runs",
         "-n", "8", "--seed", "0", "--cache-kind", "fp16"],
        cwd=trained, env=ENV, stdin=child, stdout=child, stderr=subprocess.PIPE)
    os.close(child)
    seen = b""

    def read_until(marker: bytes, start: int = 0, timeout: float = 120.0) -> None:
        nonlocal seen
        deadline = time.monotonic() + timeout
        while marker not in seen[start:] and time.monotonic() < deadline:
            ready, _, _ = select.select([main], [], [], 0.5)
            if ready:
                try:
                    seen += os.read(main, 4096)
                except OSError:
                    break
        assert marker in seen[start:], seen

    try:
        read_until(b"> ")  # a terminal gets a prompt
        start = len(seen)
        os.write(main, b"And God said\n")
        read_until(b"\n> ", start)  # the echoed line, the streamed reply, the next prompt
        reply = seen[start:].replace(b"And God said", b"", 1)
        assert len(reply.replace(b"> ", b"").strip()) > 0, reply
        start = len(seen)
        os.write(main, b"The king\n")
        read_until(b"\n> ", start)
        os.write(main, b"/exit\n")
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(main)
    err = proc.stderr.read().decode()
    assert "tokens/s" in err and "cache all fp16" not in err and "cache k fp16" in err
    counts = [tuple(map(int, m)) for m in re.findall(r"prefilled (\d+) of (\d+) tokens", err)]
    assert len(counts) == 2
    assert counts[0][0] == counts[0][1]  # the first turn prefills its prompt
    # The second turn's conversation includes turn 1's prompt and reply; none is fed again.
    assert counts[1][0] < counts[1][1] - counts[0][1]
