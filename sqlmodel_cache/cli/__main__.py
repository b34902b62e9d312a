"""``python -m sqlmodel_cache.cli``: the same as the ``sqlmodel-cache`` command."""

from sqlmodel_cache.cli import main

raise SystemExit(main())
