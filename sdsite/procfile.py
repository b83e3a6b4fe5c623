"""`make run`'s supervisor: honcho, waiting out the worker's grace before it kills.

honcho stops every process of the Procfile when one ends or on Ctrl-C, and
SIGKILLs whatever still runs 5 s later (`honcho.manager.KILL_WAIT`, which it
offers no option for). The worker promises its current job SD_WORKER_GRACE
seconds (30) to finish before it gives the job back to the queue, so here
honcho waits that long, plus a margin for the release, before it kills.

    python -m sdsite.procfile start -f Procfile
"""

import os

import honcho.manager
from honcho.command import main

RELEASE_MARGIN = 10.0
"""Seconds past the grace for the worker to give its job back and exit."""


def run(argv=None) -> None:
    honcho.manager.KILL_WAIT = float(os.environ.get("SD_WORKER_GRACE") or 30) + RELEASE_MARGIN
    main(argv)


if __name__ == "__main__":
    run()
