"""scorecli: exact, lean, fast per-token log-probabilities and entropies from causal language models.

Layer: front. Each public name is imported from its module on first use, so `import scorecli` stays light.
"""

from importlib import import_module
from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("scorecli")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"

# Exports resolve lazily so that `scorecli --help` does not pay for importing torch and transformers.
_EXPORTS = {
    "score": "scorecli.api",
    "run": "scorecli.runner",
    "RunResult": "scorecli.runner",
    "ScoreOptions": "scorecli.data.options",
    "RunProgress": "scorecli.executors.session",
    "RunInterrupted": "scorecli.base.interrupts",
    "open_run": "scorecli.runfolder.rundocs",
    "FinishedRun": "scorecli.runfolder.rundocs",
    "DocScore": "scorecli.data.scores",
    "Scorer": "scorecli.engine.scorer",
    "get_response_log_probs": "scorecli.engine.head",
    "get_response_kl": "scorecli.engine.head",
    "ScoringInterrupted": "scorecli.engine.scorer",
    "Record": "scorecli.inputs.records",
    "Fields": "scorecli.inputs.records",
    "Rejected": "scorecli.inputs.records",
    "read_records": "scorecli.inputs.records",
    "render_chat": "scorecli.engine.chat",
    "LoadedModel": "scorecli.engine.models",
    "load_model": "scorecli.engine.models",
    "read_metadata": "scorecli.runfolder.outputs",
    "compare_runs": "scorecli.analysis.compare",
    "ScorecliLM": "scorecli.executors.harness",
    "ScorecliError": "scorecli.base.errors",
    "UsageError": "scorecli.base.errors",
    "InputError": "scorecli.base.errors",
    "ModelError": "scorecli.base.errors",
    "OutputError": "scorecli.base.errors",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str):
    """Import a public name from the module that defines it on first use."""
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'scorecli' has no attribute {name!r}")
