"""hostd's link to the controller: registration, then heartbeats.

With ``controller_url`` set, hostd calls the controller's
``NodeRegistryService.RegisterNode`` at start (its node id, the URL of its
node API, its own bearer token so the controller can call it, and its VM
list), then ``Heartbeat`` every ``heartbeat_interval_s`` with the VM list.
A controller that is down or refuses is retried with capped backoff; hostd
keeps serving meanwhile. Without ``controller_url`` it runs standalone.
"""

from __future__ import annotations

import logging
import ssl
from typing import Final

import trio

from limiquantix.protocol import Backoff, client_ssl_context, errors
from limiquantix.protocol._gen import vm_service_pb2 as api_pb
from limiquantix.protocol.rpc import ClientTLS, RpcClient, Target

from ._api import heartbeat_status, vm_status
from ._config import HostdConfig
from ._discovery import VMRegistry

__all__ = ["controller_link"]

log = logging.getLogger(__name__)

#: First retry delay when the controller is down; doubles up to the interval
#: (capped at REGISTER_BACKOFF_MAX_S), with jitter so that the hosts of a
#: restarted controller do not all come back in the same instant.
REGISTER_BACKOFF_INITIAL_S: Final = 0.5
REGISTER_BACKOFF_MAX_S: Final = 30.0
#: Each retry waits its delay plus up to this share of it at random.
_REGISTER_JITTER: Final = 0.5
#: Time allowed for one RegisterNode or Heartbeat call.
CONTROLLER_CALL_TIMEOUT_S: Final = 10.0
_REGISTRY_SERVICE: Final = "limiquantix.compute.v1.NodeRegistryService"


async def _controller_call(
    client: RpcClient,
    config: HostdConfig,
    controller_token: str,
    method: str,
    request: api_pb.RegisterNodeRequest | api_pb.HeartbeatRequest,
) -> None:
    """One NodeRegistryService call (Connect, proto), within ``CONTROLLER_CALL_TIMEOUT_S``.

    Raises:
        errors.AgentError: the controller's answer, its code kept; ``unavailable`` when
            it cannot be reached, ``deadline_exceeded`` when it does not answer in time.
    """
    target = Target(url=config.controller_url, token=controller_token, name=f"controller {config.controller_url}")
    await client.unary_message(
        target,
        f"{_REGISTRY_SERVICE}/{method}",
        request,
        api_pb.RegisterNodeResponse if method == "RegisterNode" else api_pb.HeartbeatResponse,
        deadline=trio.current_time() + CONTROLLER_CALL_TIMEOUT_S,
    )


async def controller_link(
    config: HostdConfig, registry: VMRegistry, token: str, controller_token: str, advertise_url: str
) -> None:
    """Register with the controller, then heartbeat forever; never raises.

    A controller that is down, or answers an error, is retried with capped,
    jittered exponential backoff. A heartbeat answered ``not_found`` (the
    controller lost or never had this node) registers again.
    """
    # ``Backoff`` draws its jitter below each delay; "d plus up to half of d" is the same
    # draw below 1.5 d: the delays and the cap scaled by 1 + j, the jitter j / (1 + j).
    scale = 1 + _REGISTER_JITTER
    cap = min(max(config.heartbeat_interval_s, REGISTER_BACKOFF_INITIAL_S), REGISTER_BACKOFF_MAX_S)
    backoff = Backoff(REGISTER_BACKOFF_INITIAL_S * scale, cap * scale, jitter=_REGISTER_JITTER / scale)
    registered = False
    failing = False
    # A plain http:// controller is never called through TLS: its client's context trusts no
    # CA (a TLS handshake through it would fail verification, never go unverified) and loads
    # none, where the system's CAs cost ~0.1 s of CPU at every start (as the controller's
    # plain-HTTP node pool; the config checks https:// by the same prefix).
    if config.controller_url.startswith("https://"):
        verify = client_ssl_context(config.controller_tls())
    else:
        verify = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    # No keep-alive: one call every few seconds gains nothing from it.
    tls = ClientTLS(verify=verify)
    async with RpcClient(keepalive=False, tls=tls, insecure=config.controller_insecure) as client:
        while True:
            try:
                vms = [heartbeat_status(vm_status(conn)) for conn in registry.connections()]
                if not registered:
                    await _controller_call(
                        client,
                        config,
                        controller_token,
                        "RegisterNode",
                        api_pb.RegisterNodeRequest(node_id=config.node_id, url=advertise_url, token=token, vms=vms),
                    )
                    registered = True
                    log.info("registered with %s as %s (%s)", config.controller_url, config.node_id, advertise_url)
                else:
                    await _controller_call(
                        client,
                        config,
                        controller_token,
                        "Heartbeat",
                        api_pb.HeartbeatRequest(node_id=config.node_id, vms=vms),
                    )
                if failing:
                    log.info("controller %s reachable again", config.controller_url)
                failing = False
                backoff.reset()
                await trio.sleep(config.heartbeat_interval_s)
                continue
            except errors.NotFound:
                registered = False  # the controller forgot us: register again at once
                continue
            except (errors.AgentError, OSError) as exc:
                # Logged once per outage, not once per retry (a failed TLS handshake says why:
                # the rpc client names it).
                if not failing:
                    log.warning(
                        "controller %s: %s: retrying with backoff",
                        config.controller_url,
                        str(exc) or type(exc).__name__,
                    )
                failing = True
            except Exception:  # never let the link take hostd down
                log.exception("controller link failed: retrying")
                failing = True
            await trio.sleep(backoff.next())
