"""The feature specification and the code it drives: page-view features (``page``), event-log features (``events``), the raw schema (``schema``). Serving-safe: numpy only."""
