"""``python -m pymooncake`` is the ``pymooncake`` command."""

from .cli import main

raise SystemExit(main())
