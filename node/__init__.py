"""Bastion's node: the Litestar app, its config, tenancy and the ``bastion`` CLI.

Layer: the composition root. ``node`` may import every other package of ours
(``serving``, ``router``, ``audit``); nothing of ours imports ``node``.
"""
