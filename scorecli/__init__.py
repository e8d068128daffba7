"""scorecli: exact, lean, fast per-token log-probabilities and entropies from causal language models."""

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
    "ScoreOptions": "scorecli.options",
    "RunProgress": "scorecli.session",
    "RunInterrupted": "scorecli.interrupts",
    "open_run": "scorecli.rundocs",
    "FinishedRun": "scorecli.rundocs",
    "DocScore": "scorecli.scores",
    "Scorer": "scorecli.engine",
    "get_response_log_probs": "scorecli.head",
    "get_response_kl": "scorecli.head",
    "ScoringInterrupted": "scorecli.engine",
    "Record": "scorecli.inputs",
    "Fields": "scorecli.inputs",
    "Rejected": "scorecli.inputs",
    "read_records": "scorecli.inputs",
    "render_chat": "scorecli.chat",
    "LoadedModel": "scorecli.models",
    "load_model": "scorecli.models",
    "read_metadata": "scorecli.outputs",
    "ScorecliError": "scorecli.errors",
    "UsageError": "scorecli.errors",
    "InputError": "scorecli.errors",
    "ModelError": "scorecli.errors",
    "OutputError": "scorecli.errors",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str):
    """Import a public name from the module that defines it on first use."""
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'scorecli' has no attribute {name!r}")
