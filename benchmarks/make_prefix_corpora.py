"""Write two generated corpora where documents share long starts, for benchmarks/bench_prefix.py.

    python benchmarks/make_prefix_corpora.py OUT_DIR [--prompts 64] [--responses 8] [--questions 200] [--seed 0]

grpo.jsonl     prompt/response records (--prompt-field prompt --response-field response): each of --prompts
               prompts (about 300 SmolLM2 tokens) with --responses responses (about 60 tokens), as GRPO
               scores a group of sampled responses per prompt
fewshot.jsonl  plain texts (text): one few-shot preamble (about 500 tokens) before each of --questions short
               questions, as a few-shot evaluation feeds them

The text is made up from a seeded random generator over a small word list written for this script: no
copied text. Token counts are approximate (about 1.3 tokens a word); bench_prefix.py reports the real ones.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

WORDS = (
    "the a river town stone bridge boat morning evening light window garden market road field old new small "
    "large quiet busy slow fast green grey bright dark cold warm early late near far under over across along "
    "walked carried opened closed counted painted found lost waited turned asked answered noticed remembered "
    "and but so then because while after before until when where every each some many few most none which "
    "teacher farmer baker sailor child neighbour friend visitor keeper driver writer painter clock lamp key "
    "letter map coat basket table chair door wall roof hill valley forest harbour station island village"
).split()
QUESTION_WORDS = ("what", "where", "when", "why", "how", "which", "who")


def sentence(rng: random.Random, low: int = 6, high: int = 14) -> str:
    """A made-up sentence of low to high words, capitalised, with a full stop."""
    words = [rng.choice(WORDS) for _ in range(rng.randint(low, high))]
    return " ".join(words).capitalize() + "."


def paragraph(rng: random.Random, n_words: int) -> str:
    """Made-up sentences until about n_words words."""
    sentences, count = [], 0
    while count < n_words:
        sentences.append(sentence(rng))
        count += len(sentences[-1].split())
    return " ".join(sentences)


def question(rng: random.Random) -> str:
    """A short made-up question."""
    return f"{rng.choice(QUESTION_WORDS).capitalize()} " + " ".join(rng.choice(WORDS) for _ in range(6)) + "?"


def grpo(rng: random.Random, prompts: int, responses: int) -> list[dict]:
    """Prompt/response records: each prompt (about 250 words) with several responses (about 50 words)."""
    records = []
    for p in range(prompts):
        passage = paragraph(rng, 240)
        prompt = f"Read the passage and answer the question.\n\n{passage}\n\nQuestion: {question(rng)}\nAnswer:"
        for r in range(responses):
            records.append({"id": f"p{p}-r{r}", "prompt": prompt, "response": " " + paragraph(rng, 50)})
    return records


def fewshot(rng: random.Random, questions: int) -> list[dict]:
    """Plain texts: one preamble of worked examples (about 350 words), then a short question each."""
    examples = [f"Question: {question(rng)}\nAnswer: {paragraph(rng, 28)}" for _ in range(9)]
    preamble = "Answer each question in one or two sentences.\n\n" + "\n\n".join(examples) + "\n\n"
    return [{"id": f"q{i}", "text": f"{preamble}Question: {question(rng)}\nAnswer:"} for i in range(questions)]


def write(path: Path, records: list[dict]) -> None:
    """Write records as JSON lines."""
    with open(path, "w", encoding="utf-8") as f:
        for record in records:
            f.write(json.dumps(record) + "\n")


def main() -> None:
    """Write grpo.jsonl and fewshot.jsonl into the folder given."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out_dir")
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--responses", type=int, default=8)
    parser.add_argument("--questions", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write(out / "grpo.jsonl", grpo(random.Random(args.seed), args.prompts, args.responses))
    write(out / "fewshot.jsonl", fewshot(random.Random(args.seed + 1), args.questions))


if __name__ == "__main__":
    main()
