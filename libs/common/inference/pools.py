"""Which inference pools exist and where their replicas are: ``CHATPLANE_INFERENCE_POOLS``, parsed.

A pool is the set of replicas serving one model. The setting is either one target (one pool; its model is learned
from its replicas) or a JSON list of pools::

    [{"name": "smollm2", "model": "SmolLM2-135M-Instruct", "target": "dns:///inference-smollm2:50053",
      "policy": "affinity", "bound": 1.25}]

Targets: ``host:port[,host:port...]`` (a static list), ``dns:///name:port`` (every address the name resolves to,
re-resolved periodically: a headless Service), ``file:///path`` (``host:port`` lines of a file, read again
periodically: another process keeps the list, as ``make run`` can), ``kubernetes:///service.namespace:port`` (the
Service's EndpointSlices, watched).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from enum import StrEnum


class Policy(StrEnum):
    affinity = "affinity"  # a request's key (conversation, session) sticks to a replica unless it is too busy
    least_loaded = "least_loaded"
    round_robin = "round_robin"


class Discovery(StrEnum):
    static = "static"
    dns = "dns"
    file = "file"
    kubernetes = "kubernetes"


@dataclass(frozen=True)
class Target:
    discovery: Discovery
    addresses: tuple[str, ...] = ()  # static
    host: str = ""  # dns: the name; kubernetes: the Service's name; file: the path
    namespace: str = ""  # kubernetes
    port: int = 0

    def __str__(self) -> str:
        if self.discovery is Discovery.static:
            return ",".join(self.addresses)
        if self.discovery is Discovery.dns:
            return f"dns:///{self.host}:{self.port}"
        if self.discovery is Discovery.file:
            return f"file://{self.host}"
        return f"kubernetes:///{self.host}.{self.namespace}:{self.port}"


@dataclass(frozen=True)
class PoolSpec:
    name: str
    target: Target
    model: str = ""  # empty: learned from the replicas (ListModels)
    policy: Policy = Policy.affinity
    bound: float = 1.25  # affinity: a replica at ceil(bound x the mean load) is passed over (1: strictly balanced)


def _host_port(text: str, what: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{what}: expected host:port, got {text!r}")
    return host.strip("[]"), int(port)


def parse_target(text: str) -> Target:
    text = text.strip()
    if text.startswith("dns:///"):
        host, port = _host_port(text.removeprefix("dns:///"), "dns target")
        return Target(Discovery.dns, host=host, port=port)
    if text.startswith(("kubernetes:///", "k8s:///")):
        rest = text.split(":///", 1)[1]
        name, port = _host_port(rest, "kubernetes target")
        service, _, namespace = name.partition(".")
        if not service or not namespace:
            raise ValueError(f"kubernetes target: expected kubernetes:///service.namespace:port, got {text!r}")
        return Target(Discovery.kubernetes, host=service, namespace=namespace.split(".", 1)[0], port=port)
    if text.startswith("file://"):
        path = text.removeprefix("file://")
        if not path.startswith("/"):
            raise ValueError(f"file target: expected file:///absolute/path, got {text!r}")
        return Target(Discovery.file, host=path)
    if "://" in text:
        raise ValueError(f"unknown target scheme in {text!r} (host:port, dns:///, file:///, kubernetes:///)")
    addresses = tuple(a.strip() for a in text.split(",") if a.strip())
    if not addresses:
        raise ValueError("an inference target is empty")
    for address in addresses:
        _host_port(address, "inference target")
    return Target(Discovery.static, addresses=addresses)


def parse_pools(text: str) -> list[PoolSpec]:
    """The pools of ``CHATPLANE_INFERENCE_POOLS`` (ValueError naming what is wrong)."""
    text = text.strip()
    if not text:
        raise ValueError("CHATPLANE_INFERENCE_POOLS is empty")
    if not text.startswith("["):
        return [PoolSpec(name="default", target=parse_target(text))]
    try:
        items = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"CHATPLANE_INFERENCE_POOLS is not valid JSON: {e}") from None
    if not isinstance(items, list) or not items:
        raise ValueError("CHATPLANE_INFERENCE_POOLS must be a non-empty list of pools")
    pools: list[PoolSpec] = []
    for i, item in enumerate(items):
        if not isinstance(item, dict) or not isinstance(item.get("target"), str):
            raise ValueError(f"CHATPLANE_INFERENCE_POOLS[{i}] needs a target")
        unknown = set(item) - {"name", "model", "target", "policy", "bound"}
        if unknown:
            raise ValueError(f"CHATPLANE_INFERENCE_POOLS[{i}]: unknown keys {sorted(unknown)}")
        try:
            policy = Policy(item.get("policy") or Policy.affinity)
        except ValueError:
            raise ValueError(
                f"CHATPLANE_INFERENCE_POOLS[{i}].policy must be one of {', '.join(p.value for p in Policy)}"
            ) from None
        bound = item.get("bound", 1.25)
        if not isinstance(bound, (int, float)) or not 1.0 <= bound <= 10.0:
            raise ValueError(f"CHATPLANE_INFERENCE_POOLS[{i}].bound must be a number from 1 to 10")
        pools.append(PoolSpec(
            name=str(item.get("name") or f"pool-{i}"),
            target=parse_target(item["target"]),
            model=str(item.get("model") or ""),
            policy=policy,
            bound=float(bound),
        ))
    names = [p.name for p in pools]
    if len(set(names)) != len(names):
        raise ValueError("CHATPLANE_INFERENCE_POOLS: pool names must be unique")
    models = [p.model for p in pools if p.model]
    if len(set(models)) != len(models):
        raise ValueError("CHATPLANE_INFERENCE_POOLS: two pools name the same model")
    return pools
