"""One module per concern; importing this package registers every handler.

| module            | requests                                                |
| ----------------- | ------------------------------------------------------- |
| _core             | hello, info, ping, get_telemetry                        |
| _execute          | execute (cancel is answered by the session)             |
| _paths            | the file access policy the four file requests share     |
| _file_read        | file_read                                               |
| _file_write       | file_write (transfers)                                  |
| _file_stat        | file_stat                                               |
| _list_directory   | list_directory                                          |
| _lifecycle        | shutdown, reset_password                                |
"""

# Imported for their registrations (each module's @handler), not for names.
from . import _core, _execute, _file_read, _file_stat, _file_write, _lifecycle, _list_directory  # noqa: F401

__all__: list[str] = []
