"""What `sftlab train --nproc N` runs: torchrun (torch.distributed.run) itself, but a SIGTERM or Ctrl-C ends
it with one line and exit 143 / 130 instead of torchrun's SignalException traceback and exit 1.

torchrun forwards the signal to the workers, which finish the step, save a checkpoint and exit (see
parallel.install_stop_handlers); torchrun waits for them (30 s, then SIGKILL)."""

from __future__ import annotations

import signal
import sys


def main(argv: list[str] | None = None) -> None:
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
        if codes == {2}:  # every worker stopped on a user error and printed its one line: no launcher traceback
            print("sftlab: the workers stopped on the error above (exit 2)", file=sys.stderr)
            sys.exit(2)
        raise


if __name__ == "__main__":
    main()
