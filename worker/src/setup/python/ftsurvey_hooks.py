"""Installed by ftsurvey in every venv it makes, and loaded at interpreter start by
ftsurvey_hooks.pth when FTSURVEY_DUMP_SIGNAL is set (only under ftsurvey's supervision).

Points faulthandler at a duplicate of the real stderr, taken before any test harness captures
fd 2, so a crash's stack reaches ftsurvey even while pytest captures output; and registers the
dump signal, so a stalled process prints every thread's stack when ftsurvey asks.
"""

import faulthandler
import os


def install():
    try:
        number = int(os.environ.get("FTSURVEY_DUMP_SIGNAL") or 0)
        stream = open(os.dup(2), "w", closefd=True)
    except (OSError, ValueError):
        return
    faulthandler.enable(file=stream, all_threads=True)
    if number and hasattr(faulthandler, "register"):
        faulthandler.register(number, file=stream, all_threads=True, chain=False)
