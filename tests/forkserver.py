"""A `scorecli` that starts in a second instead of ten, for the README test and others: a fork server.

Most of a `scorecli` run on the README's small samples is Python importing torch and transformers. The
server imports them once (it never runs a tensor operation, so no OpenMP or tokenizer threads exist when it
forks) and listens on a Unix socket. `shim()` writes a `scorecli` executable that a test puts first on
PATH: it hands the server its argv, working folder, environment and its standard input, output and error
(the file descriptors themselves), and the server forks a child that becomes that command: it takes those
descriptors as 0, 1 and 2, that folder, that environment and argv, runs `scorecli.__main__.main` as the
installed entry point does and exits as a Python process exits (threads joined, atexit run, streams
flushed). The shim exits with the child's exit status, or is killed by the child's signal.

Run as a script: `python forkserver.py SOCKET`.
"""

from __future__ import annotations

import contextlib
import gc
import importlib
import json
import os
import select
import signal
import socket
import sys
import threading
from pathlib import Path

# The shim runs in an isolated interpreter without site (-IS): standard library only, started in milliseconds.
_SHIM = """\
#!{python} -IS
import json, os, signal, socket, sys
for fd in (0, 1, 2):
    try:
        os.fstat(fd)
    except OSError:
        os.dup2(os.open(os.devnull, os.O_RDWR), fd)
with socket.socket(socket.AF_UNIX) as s:
    s.connect({address!r})
    socket.send_fds(s, [b"\\0"], [0, 1, 2])
    # The environment the installed scorecli would see: without this shim's folder on PATH.
    here = os.path.dirname(os.path.abspath(__file__))
    os.environ["PATH"] = os.pathsep.join(p for p in os.environ.get("PATH", "").split(os.pathsep) if p != here)
    request = {{"argv": [{entry!r}, *sys.argv[1:]], "cwd": os.getcwd(), "env": dict(os.environ)}}
    data = json.dumps(request).encode()
    s.sendall(len(data).to_bytes(8, "big") + data)
    reply = b""
    while not reply.endswith(b"\\n"):  # not the end of the stream: a later child may hold a copy of the socket
        chunk = s.recv(64)
        if not chunk:
            break
        reply += chunk
code = int(reply)
if code < 0:
    if -code not in (signal.SIGKILL, signal.SIGSTOP):
        signal.signal(-code, signal.SIG_DFL)
    os.kill(os.getpid(), -code)
sys.exit(code)
"""


def shim(folder: Path, address: str) -> Path:
    """Write a `scorecli` executable into `folder` that runs each command in a child of the server at `address`."""
    entry = Path(sys.executable).with_name("scorecli")
    path = folder / "scorecli"
    path.write_text(_SHIM.format(python=sys.executable, address=address, entry=str(entry)))
    path.chmod(0o755)
    return path


# What a `scorecli` run imports on its way (pandas for Parquet, pydantic for typer's parameters), besides
# transformers' model and tokenizer classes and scorecli's own modules.
PRELOAD = (
    "pandas",
    "pydantic",
    "transformers",
    "transformers.models.llama.modeling_llama",
    "transformers.models.auto.modeling_auto",
    "transformers.models.auto.tokenization_auto",
    "scorecli.analysis.bootstrap",
    "scorecli.cli",
    "scorecli.analysis.compare",
    "scorecli.engine.scorer",
    "scorecli.analysis.filter",
    "scorecli.engine.models",
    "scorecli.runfolder.outputs",
    "scorecli.analysis.report",
    "scorecli.runfolder.rundocs",
    "scorecli.runner",
    "scorecli.runfolder.runs",
    "scorecli.executors.scaleout",
    "scorecli.executors.session",
    "scorecli.analysis.show",
)


def _preload() -> None:
    """Import what a `scorecli score` with SmolLM2 imports, without running any of it."""
    for name in PRELOAD:
        with contextlib.suppress(ImportError):
            importlib.import_module(name)
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM  # noqa: F401  (lazy classes)


def _read_request(conn: socket.socket) -> tuple[dict, list[int]]:
    """The command a shim sent: its three descriptors, then a JSON request after its length in 8 bytes."""
    _, fds, _, _ = socket.recv_fds(conn, 1, 3)
    data = b""
    while len(data) < 8 or len(data) < 8 + int.from_bytes(data[:8], "big"):
        chunk = conn.recv(1 << 16)
        if not chunk:
            raise EOFError("the shim closed its socket before sending its whole request")
        data += chunk
    return json.loads(data[8:]), fds


def _answer(conn: socket.socket, pid: int) -> None:
    """Tell the shim how the child ended: its exit code, or minus the signal that killed it.

    A shim that ends first (killed by a test's timeout) takes its child with it, as killing the installed
    `scorecli` would: its end of the socket closes, which makes ours readable (it sends nothing more).
    """
    with conn:
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            if select.select([conn], [], [], 0.1)[0]:
                os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(OSError):
            conn.sendall(f"{os.waitstatus_to_exitcode(status)}\n".encode())


def serve(address: str) -> dict | None:
    """Serve until SIGTERM; in a forked child, return its request (after taking on its descriptors and folder)."""
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(address + ".tmp")
    listener.listen(8)
    os.rename(address + ".tmp", address)  # the address appears once the server takes commands
    while True:
        conn, _ = listener.accept()
        request, fds = _read_request(conn)
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            listener.close()
            conn.close()
            for target, fd in enumerate(fds):
                os.dup2(fd, target)
            for fd in fds:
                if fd > 2:
                    os.close(fd)
            return request
        for fd in fds:
            os.close(fd)
        threading.Thread(target=_answer, args=(conn, pid), daemon=True).start()


def main() -> None:
    """Preload, serve; in each child, run the command as `scorecli` would."""
    address = sys.argv[1]
    _preload()
    # Frozen objects are left out of the children's garbage collections, which would otherwise write to (and
    # so copy) every page of the imported modules: seconds of page faults per command.
    gc.freeze()
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    request = serve(address)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    sys.argv = request["argv"]
    sys.path[0] = os.path.dirname(sys.argv[0])  # the entry point's folder, as for the installed script
    from scorecli.__main__ import main as scorecli_main

    scorecli_main()


if __name__ == "__main__":
    main()
