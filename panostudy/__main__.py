"""``python -m panostudy`` (and ``accelerate launch -m panostudy ...``) runs the ``panostudy`` command."""

from panostudy.cli import main

main()
