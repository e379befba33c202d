"""The application layer: the ``workbench`` console script and the demo. It may import every other layer;
nothing imports it (``make lint`` checks the import contracts in ``pyproject.toml``)."""
