"""Routing: residency-safe policy, external providers, breakers, budgets, redaction.

Layer: may import ``serving`` (the provider interface and errors); never ``node``.
"""
