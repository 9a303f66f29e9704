"""One module per concern; importing this package registers every handler.

| module      | requests                                                    |
| ----------- | ----------------------------------------------------------- |
| core        | hello, info, ping, get_telemetry                            |
| execute     | execute (cancel is answered by the session)                 |
| files       | file_read, file_write, file_stat, list_directory            |
| lifecycle   | shutdown, reset_password                                    |
"""

from . import _core, _execute, _files, _lifecycle  # noqa: F401  (importing registers them)

__all__: list[str] = []
