"""The ``sqlmodel-cache`` command line: ``demo``, ``stats``, ``inspect``, ``flush``, ``bench``.

A tool on top of the library, apart from it: nothing in the core imports this package.
``_main`` is the argparse front and the rendering, ``_admin`` what the commands do to
Redis, ``_bench`` the measurements, ``_demo`` the demo.
"""

from sqlmodel_cache.cli._main import main

__all__ = ["main"]
