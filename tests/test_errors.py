"""Every way a `scorecli score` run can be handed something bad (input, options, model, output folder) must
end the same way: the documented exit code, one `scorecli: error: ` line naming the file, line and field,
no traceback, and nothing in the output folder that could pass for a result."""

import json
import subprocess
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import SAMPLES
from typer.testing import CliRunner

from scorecli.cli import app

runner = CliRunner()
SCORECLI = [sys.executable, "-m", "scorecli"]
# The exit codes are part of the CLI's contract, so they are spelled out here rather than imported.
USAGE, INPUT, MODEL, OUTPUT = 2, 3, 4, 5
RESULT_PATTERNS = ("tokens.parquet", "sequences.parquet", "*.partial")


def _jsonl(*lines) -> bytes:
    """A JSONL file's bytes: bytes lines as they are (to write broken ones), anything else as JSON."""
    return b"".join((line if isinstance(line, bytes) else json.dumps(line).encode()) + b"\n" for line in lines)


GOOD = {"id": "ok", "text": "A perfectly fine sentence to score."}
GOOD_INPUT = _jsonl(GOOD, GOOD)
CHAT = {"m": [{"role": "user", "content": "Hi there."}, {"role": "assistant", "content": "Hello!"}]}


def _parquet(**columns):
    def write(path):
        pq.write_table(pa.table(columns), path)

    return write


def _truncated_parquet(path):
    data = (SAMPLES / "mixed.parquet").read_bytes()
    path.write_bytes(data[: len(data) // 2])  # the footer, which Parquet readers start from, is gone


def _error_line(stderr):
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("scorecli: error: "), stderr
    assert "Traceback" not in stderr
    return lines[0]


def _assert_only_line(stderr, line):
    assert stderr == line + "\n", repr(stderr)


def _one_line_error(result, code):
    # A SystemExit is how the CLI ends; any other exception escaped the CLI's error handling.
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output
    assert result.exit_code == code, result.output
    return _error_line(result.stderr)


def _assert_no_result(folder):
    left = [p for pattern in RESULT_PATTERNS for p in folder.rglob(pattern)]
    assert not left, left


def case(id, code, needles, *args, input=GOOD_INPUT, name="in.jsonl", files=None, env=None, marks=()):
    """One bad run: `input` (bytes, a writer, or None for no file) saved as `name`, plus other `files`;
    `args` go after INPUT ({tmp} is the test's folder). The error line must contain each of `needles`."""
    files = {name: input, **(files or {})}
    return pytest.param(files, name, args, env or {}, code, needles, id=id, marks=marks)


def bad_line(id, needles, line):
    """A bad record on line 2 of in.jsonl; read after the model is loaded."""
    return case(id, INPUT, ["in.jsonl", "line 2", *needles], input=_jsonl(GOOD, line))


CASES = [
    # The input file itself.
    case("input-missing", INPUT, ["missing.jsonl", "no such file"], input=None, name="missing.jsonl"),
    case("input-directory", INPUT, ["adir", "directory"], input=lambda p: p.mkdir(), name="adir"),
    case("input-empty", INPUT, ["empty.jsonl", "empty"], input=b"", name="empty.jsonl"),
    case("input-blank-lines", INPUT, ["blank.jsonl", "empty"], input=b"\n  \n\r\n\t\n", name="blank.jsonl"),
    # Bad records after a good first line, so they are met once the model is loaded and scoring has begun.
    case(
        "not-json",
        INPUT,
        ["in.jsonl", "line 3", "JSON"],
        input=_jsonl(GOOD, GOOD, b'{"text": "cut', GOOD),
    ),
    bad_line("json-array", ["object", "array"], ["text", "x"]),
    bad_line("json-number", ["object", "number"], 42),
    bad_line("invalid-utf8", ["UTF-8"], b'{"text": "caf\xe9"}'),
    bad_line("text-missing", ["'text'", "missing"], {"body": "x"}),
    bad_line("text-null", ["'text'", "null"], {"text": None}),
    bad_line("text-number", ["'text'", "number"], {"text": 7}),
    bad_line("text-list", ["'text'", "array"], {"text": ["a"]}),
    # A JSON escape decodes to a lone surrogate, which no UTF-8 output can hold.
    bad_line("lone-surrogate", ["'text'", "surrogate"], b'{"text": "a \\ud800 b"}'),
    case("text-field-nope", INPUT, ["in.jsonl", "line 1", "'nope'"], "--text-field", "nope"),
    # Parquet input: the schema is checked as a whole, so there is no row number to name.
    case("parquet-no-text", INPUT, ["in.parquet", "'text'"], input=_parquet(body=["x"]), name="in.parquet"),
    case(
        "parquet-text-int64",
        INPUT,
        ["in.parquet", "'text'", "int64"],
        input=_parquet(text=pa.array([1, 2], pa.int64())),
        name="in.parquet",
    ),
    case("parquet-junk", INPUT, ["junk.parquet", "Parquet"], input=b"\x8b\x00junk" * 50, name="junk.parquet"),
    case("parquet-truncated", INPUT, ["cut.parquet", "Parquet"], input=_truncated_parquet, name="cut.parquet"),
    # Conversations (--messages-field): records are validated before any template is looked at.
    case(
        "messages-not-array",
        INPUT,
        ["in.jsonl", "line 1", "'m'", "array"],
        "--messages-field",
        "m",
        input=_jsonl({"m": "hi"}),
    ),
    case(
        "messages-empty",
        INPUT,
        ["in.jsonl", "line 1", "'m'", "empty"],
        "--messages-field",
        "m",
        input=_jsonl({"m": []}),
    ),
    case(
        "message-without-content",
        INPUT,
        ["in.jsonl", "line 1", "'m'", "message 1", "'content'"],
        "--messages-field",
        "m",
        input=_jsonl({"m": [{"role": "user"}]}),
    ),
    # The model.
    case("model-folder-unknown", MODEL, ["nowhere"], "-m", "{tmp}/nowhere"),
    case(
        "model-hub-offline",
        MODEL,
        ["someone/not-a-model", "HF_HUB_OFFLINE"],
        "-m",
        "someone/not-a-model",
        env={"HF_HUB_OFFLINE": "1"},
    ),
    case("model-gguf-junk", MODEL, ["x.gguf", "GGUF"], "-m", "{tmp}/x.gguf", files={"x.gguf": b"junk" * 64}),
    # The tiny gpt2 tokenizer has no chat template: found only once the model is loaded.
    case(
        "no-chat-template",
        MODEL,
        ["chat template"],
        "--messages-field",
        "m",
        input=_jsonl(CHAT),
    ),
    # The output folder.
    case("out-is-a-file", OUTPUT, ["--out", "somefile"], "-o", "{tmp}/somefile", files={"somefile": b"x"}),
    case("out-under-a-file", OUTPUT, ["--out", "somefile/sub"], "-o", "{tmp}/somefile/sub", files={"somefile": b"x"}),
    # Option values and combinations.
    case("batch-tokens-0", USAGE, ["--batch-tokens", "0"], "--batch-tokens", "0"),
    case("max-length-1", USAGE, ["--max-length", "1"], "--max-length", "1"),
    case("stride-0", USAGE, ["--stride", "0"], "--stride", "0"),
    case("stride-ge-max-length", USAGE, ["--stride", "--max-length"], "--stride", "8", "--max-length", "8"),
    case("stride-with-truncate", USAGE, ["--stride", "--truncate"], "--stride", "4", "--truncate"),
    case("dtype-float8", USAGE, ["--dtype", "float8"], "--dtype", "float8"),
    case("device-tpu", USAGE, ["--device", "tpu"], "--device", "tpu"),
    case("on-error-maybe", USAGE, ["--on-error", "maybe"], "--on-error", "maybe"),
    case("prompt-without-response", USAGE, ["--prompt-field", "--response-field"], "--prompt-field", "p"),
    case(
        "messages-with-prompt",
        USAGE,
        ["--messages-field", "--prompt-field"],
        *("--messages-field", "m", "--prompt-field", "p", "--response-field", "r"),
    ),
    case(
        "text-field-with-messages",
        USAGE,
        ["--text-field", "--messages-field"],
        *("--text-field", "body", "--messages-field", "m"),
        input=_jsonl(CHAT),
    ),
    case(
        "text-field-with-prompt",
        USAGE,
        ["--text-field", "--prompt-field"],
        *("--text-field", "text", "--prompt-field", "p", "--response-field", "r"),
    ),
    # A file name with a line break is quoted, so the error stays on one line.
    case(
        "name-with-newline",
        INPUT,
        ["in\\nput.jsonl'", "line 2", "boolean"],
        input=_jsonl(GOOD, {"text": "x", "id": True}),
        name="in\nput.jsonl",
    ),
    case("bool-id", INPUT, ["in.jsonl", "line 2", "'id'", "boolean"], input=_jsonl(GOOD, {"text": "x", "id": False})),
    case("nan-literal", INPUT, ["in.jsonl", "line 2", "NaN"], input=_jsonl(GOOD, b'{"text": "x", "score": NaN}')),
    case("resume-with-overwrite", USAGE, ["--resume", "--overwrite"], "--resume", "--overwrite"),
    case("resume-to-stdout", USAGE, ["--resume", "stdout"], "--resume", "-o", "-"),
]


@pytest.mark.parametrize(("files", "name", "args", "env", "code", "needles"), CASES)
def test_bad_run_is_one_line_and_leaves_no_result(gpt2_dir, tmp_path, files, name, args, env, code, needles):
    for file_name, content in files.items():
        if isinstance(content, bytes):
            (tmp_path / file_name).write_bytes(content)
        elif content is not None:
            content(tmp_path / file_name)
    argv = [arg.replace("{tmp}", str(tmp_path)) for arg in args]
    if "-m" not in argv:
        argv += ["-m", str(gpt2_dir)]
    if "-o" not in argv:
        argv += ["-o", str(tmp_path / "out")]
    result = runner.invoke(app, ["score", str(tmp_path / name), *argv], env=env)
    line = _one_line_error(result, code)
    for needle in needles:
        assert needle in line
    assert result.stdout == ""
    _assert_no_result(tmp_path)
    _assert_only_line(result.stderr, line)


def test_bad_record_mid_file_in_a_real_process(gpt2_dir, tmp_path, forked_scorecli):
    """Line 5 of 8 is bad: the message names it, and a real process prints no traceback and keeps no result."""
    records = [{"id": f"d{i}", "text": f"Sentence number {i} is perfectly fine."} for i in range(8)]
    source = tmp_path / "in.jsonl"
    source.write_bytes(_jsonl(*records))
    # Intact, the same file scores: the failure below is that one record's alone.
    assert runner.invoke(app, ["score", str(source), "-m", str(gpt2_dir), "-o", "-", "-q"]).exit_code == 0
    records[4] = {"id": "d4", "text": 4}
    source.write_bytes(_jsonl(*records))
    proc = subprocess.run(
        [forked_scorecli, "score", str(source), "-m", str(gpt2_dir), "-o", str(tmp_path / "out")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert "Traceback" not in proc.stdout
    assert proc.returncode == INPUT, proc.stderr
    line = _error_line(proc.stderr)
    for needle in ("in.jsonl", "line 5", "'text'"):
        assert needle in line
    assert proc.stdout == ""
    _assert_no_result(tmp_path)
    _assert_only_line(proc.stderr, line)
