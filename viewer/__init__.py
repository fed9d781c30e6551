"""The participant's view: a seam-free equirect renderer, the rating panel, pose logging and backends.

Nothing here imports OpenGL, GLFW or OpenVR at module level; backends import them when opened.
"""
