"""pytest plugin of sqlmodel-cache (registered through the ``pytest11`` entry point)."""
