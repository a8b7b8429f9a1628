"""``python -m mmf_stream.cli``: the ``mmf-stream`` command."""

import sys

from mmf_stream.cli import main

sys.exit(main())
