"""Local serving: pinned models, the in-process vLLM engine, GPU telemetry.

Layer: may import ``audit`` types only where needed, never ``node``. Holds the
shared error taxonomy (``serving.errors``) and the provider interface
(``serving.protocol``) that ``router`` builds on.
"""
