"""Write lm-evaluation-harness tasks of our own over local JSONL files (run: python samples/make_tasks.py).

    python samples/make_tasks.py [--out DIR] [--questions N] [--shots K] [--pairs N] [--documents N]

Three tasks, each a YAML config beside its data (`dataset_path: json`, `data_files`), for
`scorecli lm-eval --include_path DIR --tasks ...` and lm-eval's own backends alike, without any download:

- `scorecli_mc`: four-choice questions generated here (arithmetic, days, months, counting letters,
  odd one out; each choice a short phrase of a few tokens, as in ARC or HellaSwag), K of the train split's
  questions as few-shot examples (lm-eval draws them per question);
  metrics acc, acc_norm, acc_bytes and acc_mutual_info (which adds the choices after an empty context).
- `scorecli_pairs`: minimal pairs (a sentence and its broken twin, empty context): acc.
- `scorecli_rolling`: documents scored whole with lm-eval's rolling windows: word and byte perplexity,
  bits per byte.

The default writes samples/tasks/, with `data_files` relative to the repository root (where the README's
examples run); with --out, they are absolute, so the tasks run from any folder.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEFAULT_OUT = HERE / "tasks"

DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
MONTHS = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
]
NUMBER_WORDS = [
    *("zero", "one", "two", "three", "four", "five", "six"),
    *("seven", "eight", "nine", "ten", "eleven", "twelve"),
]
WORDS = ["garden", "river", "window", "pencil", "harbour", "lantern", "castle", "meadow", "kettle", "basket", "violin"]
# Odd one out: three of a kind and one of another.
KINDS = {
    "animals": ["horse", "rabbit", "otter", "falcon", "badger", "goat", "salmon", "beetle"],
    "tools": ["hammer", "chisel", "wrench", "saw", "ladder", "shovel", "drill", "rake"],
    "fruits": ["apple", "pear", "plum", "cherry", "lemon", "mango", "peach", "grape"],
    "colours": ["red", "green", "purple", "orange", "yellow", "brown", "grey", "violet"],
}

# Minimal pairs written for this project: a sentence and a twin that breaks agreement, word order or sense.
PAIRS = [
    ("The dogs in the yard are barking.", "The dogs in the yard is barking."),
    ("She has finished her homework.", "She have finished her homework."),
    ("The keys to the cabinet were lost.", "The keys to the cabinet was lost."),
    ("Every student brought a pencil.", "Every students brought a pencil."),
    ("They walked home after the concert.", "They walked home after concert the."),
    ("He drank a glass of cold water.", "He drank a glass of cold stones."),
    ("The children are playing outside.", "The children is playing outside."),
    ("My brother rarely eats breakfast.", "My brother rarely eat breakfast."),
    ("The old bridge was repaired last spring.", "The old bridge were repaired last spring."),
    ("We have never seen such a storm.", "We has never seen such a storm."),
    ("The cat sat quietly on the mat.", "The cat sat quietly the on mat."),
    ("A list of names was posted on the door.", "A list of names were posted on the door."),
    ("The baker sells fresh bread every morning.", "The baker sell fresh bread every morning."),
    ("Those books belong to my aunt.", "Those book belong to my aunt."),
    ("The train leaves at seven o'clock.", "The train leave at seven o'clock."),
    ("Nobody knew the answer to the riddle.", "Nobody knew the answer the to riddle."),
]

# Building blocks of the rolling-perplexity documents (written for this project).
SENTENCES = [
    "The lighthouse keeper wrote the weather in a ledger every evening.",
    "Rain had softened the path, and the boots left deep prints in the mud.",
    "A committee of three checked the accounts before the annual meeting.",
    "The bakery on the corner opens at six and closes when the bread is gone.",
    "He measured the table twice and still cut the board too short.",
    "Swallows returned to the barn in April, as they did every year.",
    "The museum moved its maps to a cooler room to protect the ink.",
    "Our train stopped in a field for twenty minutes without explanation.",
    "She planted tomatoes along the fence and basil beside the door.",
    "The report recommended a second bridge across the river.",
    "In winter the lake froze thick enough for the children to skate.",
    "The new software counted every word of the manuscript in a second.",
]


def _choices(rng: random.Random, right: str, pool: list[str]) -> tuple[list[str], int]:
    """Four choices: the right one and three others from `pool`, shuffled; with the right one's index."""
    others = rng.sample([p for p in pool if p != right], 3)
    choices = [right, *others]
    rng.shuffle(choices)
    return choices, choices.index(right)


def question(rng: random.Random) -> dict:
    """One generated four-choice question; its choices are short phrases, as in ARC or HellaSwag."""
    kind = rng.randrange(5)
    if kind == 0:
        a, b = rng.randint(2, 40), rng.randint(2, 40)
        pool = [f"the sum is {a + b + d}" for d in range(-6, 7)]
        text, (choices, label) = f"What is {a} plus {b}?", _choices(rng, f"the sum is {a + b}", pool)
    elif kind == 1:
        day = rng.randrange(7)
        pool = [f"it is {d}" for d in DAYS]
        text = f"Which day comes after {DAYS[day]}?"
        choices, label = _choices(rng, f"it is {DAYS[(day + 1) % 7]}", pool)
    elif kind == 2:
        month = rng.randrange(12)
        pool = [f"the month of {m}" for m in MONTHS]
        text = f"Which month comes after {MONTHS[month]}?"
        choices, label = _choices(rng, f"the month of {MONTHS[(month + 1) % 12]}", pool)
    elif kind == 3:
        word = rng.choice(WORDS)
        pool = [f"it has {n} letters" for n in NUMBER_WORDS[3:]]
        text = f"How many letters are in the word '{word}'?"
        choices, label = _choices(rng, f"it has {NUMBER_WORDS[len(word)]} letters", pool)
    else:
        kind_a, kind_b = rng.sample(sorted(KINDS), 2)
        three, odd = rng.sample(KINDS[kind_a], 3), rng.choice(KINDS[kind_b])
        text = "Which word does not belong with the others?"
        words = [*three, odd]
        rng.shuffle(words)
        choices, label = [f"the word '{w}'" for w in words], words.index(odd)
    return {"question": text, "choices": choices, "label": label}


def document(rng: random.Random, sentences: int) -> str:
    """A generated paragraph of `sentences` sentences."""
    return " ".join(rng.choice(SENTENCES) for _ in range(sentences))


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def _data_files(folder: Path, splits: list[str], base: Path | None) -> str:
    """The YAML lines of a task's `dataset_kwargs.data_files`: relative to `base`, or absolute where None."""
    lines = ["dataset_kwargs:", "  data_files:"]
    for split in splits:
        path = folder / f"{split}.jsonl"
        lines.append(f"    {split}: {json.dumps(str(path if base is None else path.relative_to(base)))}")
    return "\n".join(lines)


def write_tasks(
    out: Path,
    questions: int = 20,
    shots: int = 3,
    pairs: int = len(PAIRS),
    documents: int = 4,
    relative_to: Path | None = None,
    seed: int = 0,
    sampler: str = "default",
) -> Path:
    """Write the three tasks (configs and data) under `out`; `data_files` relative to `relative_to`, else absolute.

    `sampler` is lm-eval's few-shot sampler of the multiple-choice task: `default` draws each question's shots
    apart, `first_n` gives every question the same first shots (as lm-eval's MMLU does).
    """
    out = out.resolve()
    rng = random.Random(seed)
    mc, pair, rolling = out / "mc", out / "pairs", out / "rolling"
    _write_jsonl(mc / "train.jsonl", [question(rng) for _ in range(max(2 * shots, 8))])
    _write_jsonl(mc / "test.jsonl", [question(rng) for _ in range(questions)])
    _write_jsonl(pair / "test.jsonl", [{"good": g, "bad": b} for g, b in PAIRS[:pairs]])
    _write_jsonl(rolling / "test.jsonl", [{"text": document(rng, rng.randint(3, 40))} for _ in range(documents)])
    base = None if relative_to is None else relative_to.resolve()
    (mc / "scorecli_mc.yaml").write_text(
        f"""task: scorecli_mc
dataset_path: json
{_data_files(mc, ["train", "test"], base)}
training_split: train
fewshot_split: train
fewshot_config:
  sampler: {sampler}
test_split: test
output_type: multiple_choice
description: "Answer each question with one of its four choices.\\n\\n"
doc_to_text: "Question: {{{{question}}}}\\nAnswer:"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: label
num_fewshot: {shots}
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
  - metric: acc_norm
    aggregation: mean
    higher_is_better: true
  - metric: acc_bytes
    aggregation: mean
    higher_is_better: true
  - metric: acc_mutual_info
    aggregation: mean
    higher_is_better: true
metadata:
  version: 1.0
""",
        encoding="utf-8",
    )
    (pair / "scorecli_pairs.yaml").write_text(
        f"""task: scorecli_pairs
dataset_path: json
{_data_files(pair, ["test"], base)}
test_split: test
output_type: multiple_choice
doc_to_text: ""
target_delimiter: ""
doc_to_choice: "{{{{[good, bad]}}}}"
doc_to_target: 0
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
metadata:
  version: 1.0
""",
        encoding="utf-8",
    )
    (rolling / "scorecli_rolling.yaml").write_text(
        f"""task: scorecli_rolling
dataset_path: json
{_data_files(rolling, ["test"], base)}
test_split: test
output_type: loglikelihood_rolling
doc_to_text: ""
doc_to_target: "{{{{text}}}}"
should_decontaminate: false
metric_list:
  - metric: word_perplexity
    aggregation: weighted_perplexity
    higher_is_better: false
  - metric: byte_perplexity
    aggregation: weighted_perplexity
    higher_is_better: false
  - metric: bits_per_byte
    aggregation: bits_per_byte
    higher_is_better: false
metadata:
  version: 1.0
""",
        encoding="utf-8",
    )
    return out


def main() -> None:
    """Write the tasks where the command line says."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="Folder to write the tasks to (default: samples/tasks).")
    parser.add_argument("--questions", type=int, default=20, help="Questions of the multiple-choice task.")
    parser.add_argument("--shots", type=int, default=3, help="Few-shot examples before each question.")
    parser.add_argument("--pairs", type=int, default=len(PAIRS), help=f"Minimal pairs (at most {len(PAIRS)}).")
    parser.add_argument("--documents", type=int, default=4, help="Documents of the rolling-perplexity task.")
    parser.add_argument("--sampler", choices=["default", "first_n"], default="default", help="Few-shot sampler.")
    args = parser.parse_args()
    out = args.out or DEFAULT_OUT
    # The repository's own copy names its data relative to the repository root, where the README's examples run.
    relative_to = HERE.parent if args.out is None else None
    write_tasks(out, args.questions, args.shots, args.pairs, args.documents, relative_to, sampler=args.sampler)
    print(out)


if __name__ == "__main__":
    main()
