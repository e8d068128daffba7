"""Write the sample inputs in samples/ from texts written for scorecli (run: python samples/make_samples.py)."""

import json
import random
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

HERE = Path(__file__).parent

# Short texts written for this project: prose, lists, code, numbers and several scripts.
TEXTS = [
    "The kettle clicked off just as the rain started against the kitchen window.",
    "Perplexity is the exponential of the average negative log-likelihood per token.",
    "She folded the map twice, put it in her coat pocket, and walked toward the harbour without looking back.",
    "def add(a, b):\n    return a + b\n\nprint(add(2, 3))",
    "Shopping list: eggs, flour, two lemons, a bag of rice, and something for dessert.",
    "In 2019 the village had 1,204 inhabitants; by 2024 the count had dropped to 987.",
    "Le chat dort sur le canapé pendant que la pluie tombe doucement sur les tuiles.",
    "Die Brücke über den Fluss wurde im Frühling neu gestrichen, diesmal in einem hellen Grün.",
    "東京の朝は静かで、駅に向かう人々の足音だけが聞こえる。",
    "El mercado abre a las siete, y a las ocho ya no quedan naranjas.",
    "Great job on the release 🎉 — the tests pass and the docs finally build!",
    "A language model assigns a probability to every possible next token, and the scores tell us how surprised it was.",
    "colorless green ideas sleep furiously",
    "Mix the dry ingredients first. Add the milk slowly, stirring all the time, until the batter is smooth.",
    "SELECT name, COUNT(*) FROM orders GROUP BY name HAVING COUNT(*) > 3;",
    "The committee will meet on Thursday at 10:30 to review the budget and the hiring plan for next year.",
    "Привет! Как дела? Сегодня хорошая погода для прогулки по парку.",
    "To be scored, a text is first split into tokens; "
    "each token's log-probability depends on all the tokens before it.",
    "ok",
    "Once upon a time, a small robot lived in a lighthouse. Every night it counted the ships that passed, and every "
    "morning it wrote the number on the wall. After many years the wall was full of numbers, and the robot began to "
    "wonder what the ships carried, where they were going, and whether any of them had ever noticed the light.",
]

# Building blocks for longer generated documents of chosen lengths (the benchmark corpus, long.jsonl).
SENTENCES = [
    "The river widened as it reached the plain, and the boats moved more slowly.",
    "Every measurement was repeated three times to be sure of the result.",
    "Nobody remembered who had planted the old oak tree in the middle of the square.",
    "The recipe calls for butter, but olive oil works almost as well.",
    "At noon the market was crowded with people buying bread, cheese and fruit.",
    "The report concluded that the new schedule saved about twelve minutes per trip.",
    "A cold wind came down from the hills and rattled the shutters all night.",
    "She wrote the numbers in a notebook and checked them again before lunch.",
    "The library stayed open late during the exam weeks.",
    "Trains to the coast leave every hour, except on Sundays.",
    "He tuned the guitar, played a few chords, and then put it away again.",
    "The software update fixed the crash but made the start-up slightly slower.",
]


def generated_document(rng: random.Random, n_sentences: int) -> str:
    """A document of n_sentences sentences drawn from SENTENCES."""
    return " ".join(rng.choice(SENTENCES) for _ in range(n_sentences))


def main() -> None:
    """Write mixed.jsonl, edge_cases.jsonl, long.jsonl and mixed.parquet."""
    with open(HERE / "mixed.jsonl", "w", encoding="utf-8") as f:
        for i, text in enumerate(TEXTS):
            f.write(json.dumps({"id": f"m{i:02d}", "text": text}, ensure_ascii=False) + "\n")
    edge = [
        {"id": "empty", "text": ""},
        {"id": "space", "text": " "},
        {"id": "one-char", "text": "a"},
        {"id": "emoji-only", "text": "🙂🙂🙂"},
        {"id": "newlines", "text": "line one\n\nline three\n"},
        {"text": "a record without an id"},
        {"id": 42, "text": "a numeric id"},
    ]
    with open(HERE / "edge_cases.jsonl", "w", encoding="utf-8") as f:
        for row in edge:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    rng = random.Random(0)
    with open(HERE / "long.jsonl", "w", encoding="utf-8") as f:
        for i in range(300):
            n = max(1, int(rng.lognormvariate(1.6, 0.9)))
            f.write(json.dumps({"id": f"g{i:03d}", "text": generated_document(rng, min(n, 60))}) + "\n")
    table = pa.table({"id": [f"p{i:02d}" for i in range(len(TEXTS))], "text": TEXTS})
    pq.write_table(table, HERE / "mixed.parquet")


if __name__ == "__main__":
    main()
