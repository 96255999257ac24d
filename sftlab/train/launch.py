"""What `sftlab train --nproc N` runs: torchrun (torch.distributed.run) itself, but a SIGTERM or Ctrl-C ends
it with one line and exit 143 / 130 instead of torchrun's SignalException traceback and exit 1, and a failed
worker (a user error it printed in one line) ends it with that worker's exit code and one line instead of torchrun's
ChildFailedError traceback (kept under --debug / SFTLAB_DEBUG=1).

torchrun forwards the signal to the workers, which finish the step, save a checkpoint and exit (see
parallel.install_stop_handlers); torchrun waits for them (30 s, then SIGKILL)."""

from __future__ import annotations

import os
import signal
import sys
from typing import NoReturn


def exec_workers(config: str, overrides: list[str], nproc: int) -> NoReturn:
    """Replace this process with the launcher (`main`, via torchrun's command line) running `sftlab train CONFIG
    OVERRIDES` in `nproc` processes on this node."""
    cmd = [sys.executable, "-m", "sftlab.train.launch", "--standalone", f"--nproc_per_node={nproc}", "-m", "sftlab",
           "train", config, *overrides]
    env = dict(os.environ)
    if "--debug" in sys.argv:  # the CLI removed --debug from the arguments: the workers and launcher get it here
        env["SFTLAB_DEBUG"] = "1"
    os.execve(sys.executable, cmd, env)


def main(argv: list[str] | None = None) -> None:
    """torchrun with one-line endings (see the module docstring)."""
    # lazy: torch; `exec_workers` runs in the CLI process, which must not import it
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import main as torchrun_main

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
        if "--debug" in (argv if argv is not None else sys.argv) or os.environ.get("SFTLAB_DEBUG") == "1":
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
