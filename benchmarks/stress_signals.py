"""Signals in bursts to single-process `scorecli score` runs, many times over: each run must end in exit 130
(143 where SIGTERM came first) with its message, never in an abort or a traceback, whatever else arrives.

    python benchmarks/stress_signals.py [--reps 20] [--scenarios scoring,part,...] [--model PATH]
                                        [--threads N] [--real] [--check-resume]

A burst is three signals 50 ms apart, sent by this script to a running `scorecli score CORPUS -o DIR
--batch-tokens 64 --words -q` (360 generated documents, three parts). Scenarios, by where the
burst's first signal lands:
  scoring         while batches are scored (once two parts are saved): INT INT INT, exit 130
  scoring-mixed   the same with TERM INT TERM, exit 143
  part            as a part is saved (the run stopped itself with SIGSTOP after writing the part's files;
                  the first signal is sent while it is stopped, then SIGCONT): INT INT INT, exit 130
  part-mixed      the same with INT TERM INT, exit 130
  finish          as the final files are joined (stopped at "joining"): INT INT INT, exit 130
  finish-mixed    the same with TERM INT TERM, exit 143
  committed       just after the finish is committed: INT TERM INT, exit 130
  shutdown        the run interrupts itself as a part is saved; the burst starts the moment the resume
                  hint is on stderr, so it lands while the process exits: INT INT INT, exit 130
  shutdown-mixed  the same, interrupted by SIGTERM, burst TERM INT TERM, exit 143
A run counts as good when its exit code is the expected one, its stderr says what was kept (the resume
command, or that the results are complete) and holds no "Traceback", "Exception ignored" or "terminate
called". With --check-resume each interrupted run is then resumed (`scorecli score -o DIR --resume`) and its
files compared with an uninterrupted run's.

Each run is a real process of its own, with its own pid and signals: by default forked from this script after
it imported torch and transformers (as tests/forkserver.py does: no tensor operation runs before the fork),
which saves five seconds of imports a run; with --real each run is a fresh `python -m scorecli`. The default
model is a tiny random GPT-2 (bench_memory.py's) built here, with --threads 8 so that eight batches are
scored side by side in threads; --model PATH uses another (the embedded SmolLM2: --model smollm2).
Prints a table of outcomes per scenario; exits 1 if any run was not good.
"""

from __future__ import annotations

import argparse
import collections
import importlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_memory import build_model, write_corpus  # the sibling script: run as benchmarks/stress_signals.py

GAP = 0.05  # seconds between the signals of a burst
HINT = "resume with:"
COMPLETE = "its results are complete in"
BAD_SIGNS = ("Traceback", "Exception ignored", "terminate called", "Fatal Python error", "Aborted")
# name: (SCORECLI_FAULT, the burst, the exit code, what stderr must say)
SCENARIOS = {
    "scoring": ("", "INT INT INT", 130, HINT),
    "scoring-mixed": ("", "TERM INT TERM", 143, HINT),
    "part": ("part-written:STOP", "INT INT INT", 130, HINT),
    "part-mixed": ("part-written:STOP", "INT TERM INT", 130, HINT),
    "finish": ("joining:STOP", "INT INT INT", 130, COMPLETE),
    "finish-mixed": ("joining:STOP", "TERM INT TERM", 143, COMPLETE),
    "committed": ("committed:STOP", "INT TERM INT", 130, COMPLETE),
    "shutdown": ("part-written", "INT INT INT", 130, HINT),
    "shutdown-mixed": ("part-written:TERM", "TERM INT TERM", 143, HINT),
}
# What a `scorecli score` imports on its way, imported once here before the runs are forked.
PRELOAD = (
    "pandas",
    "pydantic",
    "transformers",
    "transformers.models.gpt2.modeling_gpt2",
    "transformers.models.llama.modeling_llama",
    "transformers.models.auto.modeling_auto",
    "transformers.models.auto.tokenization_auto",
    "scorecli.cli",
    "scorecli.engine.scorer",
    "scorecli.engine.models",
    "scorecli.runfolder.outputs",
    "scorecli.runfolder.runs",
    "scorecli.analysis.bootstrap",
)


class Run:
    """A `scorecli` process: forked from this one (after its imports) or started afresh (`real`)."""

    def __init__(self, argv: list[str], env: dict[str, str], err: Path, real: bool) -> None:
        """Start `scorecli ARGV` with environment `env`, its stderr into the file `err`."""
        self.err = err
        err.write_text("")  # there before the run starts: polled for what it says
        sys.stdout.flush()
        sys.stderr.flush()
        if real:
            with open(err, "w") as f:
                self.proc = subprocess.Popen(
                    [sys.executable, "-m", "scorecli", *argv],
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=f,
                )
            self.pid = self.proc.pid
            return
        self.proc = None
        self.pid = os.fork()
        if self.pid == 0:
            _become(argv, env, err)  # never returns: the child ends as a `scorecli` process ends

    def state(self) -> str:
        """The process's state letter (R, S, T for stopped, Z once it ended and is not yet waited for)."""
        return Path(f"/proc/{self.pid}/stat").read_text().rsplit(") ", 1)[1][0]

    def stderr(self) -> str:
        """What it has written on stderr so far."""
        return self.err.read_text(errors="replace")

    def send(self, sig: signal.Signals) -> None:
        """Send it a signal (it may have ended already: unwaited for, its pid is still its own)."""
        os.kill(self.pid, sig)

    def wait(self, timeout: float = 300) -> int:
        """Its exit code, or minus the signal that killed it; SIGKILL after `timeout` seconds."""
        end = time.monotonic() + timeout
        while True:
            done, status = os.waitpid(self.pid, os.WNOHANG)
            if done:
                if self.proc is not None:
                    self.proc.returncode = os.waitstatus_to_exitcode(status)
                return os.waitstatus_to_exitcode(status)
            if time.monotonic() > end:
                os.kill(self.pid, signal.SIGKILL)
                end = float("inf")
            time.sleep(0.01)


def _become(argv: list[str], env: dict[str, str], err: Path) -> None:
    """In a forked child: take stderr into `err`, the environment and argv, and run scorecli's entry point."""
    null = os.open(os.devnull, os.O_RDWR)
    os.dup2(null, 0)
    os.dup2(null, 1)
    os.dup2(os.open(err, os.O_WRONLY | os.O_APPEND), 2)
    os.environ.clear()
    os.environ.update(env)
    sys.argv = [str(Path(sys.executable).with_name("scorecli")), *argv]
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    from scorecli.__main__ import main

    main()
    sys.exit(0)  # SystemExit ends the child as Python ends: threads joined, atexit run, streams flushed


def wait_until(check, what: str, run: Run, timeout: float = 300) -> None:
    """Poll `check` until it holds; fail if the run ends first."""
    end = time.monotonic() + timeout
    while not check():
        if run.state() == "Z" or time.monotonic() > end:
            raise RuntimeError(f"the run ended (or took too long) before {what}:\n{run.stderr()}")
        time.sleep(0.002)


def one(scenario: str, base: list[str], out: Path, err: Path, real: bool) -> tuple[int, str]:
    """Run a scenario once; return the exit code and stderr."""
    at, burst, _, _ = SCENARIOS[scenario]
    env = {k: v for k, v in os.environ.items() if k != "SCORECLI_FAULT"}
    if at:
        env["SCORECLI_FAULT"] = at
    shutil.rmtree(out, ignore_errors=True)
    run = Run([*base, "-o", str(out)], env, err, real)
    signals = [getattr(signal, f"SIG{name}") for name in burst.split()]
    if at.endswith(":STOP"):
        wait_until(lambda: run.state() == "T", f"it stopped at {at}", run)
        run.send(signals[0])  # pending while it is stopped: delivered exactly where it stopped
        run.send(signal.SIGCONT)
        signals = signals[1:]
        time.sleep(GAP)
    elif at:
        wait_until(lambda: HINT in run.stderr(), "the resume hint", run)
    else:
        wait_until(lambda: (out / "parts" / "000001.json").exists(), "two parts were saved", run)
    for i, sig in enumerate(signals):
        run.send(sig)
        if i < len(signals) - 1:
            time.sleep(GAP)
    return run.wait(), run.stderr()


def same_results(a: Path, b: Path) -> bool:
    """Whether two finished run folders hold the same tables, metadata and summary (timings aside)."""
    import json

    import pyarrow.parquet as pq

    for name in ("tokens.parquet", "sequences.parquet", "words.parquet"):
        left, right = pq.read_table(a / name), pq.read_table(b / name)
        if not left.equals(right) or left.schema.metadata != right.schema.metadata:
            return False
    sa, sb = (json.loads((d / "summary.json").read_text())["summary"] for d in (a, b))
    for timing in ("seconds", "tokens_per_second", "sessions", "session_seconds", "session_tokens_per_second"):
        sa.pop(timing), sb.pop(timing)
    return sa == sb and sorted(p.name for p in a.iterdir()) == sorted(p.name for p in b.iterdir())


def in_child(fn, *args) -> bool:
    """Run `fn(*args)` in a forked child (pyarrow's threads never start in this process); whether it held."""
    sys.stdout.flush()
    pid = os.fork()
    if pid == 0:
        try:
            code = 0 if fn(*args) else 1
        except BaseException:
            import traceback

            traceback.print_exc()
            code = 2
        os._exit(code)
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0


def verdict(scenario: str, code: int, err: str) -> str:
    """'good', or what went wrong."""
    _, _, expected, said = SCENARIOS[scenario]
    if code < 0:
        return f"killed by {signal.Signals(-code).name}"
    if any(sign in err for sign in BAD_SIGNS):
        return f"exit {code}, traceback or abort message"
    if code != expected:
        return f"exit {code}"
    if said not in err:
        return "no resume hint" if said == HINT else "no 'complete' line"
    return "good"


def main() -> None:
    """Build the model and corpus, run each scenario `--reps` times, print the outcomes."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=20)
    parser.add_argument("--scenarios", default=",".join(SCENARIOS))
    parser.add_argument("--model", default=None, help="a model folder, or smollm2 (default: a tiny GPT-2 built here)")
    parser.add_argument("--threads", type=int, default=8, help="scorecli's --threads (batches side by side)")
    parser.add_argument("--documents", type=int, default=360, help="of the generated corpus")
    parser.add_argument("--real", action="store_true", help="start each run as a fresh python -m scorecli")
    parser.add_argument("--check-resume", action="store_true", help="resume each interrupted run and compare")
    parser.add_argument("--build-model", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.build_model:  # in a process of its own: this one must run no tensor operation before it forks
        build_model(Path(args.build_model))
        return
    scenarios = args.scenarios.split(",")
    for name in scenarios:
        if name not in SCENARIOS:
            sys.exit(f"unknown scenario {name!r}; known: {', '.join(SCENARIOS)}")
    parent = os.getpid()
    tmp = Path(tempfile.mkdtemp(prefix="stress-signals-"))
    corpus = tmp / "corpus.jsonl"
    write_corpus(corpus, args.documents)
    model = args.model
    if model is None:
        model = str(tmp / "model")
        subprocess.run([sys.executable, __file__, "--build-model", model], check=True)
    base = ["score", str(corpus), "--batch-tokens", "64", "--words", "-q", "--threads", str(args.threads)]
    base += [] if model == "smollm2" else ["-m", model]
    if not args.real:
        for name in PRELOAD:
            importlib.import_module(name)
    solo = tmp / "solo"
    if args.check_resume:
        code = Run([*base, "-o", str(solo)], dict(os.environ), tmp / "solo.err", args.real).wait()
        if code != 0:
            sys.exit(f"the uninterrupted run failed ({code}):\n{(tmp / 'solo.err').read_text()}")
    outcomes: dict[str, collections.Counter] = {}
    examples: dict[tuple[str, str], str] = {}
    started = time.monotonic()
    for rep in range(args.reps):
        for scenario in scenarios:
            out, err = tmp / scenario, tmp / f"{scenario}.err"
            code, said = one(scenario, base, out, err, args.real)
            result = verdict(scenario, code, said)
            if result == "good" and args.check_resume and SCENARIOS[scenario][3] == HINT:
                resumed = Run(["score", "-o", str(out), "--resume", "-q"], dict(os.environ), err, args.real).wait()
                if resumed != 0 or not in_child(same_results, out, solo):
                    result = f"resume: exit {resumed} or results differ"
            outcomes.setdefault(scenario, collections.Counter())[result] += 1
            examples.setdefault((scenario, result), said)
            print(f"{rep + 1:3d} {scenario:15s} {result}", flush=True)
    if os.getpid() != parent:  # a forked run does not get here, but never let one remove the folder
        return
    print(f"\n{args.reps} repetitions in {time.monotonic() - started:.0f} s ({'fresh' if args.real else 'forked'})")
    print(f"{'scenario':15s} {'good':>5s}  other outcomes")
    bad = False
    for scenario in scenarios:
        counts = outcomes[scenario]
        others = ", ".join(f"{what}: {n}" for what, n in counts.items() if what != "good")
        bad |= bool(others)
        print(f"{scenario:15s} {counts['good']:5d}  {others}")
    for (scenario, result), said in examples.items():
        if result != "good":
            print(f"\n--- {scenario}, {result}; its stderr:\n{said.strip()[-2000:]}")
    shutil.rmtree(tmp, ignore_errors=True)
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
