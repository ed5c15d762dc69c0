"""The web console (issue 16): admins and viewers follow every campaign live and admins steer
it, served by the daemon on a listener of its own (``console.listen``).

Importing this package loads nothing heavy: the repository mixes in ``queries`` and the CLI
uses ``passwords`` without the web server.
"""
