"""Bastion's node: its assembly, the Litestar app, its config, tenancy and the ``bastion`` CLI.

``node.assembly.build_node`` puts the services together (engines, audit log,
router, stores); ``node.app.create_app(node)`` is the HTTP layer over them
(``node.controllers``). Layer: the composition root. ``node`` may import every other package of ours
(``serving``, ``router``, ``audit``); nothing of ours imports ``node``.
"""
