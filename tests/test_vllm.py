"""The models this project saves load in vLLM (the CPU build CI installs) and generate what transformers generates."""

import json
import os
import subprocess
import sys
import textwrap

import pytest

from r1lab.infra.hf import load_model, load_tokenizer
from r1lab.rollout.engine import HFRollout, SamplingConfig

PROMPTS = ["What is 2 + 3?", "Calculate 12 + 30 - 7."]

VLLM_SCRIPT = textwrap.dedent("""
    import json, sys
    from vllm import LLM, SamplingParams
    llm = LLM(model=sys.argv[1], dtype="float32", max_model_len=256, enforce_eager=True, seed=0,
              kv_cache_memory_bytes=64 << 20)
    outs = llm.generate(json.loads(sys.argv[2]), SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True),
                        use_tqdm=False)
    print("RESULT " + json.dumps([list(o.outputs[0].token_ids) for o in outs]))
""")


def test_tiny_model_generates_the_same_tokens_in_vllm(tokenizer_dir, tmp_path):
    pytest.importorskip("vllm", reason="vLLM is installed by the `cpu` extra (make setup) or the `gpu` extra")
    env = os.environ | {"VLLM_ENABLE_V1_MULTIPROCESSING": "0", "VLLM_NO_USAGE_STATS": "1", "HF_HUB_OFFLINE": "1",
                        "VLLM_CACHE_ROOT": str(tmp_path / "vllm"), "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "inductor")}
    done = subprocess.run([sys.executable, "-c", VLLM_SCRIPT, str(tokenizer_dir), json.dumps(PROMPTS)], env=env,
                          capture_output=True, text=True, timeout=300)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    assert done.returncode == 0 and lines, done.stderr[-3000:]
    vllm_ids = json.loads(lines[0].removeprefix("RESULT "))

    model, tokenizer = load_model(tokenizer_dir), load_tokenizer(tokenizer_dir)
    hf = HFRollout(model, tokenizer).generate(PROMPTS, SamplingConfig(temperature=0.0, max_new_tokens=12))
    for (completion,), ids in zip(hf, vllm_ids):  # HF stops at an eos that vLLM was told to ignore
        assert completion.token_ids and ids[: len(completion.token_ids)] == completion.token_ids
