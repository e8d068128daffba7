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


# Prompt/response pairs written for this project (pairs.jsonl: --prompt-field prompt --response-field response).
PAIRS = [
    ("Question: What is the capital of France?\nAnswer:", " Paris."),
    ("Question: How many legs does a spider have?\nAnswer:", " Eight."),
    ("Translate to German: good morning\n", "Guten Morgen"),
    ("Complete the list: Monday, Tuesday,", " Wednesday, Thursday, Friday."),
    ("Write a haiku about tea.\n", "Steam curls from the cup,\nleaves unfold in amber light,\nthe kettle is still."),
    ("Question: What is 12 times 12?\nAnswer:", " 144."),
]

# Multiple-choice questions written for this project (choices.jsonl: --prompt-field question --choices-field
# choices --label-field label), the label an index of the choices or, for the last two, the right one's text.
CHOICES = [
    (
        "Question: Which animal is known for building dams in rivers?\nAnswer:",
        [" The beaver", " The eagle", " The dolphin", " The camel"],
        0,
    ),
    (
        "Question: What do plants mostly take in through their leaves to make food?\nAnswer:",
        [" Salt", " Carbon dioxide", " Sand", " Milk"],
        1,
    ),
    ("Question: How many days are there in a leap year?\nAnswer:", [" 300", " 365", " 366", " 400"], 2),
    ("Question: Which of these is a primary colour of light?\nAnswer:", [" Brown", " Grey", " Pink", " Green"], 3),
    (
        "Question: What falls from clouds when it is very cold?\nAnswer:",
        [" Snow", " Leaves", " Sparks", " Coins"],
        " Snow",
    ),
    (
        "Question: Which tool is used to cut paper?\nAnswer:",
        [" A spoon", " Scissors", " A pillow", " A bucket"],
        " Scissors",
    ),
]

# Minimal pairs written for this project (minimal_pairs.jsonl: --choices-field sentence_good,sentence_bad).
MINIMAL_PAIRS = [
    ("The cats on the mat are sleeping.", "The cats on the mat is sleeping."),
    ("She has written three letters today.", "She have written three letters today."),
    ("Every child in the village knows the song.", "Every child in the village know the song."),
    ("The keys that I lost were under the sofa.", "The keys that I lost was under the sofa."),
    ("He did not see anybody at the station.", "He did not saw anybody at the station."),
    ("Which book did you say that Anna read?", "Which book did you say that Anna read it?"),
]

# Preference pairs written for this project (preferences.jsonl: --prompt-field prompt --choices-field chosen,rejected).
PREFERENCES = [
    (
        "How do I boil an egg?\n",
        "Place the egg in boiling water for about nine minutes, then cool it in cold water.",
        "Eggs are round.",
    ),
    ("Name a planet with rings.\n", "Saturn is the best known planet with rings.", "The moon is made of cheese."),
    (
        "What is a good way to save energy at home?\n",
        "Switch off lights in rooms that nobody is using.",
        "Leave every window open in winter.",
    ),
    ("Suggest a title for a story about a lost dog.\n", "The Long Way Home", "Untitled Document Number Four"),
]

# A conversation and the assistant's possible next replies, written for this project (chat_choices.jsonl:
# --messages-field messages --choices-field replies --label-field label).
CHAT_CHOICES = [
    (
        [{"role": "user", "content": "I have eggs, flour and milk. What can I cook?"}],
        ["You could make pancakes.", "You could build a bookshelf."],
        0,
    ),
    (
        [
            {"role": "user", "content": "What is the opposite of hot?"},
            {"role": "assistant", "content": "Cold."},
            {"role": "user", "content": "And the opposite of up?"},
        ],
        ["Sideways.", "Down."],
        1,
    ),
]

# Conversations written for this project (chats.jsonl: --messages-field messages).
CHATS = [
    [
        {"role": "user", "content": "Can you suggest a name for a grey cat?"},
        {"role": "assistant", "content": "How about Pebble? It is short, friendly and suits a grey coat."},
    ],
    [
        {"role": "system", "content": "You are a concise assistant."},
        {"role": "user", "content": "What does perplexity measure?"},
        {"role": "assistant", "content": "How surprised a language model is by a text, on average per token."},
        {"role": "user", "content": "Is lower better?"},
        {"role": "assistant", "content": "Yes: a lower perplexity means the model predicted the text better."},
    ],
]

# GRPO-shaped prompt/response records written for this project (grpo.jsonl): each prompt with four sampled
# answers, as an RL trainer scores them; the prompts are long enough that prefix sharing feeds them once.
GRPO = [
    (
        "Read the notice and answer the question.\n\nThe library on Mill Street will close at noon on Friday so "
        "that the heating can be repaired. Books due that day may be returned on Monday without a fine, and the "
        "reading room upstairs stays open until five. Story hour for children moves to Saturday morning at ten."
        "\n\nQuestion: When can books due on Friday be returned without a fine?\nAnswer:",
        [" On Monday.", " On Monday, without a fine.", " Saturday morning at ten.", " Before noon on Friday."],
    ),
    (
        "Read the recipe and answer the question.\n\nWarm the milk until it steams but does not boil. Whisk two "
        "eggs with a spoonful of sugar, pour in the milk slowly while stirring, then bake the custard in a dish "
        "of hot water for forty minutes, until it is set at the edges and still trembles in the middle."
        "\n\nQuestion: How long does the custard bake?\nAnswer:",
        [" Forty minutes.", " About forty minutes, in a dish of hot water.", " Until it boils.", " Two eggs."],
    ),
]

# Sentence pairs for word-level surprisal (stimuli.jsonl: --words); each pair differs in one word.
STIMULI = [
    "The cook tasted the soup and added a pinch of salt.",
    "The cook tasted the soup and added a pinch of glue.",
    "After the storm the fishermen repaired their nets on the beach.",
    "After the storm the fishermen repaired their poems on the beach.",
    "The horse raced past the barn fell.",
    "The horse that was raced past the barn fell.",
]

# The same kind of sentences cut into the regions of a self-paced reading study (regions.jsonl: --words-field).
REGIONS = [
    ["The horse", "raced past", "the barn", "fell."],
    ["The horse", "that was raced past", "the barn", "fell."],
    ["The cook", "tasted", "the soup", "and added", "a pinch of", "salt."],
]


# Web pages with the fields a crawl keeps (web.jsonl: --keep-fields): TEXTS index, url, language, links, tags.
WEB = [
    (0, "https://example.org/weather/rain", "en", 12, ["weather", "home"]),
    (6, "https://example.fr/animaux/chat", "fr", 3, ["animals"]),
    (3, "https://example.com/code/add.py", "code", 0, None),
    (7, "https://example.de/stadt/bruecke", "de", 7, ["city"]),
    (13, "https://example.org/recipes/batter", "en", 25, ["food", "recipes"]),
    (9, "https://example.es/mercado", "es", 4, []),
]


def generated_document(rng: random.Random, n_sentences: int) -> str:
    """A document of n_sentences sentences drawn from SENTENCES."""
    return " ".join(rng.choice(SENTENCES) for _ in range(n_sentences))


def main() -> None:
    """Write every sample: the .jsonl files, mixed.parquet and corpus/."""
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
    # Two texts of about 300 tokens: longer than a small --max-length, to show windows in seconds.
    book_rng = random.Random(1)
    with open(HERE / "book.jsonl", "w", encoding="utf-8") as f:
        for i in range(2):
            f.write(json.dumps({"id": f"b{i}", "text": generated_document(book_rng, 20)}) + "\n")
    # Three good records around two bad ones (a line that is not JSON, a text that is not a string).
    bad = [
        json.dumps({"id": "ok0", "text": TEXTS[0]}),
        '{"id": "broken", "text": "an unfinished line',
        json.dumps({"id": "ok1", "text": TEXTS[1]}),
        json.dumps({"id": "number", "text": 42}),
        json.dumps({"id": "ok2", "text": TEXTS[2]}),
    ]
    (HERE / "bad.jsonl").write_text("\n".join(bad) + "\n", encoding="utf-8")
    with open(HERE / "pairs.jsonl", "w", encoding="utf-8") as f:
        for i, (prompt, response) in enumerate(PAIRS):
            f.write(json.dumps({"id": f"q{i}", "prompt": prompt, "response": response}, ensure_ascii=False) + "\n")
    with open(HERE / "grpo.jsonl", "w", encoding="utf-8") as f:
        for p, (prompt, responses) in enumerate(GRPO):
            for r, response in enumerate(responses):
                f.write(json.dumps({"id": f"g{p}-{r}", "prompt": prompt, "response": response}) + "\n")
    with open(HERE / "choices.jsonl", "w", encoding="utf-8") as f:
        for i, (question, choices, label) in enumerate(CHOICES):
            row = {"id": f"mc{i}", "question": question, "choices": choices, "label": label}
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    with open(HERE / "minimal_pairs.jsonl", "w", encoding="utf-8") as f:
        for i, (good, bad) in enumerate(MINIMAL_PAIRS):
            f.write(json.dumps({"id": f"mp{i}", "sentence_good": good, "sentence_bad": bad}) + "\n")
    with open(HERE / "preferences.jsonl", "w", encoding="utf-8") as f:
        for i, (prompt, chosen, rejected) in enumerate(PREFERENCES):
            row = {"id": f"pref{i}", "prompt": prompt, "chosen": chosen, "rejected": rejected}
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    with open(HERE / "chat_choices.jsonl", "w", encoding="utf-8") as f:
        for i, (messages, replies, label) in enumerate(CHAT_CHOICES):
            row = {"id": f"cc{i}", "messages": messages, "replies": replies, "label": label}
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    with open(HERE / "chats.jsonl", "w", encoding="utf-8") as f:
        for i, messages in enumerate(CHATS):
            f.write(json.dumps({"id": f"c{i}", "messages": messages}, ensure_ascii=False) + "\n")
    with open(HERE / "stimuli.jsonl", "w", encoding="utf-8") as f:
        for i, text in enumerate(STIMULI):
            f.write(json.dumps({"id": f"s{i}", "text": text}, ensure_ascii=False) + "\n")
    with open(HERE / "regions.jsonl", "w", encoding="utf-8") as f:
        for i, regions in enumerate(REGIONS):
            f.write(json.dumps({"id": f"r{i}", "regions": regions}, ensure_ascii=False) + "\n")
    with open(HERE / "web.jsonl", "w", encoding="utf-8") as f:
        for i, (text, url, lang, links, tags) in enumerate(WEB):
            row = {"id": f"w{i}", "text": TEXTS[text], "url": url, "lang": lang, "links": links}
            if tags is not None:  # one page has no tags field at all
                row["tags"] = tags
            row["crawl"] = {"year": 2024, "status": 200}
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    table = pa.table({"id": [f"p{i:02d}" for i in range(len(TEXTS))], "text": TEXTS})
    pq.write_table(table, HERE / "mixed.parquet")
    corpus = HERE / "corpus"
    corpus.mkdir(exist_ok=True)
    with open(corpus / "part-0.jsonl", "w", encoding="utf-8") as f:
        for i, text in enumerate(TEXTS[:5]):
            f.write(json.dumps({"id": f"k{i:02d}", "text": text}, ensure_ascii=False) + "\n")
    pq.write_table(pa.table({"id": [f"k{i:02d}" for i in range(5, 9)], "text": TEXTS[5:9]}), corpus / "part-1.parquet")
    (corpus / "story.txt").write_text(generated_document(random.Random(1), 6) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
