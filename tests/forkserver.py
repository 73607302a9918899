"""A fork server for the `surgeon` jobs of the tests' Snakemake runs: test machinery only.

Every `surgeon` job of a tiny workflow run spends about 7 s of its 8 importing torch and
transformers' model code; the suite runs some 300 of them. `start()` launches one server that
imports all of that once; the tests' runs then find a `surgeon` shim first on PATH (`job_env`),
which hands its argv, working directory, environment, resource limits and stdin/stdout/stderr
to the server. The server forks a watcher, which forks the job: `surgeon.cli.main(argv)` in a
child that starts from the freshly imported state. The shim exits with the job's status (or
dies of its signal); a signal the shim gets (Snakemake stopping a job) is passed to the job,
and a shim killed outright (SIGKILL) takes its job with it: the watcher sees the connection
close. A job whose environment differs from the server's in what is read at import time
(HF_*, TRANSFORMERS_*, CUDA_*, ...) runs as a plain `python -m surgeon` process instead.

The CLI tests that check the real process (exit codes, messages, `python -m surgeon`) keep
starting it themselves; only workflow jobs go through the shim.

This module imports only the standard library at the top: the shim loads it at every job.
"""

from __future__ import annotations

import json
import os
import resource
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

SOCKET_VAR = "SURGEON_FORKSERVER"
# read when a module is imported, not when a job runs: a job that differs runs on its own
IMPORT_TIME = ("HF_", "HUGGINGFACE_", "TRANSFORMERS_", "TOKENIZERS_", "TORCH", "PYTORCH_",
               "CUDA_", "PYTHON", "SURGEON_", "KMP_", "GOMP_")
LIMITS = ("RLIMIT_FSIZE", "RLIMIT_AS", "RLIMIT_DATA", "RLIMIT_NOFILE", "RLIMIT_CPU")


def _import_time_env(env: dict) -> dict:
    return {k: v for k, v in env.items() if k.startswith(IMPORT_TIME) and k != SOCKET_VAR}


def _same_imports(job: dict, before: dict, after: dict) -> bool:
    """Would a fresh process with the job's environment import what the server did? `before`
    and `after` are the server's environment around its imports: a variable the imports set
    themselves (lm_eval's HF_XET_HIGH_PERFORMANCE) may be absent from the job's environment
    or hold the value they set."""
    job, before, after = map(_import_time_env, (job, before, after))
    return all(job.get(k) == before.get(k) or (before.get(k) != after.get(k) and
                                               job.get(k) == after.get(k))
               for k in {*job, *before, *after})


# --- the shim's side -------------------------------------------------------------------------

def client(argv: list[str]) -> None:
    """Run `surgeon argv` in the server; `python -m surgeon argv` when there is none."""
    path = os.environ.get(SOCKET_VAR)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(path or "")
    except OSError:
        _run_alone(argv)
    request = json.dumps({
        "argv": argv, "cwd": os.getcwd(), "env": dict(os.environ), "umask": _umask(),
        "limits": {n: resource.getrlimit(getattr(resource, n)) for n in LIMITS}}).encode()
    socket.send_fds(sock, [len(request).to_bytes(8, "big")], [0, 1, 2])
    sock.sendall(request)
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT):
        signal.signal(sig, lambda n, _frame: sock.send(bytes([n])))
    reply = b""
    while not reply.endswith(b"\n"):
        chunk = sock.recv(64)
        if not chunk:
            sys.stderr.write("surgeon (test fork server): the job's watcher ended unreported\n")
            sys.exit(1)
        reply += chunk
    if reply == b"alone\n":
        _run_alone(argv)
    status = int(reply.split()[1])
    if os.WIFSIGNALED(status):
        signal.signal(os.WTERMSIG(status), signal.SIG_DFL)
        os.kill(os.getpid(), os.WTERMSIG(status))
    sys.exit(os.waitstatus_to_exitcode(status))


def _run_alone(argv):
    os.execv(sys.executable, [sys.executable, "-m", "surgeon", *argv])


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# --- the server's side -----------------------------------------------------------------------

def _preload() -> None:
    """What the jobs import: every surgeon module, and transformers' model classes."""
    import importlib
    import pkgutil

    import lm_eval  # noqa: F401 - the zero-shot jobs' (it sets os.environ entries)
    import lm_eval.models.huggingface  # noqa: F401
    import lm_eval.tasks  # noqa: F401
    import sklearn  # noqa: F401 - sets KMP_DUPLICATE_LIB_OK, as in a test process that has it
    import surgeon
    import transformers

    for module in pkgutil.walk_packages(surgeon.__path__, "surgeon."):
        if not module.name.endswith("__main__"):
            importlib.import_module(module.name)
    for name in ("AutoModelForCausalLM", "AutoTokenizer", "LlamaForCausalLM", "OPTForCausalLM",
                 "GPT2LMHeadModel", "Qwen2ForCausalLM", "Qwen3ForCausalLM", "MistralForCausalLM",
                 "Gemma2ForCausalLM", "Gemma3ForCausalLM", "Phi3ForCausalLM"):
        getattr(transformers, name)


def serve(path: str) -> None:
    before = dict(os.environ)
    _preload()
    after = dict(os.environ)
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen(64)
    server.settimeout(1.0)
    parent = os.getppid()
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # watchers are reaped by the kernel
    print("ready", flush=True)
    while os.getppid() == parent:  # the test session is gone: so is the server
        try:
            conn, _ = server.accept()
        except TimeoutError:
            continue
        if os.fork() == 0:
            try:  # whatever happens, this child never returns to the accept loop
                server.close()
                _watch(conn, before, after)
            finally:
                os._exit(1)
        conn.close()


def _watch(conn: socket.socket, before: dict, after: dict) -> None:
    """The watcher: start the job, pass it the shim's signals, report how it ended."""
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    conn.settimeout(None)
    header, fds, _, _ = socket.recv_fds(conn, 8, 3)
    size, request = int.from_bytes(header, "big"), b""
    while len(request) < size:
        chunk = conn.recv(size - len(request))
        if not chunk:  # the shim went away before it had asked
            os._exit(0)
        request += chunk
    request = json.loads(request)
    if not _same_imports(request["env"], before, after):
        conn.sendall(b"alone\n")
        os._exit(0)
    job = os.fork()
    if job == 0:
        try:
            conn.close()
            _job(request, fds)
        finally:  # a failure before surgeon's main: printed on the shim's stderr
            import traceback

            traceback.print_exc()
            os._exit(1)
    for fd in fds:
        os.close(fd)

    def relay():
        while data := conn.recv(16):
            for signum in data:
                os.kill(job, signum)
        os.kill(job, signal.SIGKILL)  # the shim died: so does its job

    threading.Thread(target=relay, daemon=True).start()
    _, status = os.waitpid(job, 0)
    try:
        conn.sendall(f"status {status}\n".encode())
    finally:
        os._exit(0)


def _job(request: dict, fds: list[int]) -> None:
    """The job: the shim's stdio, directory, environment and limits, then surgeon's main."""
    import atexit
    import traceback

    for target, fd in enumerate(fds):
        os.dup2(fd, target)
        os.close(fd)
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    os.umask(request["umask"])
    for name, (soft, hard) in request["limits"].items():
        try:
            resource.setrlimit(getattr(resource, name), (soft, hard))
        except (ValueError, OSError):
            pass  # a hard limit above the server's: the job keeps the server's (stricter)
    for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT):
        signal.signal(sig, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    threads = os.environ.get("OMP_NUM_THREADS", "")
    if threads.isdigit() and int(threads) > 0:  # what OpenMP would have read at start
        import torch

        torch.set_num_threads(int(threads))
    from surgeon.cli import main

    sys.argv = ["surgeon", *request["argv"]]
    try:
        code = main(request["argv"])
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else (exit_.code is not None)
        if isinstance(exit_.code, str):
            print(exit_.code, file=sys.stderr)
    except KeyboardInterrupt:  # the interpreter prints it, then dies of SIGINT
        traceback.print_exc()
        sys.stderr.flush()
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGINT)
    except BaseException:  # noqa: BLE001 - what the interpreter would print, then exit 1
        traceback.print_exc()
        code = 1
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)


# --- the tests' side -------------------------------------------------------------------------

_SERVER: dict = {}


def start(workdir: Path, env: dict) -> dict:
    """Start the server (once per test session) and write the shim; the PATH and socket
    variable a run's environment needs. Nothing when SURGEON_TEST_FORKSERVER=0."""
    if os.environ.get("SURGEON_TEST_FORKSERVER", "1") == "0":
        return {}
    if not _SERVER:
        workdir.mkdir(parents=True, exist_ok=True)
        sock, shim = workdir / "server.sock", workdir / "bin" / "surgeon"
        shim.parent.mkdir(exist_ok=True)
        shim.write_text(f"#!{sys.executable} -S\nimport sys\n"
                        f"sys.path.insert(0, {str(Path(__file__).parent)!r})\n"
                        "import forkserver\nforkserver.client(sys.argv[1:])\n")
        shim.chmod(0o755)
        sock.unlink(missing_ok=True)
        proc = subprocess.Popen([sys.executable, __file__, "serve", str(sock)], env=env,
                                stdout=subprocess.PIPE, text=True)
        if proc.stdout.readline().strip() != "ready":
            raise RuntimeError("the test fork server did not start")
        _SERVER.update(proc=proc, vars={SOCKET_VAR: str(sock), "bin": str(shim.parent)})
    return _SERVER["vars"]


def stop() -> None:
    if _SERVER:
        _SERVER["proc"].kill()
        _SERVER["proc"].wait()
        _SERVER.clear()


if __name__ == "__main__" and sys.argv[1:2] == ["serve"]:
    serve(sys.argv[2])
