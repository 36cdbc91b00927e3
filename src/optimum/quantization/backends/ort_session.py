"""Session settings a stored ONNX Runtime graph needs, added to the caller's `SessionOptions` without overriding them."""

from __future__ import annotations

import logging

logger = logging.getLogger(__name__)


def with_config_entry(options, key: str, value: str, why: str):
    """`options` (or new SessionOptions) with the session config entry `key` set to `value` where the caller left
    it unset; a value they set is kept. SessionOptions cannot be copied, so the caller's object gains the entry."""
    import onnxruntime

    if options is None:
        options = onnxruntime.SessionOptions()
    try:
        chosen = options.get_session_config_entry(key)
        logger.info("Kept the given SessionOptions' %s=%s; the graph runs best with %s, %s.", key, chosen, value, why)
        return options  # set by the caller: theirs to choose
    except RuntimeError:  # not set
        pass
    options.add_session_config_entry(key, value)
    logger.info("Added %s=%s to the given SessionOptions %s.", key, value, why)
    return options
