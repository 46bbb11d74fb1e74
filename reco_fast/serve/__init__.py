"""Serving: the compiled ``Model``, recommend, live sessions, hot swap. numpy + cffi only."""
