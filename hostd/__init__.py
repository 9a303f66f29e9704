"""hostd: the daemon on each hypervisor host.

One task tree per VM owns that VM's QEMU chardev socket; the node API serves
the controller. See README.md for what is built. Implementation modules are
private (``_name.py``); what a program embedding hostd needs is exported here:

| name                                  | what                                              |
| ------------------------------------- | ------------------------------------------------- |
| ``serve``, ``main``                   | run hostd (``serve`` in a trio program)           |
| ``HostdConfig``, ``load_config``      | the configuration, from TOML and flags            |
| ``ConnectionConfig``, ``DiscoveryConfig``, ``VMEntry`` | its parts                        |
| ``ConfigError``                       | an invalid configuration                          |
| ``TOKEN_ENV``, ``CONTROLLER_TOKEN_ENV`` | where tokens may come from besides their files  |
| ``VMRegistry``, ``VMConnection``, ``VMState`` | the VMs and their connections, for an API layer (README.md) |

Two modules are tools run by name and stay public: ``simvm`` (a simulated VM:
``python -m limiquantix.hostd.simvm``) and ``rawguest`` (a hostile guest, for tests
and benchmarks).
"""

from typing import TYPE_CHECKING, Any

from limiquantix.protocol import import_lazily

if TYPE_CHECKING:  # for type checkers and readers; at run time, imported on first use
    from ._config import CONTROLLER_TOKEN_ENV as CONTROLLER_TOKEN_ENV
    from ._config import TOKEN_ENV as TOKEN_ENV
    from ._config import ConfigError as ConfigError
    from ._config import ConnectionConfig as ConnectionConfig
    from ._config import DiscoveryConfig as DiscoveryConfig
    from ._config import HostdConfig as HostdConfig
    from ._config import VMEntry as VMEntry
    from ._config import load_config as load_config
    from ._daemon import main as main
    from ._daemon import serve as serve
    from ._discovery import VMRegistry as VMRegistry
    from ._vmconn import VMConnection as VMConnection
    from ._vmconn import VMState as VMState

#: Where each export lives. Imported when first asked for: importing the package (as the
#: simulated VM and the hostile guest tools do, ``python -m limiquantix.hostd.simvm``)
#: must not pay for the web stack (quart, hypercorn, prometheus_client), ~1 s on a loaded host.
_LAZY = {
    "CONTROLLER_TOKEN_ENV": "._config",
    "TOKEN_ENV": "._config",
    "ConfigError": "._config",
    "ConnectionConfig": "._config",
    "DiscoveryConfig": "._config",
    "HostdConfig": "._config",
    "VMEntry": "._config",
    "load_config": "._config",
    "main": "._daemon",
    "serve": "._daemon",
    "VMRegistry": "._discovery",
    "VMConnection": "._vmconn",
    "VMState": "._vmconn",
}

__all__ = [
    "CONTROLLER_TOKEN_ENV",
    "TOKEN_ENV",
    "ConfigError",
    "ConnectionConfig",
    "DiscoveryConfig",
    "HostdConfig",
    "VMConnection",
    "VMEntry",
    "VMRegistry",
    "VMState",
    "load_config",
    "main",
    "serve",
]


def __getattr__(name: str) -> Any:
    return import_lazily(__name__, _LAZY, name)
