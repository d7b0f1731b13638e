"""``python -m vlalign.annotate serve ...``: the annotate commands without the rest of the CLI.

The same commands as ``vlalign annotate ...``; the server start (and each restart after a crash) then
imports only what the labelling app needs, not the training stack the other command groups load.
"""

from vlalign.annotate.cli import annotate_app
from vlalign.annotate.cli_admin import register_admin

register_admin(annotate_app)
annotate_app(prog_name="python -m vlalign.annotate")
