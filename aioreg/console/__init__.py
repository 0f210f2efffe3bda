"""The web console: server-rendered pages over the domain layer, under ``/``."""
