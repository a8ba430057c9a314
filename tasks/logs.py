"""The stages' logger."""

from __future__ import annotations

import logging


def get_logger() -> logging.Logger:
    """Steps log to stderr; under the Prefect `pipeline` flow that stream lands in the run log."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    return logging.getLogger("jointdit")
