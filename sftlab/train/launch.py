"""What `sftlab train --nproc N` runs: torchrun (torch.distributed.run) itself, but a SIGTERM or Ctrl-C ends
it with one line and exit 143 / 130 instead of torchrun's SignalException traceback and exit 1, and a failed
worker (a user error it printed in one line) ends it with that worker's exit code and one line instead of torchrun's
ChildFailedError traceback (kept under --debug / SFTLAB_DEBUG=1).

torchrun forwards the signal to the workers, which finish the step, save a checkpoint and exit (see
parallel.install_stop_handlers); torchrun waits for them (30 s, then SIGKILL).

A user error that several workers hit (a run dir that is not empty, a setting every rank checks) is printed once:
the first worker to report a message claims it in a directory the launcher creates (`first_to_report`); the others
exit with the same code, quietly. A worker whose error differs still prints its own."""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import signal
import sys
import tempfile
from pathlib import Path
from typing import NoReturn

ERRORS_DIR = "SFTLAB_RANK_ERRORS"  # env: where the workers of one launch claim the error lines they print


def exec_workers(config: str, overrides: list[str], nproc: int) -> NoReturn:
    """Replace this process with the launcher (`main`, via torchrun's command line) running `sftlab train CONFIG
    OVERRIDES` in `nproc` processes on this node."""
    cmd = [sys.executable, "-m", "sftlab.train.launch", "--standalone", f"--nproc_per_node={nproc}", "-m", "sftlab",
           "train", config, *overrides]
    env = dict(os.environ)
    if "--debug" in sys.argv:  # the CLI removed --debug from the arguments: the workers and launcher get it here
        env["SFTLAB_DEBUG"] = "1"
    env[ERRORS_DIR] = tempfile.mkdtemp(prefix="sftlab-rank-errors-")  # removed by `main` when torchrun ends
    os.execve(sys.executable, cmd, env)


def first_to_report(message: str) -> bool:
    """Whether this worker prints `message`: False when another worker of the same `--nproc` launch already has
    (each distinct message is claimed once, atomically, by creating a file named after it). True outside such a
    launch, and under --debug (every rank's traceback)."""
    where = os.environ.get(ERRORS_DIR)
    if not where or os.environ.get("SFTLAB_DEBUG") == "1":
        return True
    claim = Path(where) / hashlib.sha256(message.encode("utf-8")).hexdigest()[:32]
    try:
        fd = os.open(claim, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return False
    except OSError:  # the launcher's directory is gone or unwritable: printing twice beats printing nothing
        return True
    os.write(fd, os.environ.get("RANK", "?").encode())
    os.close(fd)
    return True


def main(argv: list[str] | None = None) -> None:
    """torchrun with one-line endings (see the module docstring); the workers' error claims go with it."""
    try:
        _torchrun(argv)
    finally:
        if os.environ.get(ERRORS_DIR):
            shutil.rmtree(os.environ[ERRORS_DIR], ignore_errors=True)


def _torchrun(argv: list[str] | None) -> None:
    debug = "--debug" in (argv if argv is not None else sys.argv) or os.environ.get("SFTLAB_DEBUG") == "1"
    if not debug:  # torchrun's log lines (one per worker it stops, one per failure) say what the line below says
        os.environ.setdefault("LOGLEVEL", "CRITICAL")
    # lazy: torch; `exec_workers` runs in the CLI process, which must not import it
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import main as torchrun_main

    if not debug:
        logging.getLogger("torch.distributed.elastic").setLevel(logging.CRITICAL)
    try:
        torchrun_main(argv)
    except SignalException as e:
        print(f"sftlab: stopped by {signal.Signals(e.sigval).name}; the workers saved a checkpoint "
              "(continue with train.resume=auto)", file=sys.stderr)
        sys.exit(128 + int(e.sigval))
    except ChildFailedError as e:
        codes = {f.exitcode for f in e.failures.values()}
        if len(codes) == 1 and codes <= {130, 143}:  # the workers were signalled directly and stopped cleanly
            code = codes.pop()
            print(f"sftlab: workers stopped by a signal (exit {code}); continue with train.resume=auto",
                  file=sys.stderr)
            sys.exit(code)
        if debug:
            raise
        # the failed worker printed its own one-line error (or traceback under --debug) above; torchrun's
        # ChildFailedError traceback and failure table would bury it
        rank, failure = e.get_first_failure()
        code = failure.exitcode
        how = f"exit {code}" if code > 0 else f"killed by {_signal_name(-code)}"
        print(f"sftlab: rank {rank} failed ({how}); its error is above", file=sys.stderr)
        sys.exit(code if code > 0 else 128 - code)


def _signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


if __name__ == "__main__":
    main()
