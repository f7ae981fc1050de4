"""Running a tool's ``main`` in the test process without leaving its logging set-up behind.

detectron2's ``setup_logger`` (called by the tools) sets ``propagate = False`` on the loggers
it configures and caches its calls; left in place, later tests could no longer capture the
plugin's log records (``caplog``)."""

import contextlib
import logging
import sys

from detectron2.utils import logger as d2_logger

LOGGERS = ("detectron2", "fvcore", "panoptic_curriculum", "demo")


@contextlib.contextmanager
def isolated_loggers(names=LOGGERS):
    """Restore the handlers, level and propagation of ``names`` on exit, close the files the
    tool's log handlers opened, and clear ``setup_logger``'s cache."""
    saved = {}
    for name in names:
        lg = logging.getLogger(name)
        saved[name] = (list(lg.handlers), lg.level, lg.propagate)
    try:
        yield
    finally:
        for name, (handlers, level, propagate) in saved.items():
            lg = logging.getLogger(name)
            for h in [h for h in lg.handlers if h not in handlers]:
                lg.removeHandler(h)
                stream = getattr(h, "stream", None)
                if stream is not None and stream not in _console_streams():
                    stream.close()  # the tool's log.txt
            lg.setLevel(level)
            lg.propagate = propagate
        d2_logger.setup_logger.cache_clear()
        d2_logger._cached_log_stream.cache_clear()


def _console_streams():
    return (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__)
