"""The ``panostudy`` command shell: the CLI and the demo, on top of ``generator``, ``viewer``, ``study`` and ``analysis``."""
