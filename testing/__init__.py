"""What the tests of every app share: the pytest plugin (`-p testing.plugin`), a
live server, SSE parsing, waiting, the admin's filters, and the emulator as each
backend's upstream.

Nothing here is imported by the application, and none of it ships in its image.
"""
