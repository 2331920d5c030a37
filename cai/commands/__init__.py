"""CLI command groups; each module defines ``register(app)``. Keep heavy imports inside the
command functions so ``cai --help`` stays fast."""
