"""How the command line turns a fault into one line: nothing else on the terminal, no traceback.

A fault is what the user can mend (``medmeta.errors.fault_line``: a ``MedmetaError``, a full
disk, a read-only home). Prefect logs a failing task or flow with its traceback, and libraries
(Great Expectations) log theirs; on the terminal the command prints the fault's line instead. The
Prefect API's log (the UI) keeps every record. A bug (anything else) still ends in a traceback.
"""

from __future__ import annotations

import logging

from medmeta.errors import MedmetaError, os_fault

def is_fault(error: BaseException | None) -> bool:
    return error is not None and (isinstance(error, MedmetaError) or os_fault(error) is not None)


class HideFaultRecords(logging.Filter):
    """Drops the console records about a fault: the ones that carry it (``exc_info``) and, after
    them, the ones that repeat its text ("Finished in state Failed(... <the fault> ...)") or carry a
    traceback of a disk-full or read-only error in their message (Great Expectations' renderers)."""

    def __init__(self) -> None:
        super().__init__()
        self.fault_texts: list[str] = []

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if is_fault(error):
            self.fault_texts.append(str(os_fault(error) or error))
            return False
        if record.levelno < logging.ERROR:
            return True
        message = record.getMessage()
        if any(text and text in message for text in self.fault_texts):
            return False
        return not _carries_os_fault(message)


def _carries_os_fault(message: str) -> bool:
    from medmeta.errors import DISK_FULL_ERRNOS, READ_ONLY_ERRNOS

    return any(f"[Errno {n}]" in message for n in DISK_FULL_ERRNOS | READ_ONLY_ERRNOS)


def hide_fault_records() -> HideFaultRecords:
    """Put the filter on every console handler of the logging tree (Prefect's and the root's)."""
    found = HideFaultRecords()
    loggers = [logging.getLogger()] + [logging.getLogger(name) for name in list(logging.root.manager.loggerDict)]
    for logger in loggers:
        for handler in getattr(logger, "handlers", []):
            if isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler):
                if found not in handler.filters:
                    handler.addFilter(found)
    return found
