"""Weights that are not in the cache and cannot be downloaded: found out at once, said in one line.

The policy of every command (``demo --variant``, ``train``, ``evaluate``, ``predict``, ``benchmark``)
and of the loaders: weights in the cache load without the network; missing ones are downloaded;
when that cannot happen (the hub is switched off with ``HF_HUB_OFFLINE=1``, or the host does not
answer within a few seconds) loading stops *before* any download attempt or retry, with
:func:`unavailable`'s one line: what is missing, why, and the two ways to the offline tiny model
(``--variant tiny`` or ``TIPSOMALY_OFFLINE=1``; its numbers are meaningless). Nothing falls back to
the tiny model silently.

    reason = network_problem("huggingface.co")   # None when the host answers
    if reason: raise unavailable("TIPS l14-hr", reason, "or fetch them with a network first: tipsomaly fetch l14-hr")
"""

from __future__ import annotations

import os
import socket
import sys
import threading
import urllib.parse
import urllib.request

from tipsomaly_lite.io.download import DownloadError

__all__ = ["HUB_HOST", "PROBE_SECONDS", "OFFLINE_HINT", "network_problem", "url_problem", "unavailable"]

#: The HuggingFace hub (CLIP, SigLIP2 and TIPS v2 in transformers layout).
HUB_HOST = "huggingface.co"
#: How long a host may take to accept a connection before it counts as unreachable.
PROBE_SECONDS = 3.0
#: The two ways to the offline tiny model, in every refusal.
OFFLINE_HINT = "for the offline tiny model (meaningless numbers) pass --variant tiny or set TIPSOMALY_OFFLINE=1"
_HUB_SWITCHES = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
_answers: dict[tuple[str, int], str | None] = {}


def _switched_on(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def _probe(host: str, port: int, timeout: float) -> str | None:
    """None when ``host:port`` accepts a TCP connection within ``timeout`` seconds, else why not.

    The name lookup runs in a helper thread so a resolver that never answers cannot hold us longer.
    """
    outcome: list[str | None] = []

    def connect() -> None:
        try:
            with socket.create_connection((host, port), timeout=timeout):
                outcome.append(None)
        except OSError as err:
            outcome.append(f"{type(err).__name__} {err}")

    worker = threading.Thread(target=connect, daemon=True)
    worker.start()
    worker.join(timeout + 0.5)
    return outcome[0] if outcome else f"no answer within {timeout:g} s"


def network_problem(host: str, port: int = 443) -> str | None:
    """Why ``host`` cannot be reached now (None when it can), asked once per process and host.

    ``HF_HUB_OFFLINE=1`` (or ``TRANSFORMERS_OFFLINE=1``) switches the hub off without asking. Behind an
    HTTPS proxy (``https_proxy``) the proxy is asked instead of the host.
    """
    if host == HUB_HOST:
        for name in _HUB_SWITCHES:
            if _switched_on(name):
                return f"{name}=1 is set"
        hub = sys.modules.get("huggingface_hub.constants")  # switched off after it was imported
        if hub is not None and getattr(hub, "HF_HUB_OFFLINE", False) is True:
            return "HF_HUB_OFFLINE is set"
    proxy = urllib.request.getproxies().get("https")
    if proxy and not urllib.request.proxy_bypass(host):
        parsed = urllib.parse.urlsplit(proxy if "://" in proxy else f"http://{proxy}")
        host, port = parsed.hostname or host, parsed.port or 80
    key = (host, port)
    if key not in _answers:
        problem = _probe(host, port, PROBE_SECONDS)
        where = host if port == 443 else f"{host}:{port}"
        _answers[key] = None if problem is None else f"{where} cannot be reached: {problem}"
    return _answers[key]


def url_problem(url: str) -> str | None:
    """:func:`network_problem` for the host and port of ``url`` (``https://host/...``, ``http://host:port/...``)."""
    parts = urllib.parse.urlsplit(url)
    return network_problem(parts.hostname or "", parts.port or (80 if parts.scheme == "http" else 443))


def unavailable(what: str, reason: str, fetch_hint: str = "") -> DownloadError:
    """The one-line error for weights that are neither cached nor downloadable now.

    Args:
        what: the weights asked for (``"TIPS l14-hr"``, ``"SigLIP2 google/siglip2-so400m-patch16-256"``).
        reason: why they cannot be downloaded (:func:`network_problem`'s answer).
        fetch_hint: the rest of the line, how else to get them (``"or fetch them first: tipsomaly fetch l14-hr"``).
    Returns:
        A :class:`~tipsomaly_lite.io.download.DownloadError` to raise.
    """
    fetch = f"; {fetch_hint}" if fetch_hint else ""
    return DownloadError(f"{what} is not in the cache and cannot be downloaded ({reason}); {OFFLINE_HINT}{fetch}")
