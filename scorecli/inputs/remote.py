"""Open fsspec URLs (s3://, gs://, hf://, https://, file://, memory://…) as binary streams.

Layer: inputs. It must not import the data model, the engine, the run folder, the analysis, the executors or the
front of scorecli, nor torch, transformers, rich, typer, ray, plotly or lm_eval.
"""

from __future__ import annotations

from typing import BinaryIO

from scorecli.base.errors import InputError, first_line


def is_url(source: object) -> bool:
    """Tell whether an input names an fsspec URL rather than a local path."""
    return "://" in str(source)


def open_url(url: str, compression: str | None = None) -> BinaryIO:
    """Open a URL for binary reading through fsspec, or raise InputError saying why it cannot be."""
    try:
        import fsspec

        return fsspec.open(url, "rb", compression=compression).open()
    except ImportError as e:  # a protocol whose package is not installed (s3fs, gcsfs…)
        raise InputError(f"{url}: cannot be read ({first_line(e)})") from None
    except FileNotFoundError:
        raise InputError(f"{url}: no such file") from None
    except Exception as e:  # network, authentication, unknown protocol: fsspec's backends raise many kinds
        raise InputError(f"{url}: cannot be read ({type(e).__name__}: {first_line(e)})") from None
