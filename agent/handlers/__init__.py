"""One module per concern; importing this package registers every handler.

| module      | requests                                                    |
| ----------- | ----------------------------------------------------------- |
| core        | hello, info, ping, get_telemetry                            |
| execute     | execute (cancel is answered by the session)                 |
| files       | file_read, file_write, file_stat, list_directory            |
| lifecycle   | shutdown, reset_password                                    |
"""

from . import core, execute, files, lifecycle

__all__ = ["core", "execute", "files", "lifecycle"]
