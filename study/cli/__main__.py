"""``python -m study.cli`` (and ``accelerate launch -m study.cli ...``) runs the ``panostudy`` command."""

from study.cli import main

main()
