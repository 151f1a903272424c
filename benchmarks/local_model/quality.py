"""How much a requantized copy of the bundled SmolLM2 changes its output, against the bundled Q4_1.

    python benchmarks/local_model/quality.py /tmp/smollm2-q4_0.gguf [/tmp/smollm2-q8_0.gguf ...]

For each candidate GGUF: greedy chat answers (64 tokens) to a few prompts, compared with the
bundled file's (identical, or the token where they part); then, teacher-forced over the bundled
file's own answers, how often the candidate's top token is the bundled file's top token and the
mean KL divergence of its next-token distribution from the bundled one (nats per token).
"""

from __future__ import annotations

import argparse
import ctypes
from pathlib import Path

import llama_cpp as llama
import numpy as np

from tokenway.providers.local.chat_template import ChatTemplate
from tokenway.providers.local.model_files import bundled_model_path

PROMPTS = [
    "What is the capital of France?",
    "Write a short poem about the sea.",
    "Explain in two sentences why the sky is blue.",
    "List three fruits that are red.",
    "How do I reverse a list in Python?",
    "Write a short story about a lighthouse keeper and a storm.",
    "What is 12 times 12?",
    "Give me a tip for sleeping better.",
]
ANSWER_TOKENS = 64
_SILENT = llama.llama_log_callback(lambda level, text, user_data: None)


class Model:
    def __init__(self, path: Path) -> None:
        params = llama.llama_model_default_params()
        params.load_mode = llama.LLAMA_LOAD_MODE_NONE
        self.model = llama.llama_model_load_from_file(str(path).encode(), params)
        self.vocab = llama.llama_model_get_vocab(self.model)
        self.n_vocab = llama.llama_vocab_n_tokens(self.vocab)
        ctx_params = llama.llama_context_default_params()
        ctx_params.n_ctx = ctx_params.n_batch = ctx_params.n_ubatch = 512
        ctx_params.no_perf = True
        self.ctx = llama.llama_init_from_model(self.model, ctx_params)
        self.batch = llama.llama_batch_init(512, 0, 1)
        buf = ctypes.create_string_buffer(1 << 16)
        llama.llama_model_meta_val_str(self.model, b"tokenizer.chat_template", buf, len(buf))
        self.template = ChatTemplate(buf.value.decode(), bos_token="", eos_token="")

    def tokens(self, question: str) -> list[int]:
        text = self.template.render([{"role": "user", "content": question}]).encode()
        array = (llama.llama_token * (len(text) + 2))()
        n = llama.llama_tokenize(self.vocab, text, len(text), array, len(array), False, True)
        return list(array[:n])

    def logits(self, tokens: list[int], start: int = 0) -> np.ndarray:
        """Next-token logits after each of ``tokens``, placed at ``start`` (0: a fresh cache)."""
        if start == 0:
            llama.llama_memory_clear(llama.llama_get_memory(self.ctx), True)
        for i, token in enumerate(tokens):
            self.batch.token[i], self.batch.pos[i] = token, start + i
            self.batch.n_seq_id[i], self.batch.seq_id[i][0], self.batch.logits[i] = 1, 0, 1
        self.batch.n_tokens = len(tokens)
        if llama.llama_decode(self.ctx, self.batch) != 0:
            raise RuntimeError("llama_decode failed")
        pointer = llama.llama_get_logits(self.ctx)
        return np.ctypeslib.as_array(pointer, shape=(len(tokens), self.n_vocab)).copy()

    def greedy(self, prompt: list[int]) -> list[int]:
        answer: list[int] = []
        last = self.logits(prompt)[-1]
        for _ in range(ANSWER_TOKENS):
            token = int(np.argmax(last))
            if llama.llama_vocab_is_eog(self.vocab, token):
                break
            answer.append(token)
            last = self.logits([token], start=len(prompt) + len(answer) - 1)[-1]
        return answer

    def text(self, tokens: list[int]) -> str:
        out = b""
        for token in tokens:
            buf = ctypes.create_string_buffer(64)
            n = llama.llama_token_to_piece(self.vocab, token, buf, len(buf), 0, False)
            out += buf.raw[:n]
        return out.decode(errors="replace")


def log_softmax(x: np.ndarray) -> np.ndarray:
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("candidates", nargs="+", type=Path)
    parser.add_argument("--show", action="store_true", help="print the answers that differ")
    args = parser.parse_args()
    llama.llama_log_set(_SILENT, ctypes.c_void_p(0))
    llama.llama_backend_init()
    reference = Model(bundled_model_path())
    prompts = [reference.tokens(q) for q in PROMPTS]
    answers = [reference.greedy(p) for p in prompts]
    for path in args.candidates:
        candidate = Model(path)
        same, parted, agree, total, kl = 0, [], 0, 0, 0.0
        for question, prompt, answer in zip(PROMPTS, prompts, answers, strict=True):
            mine = candidate.greedy(prompt)
            if mine == answer:
                same += 1
            else:
                pairs = zip(answer, mine, strict=False)
                parted.append(next((i for i, (a, b) in enumerate(pairs) if a != b), min(len(answer), len(mine))))
                if args.show:
                    print(f"  {question}\n    Q4_1: {reference.text(answer)!r}\n"
                          f"    {path.name}: {candidate.text(mine)!r}")
            forced = prompt + answer
            ref = log_softmax(reference.logits(forced)[len(prompt) - 1:-1].astype(np.float64))
            cand = log_softmax(candidate.logits(forced)[len(prompt) - 1:-1].astype(np.float64))
            agree += int((ref.argmax(axis=1) == cand.argmax(axis=1)).sum())
            total += len(answer)
            kl += float((np.exp(ref) * (ref - cand)).sum())
        print(f"{path.name}: {same}/{len(PROMPTS)} greedy answers identical to Q4_1 "
              f"(others part at token {sorted(parted)}); teacher-forced top-1 agreement "
              f"{agree / total:.1%}, mean KL {kl / total:.4f} nats/token")


if __name__ == "__main__":
    main()
