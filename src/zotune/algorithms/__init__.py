"""Method packages built from the core engine's parts (one module per paper: pezo, kerzoo, dizo, ...).

Each module registers its component with :func:`zotune.methods.register_component` when imported and
exposes a short alias function; ``zotune/__init__.py`` imports them so ``build_optimizer`` knows them.
"""
