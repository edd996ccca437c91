"""A real Prometheus scraping the platform on this machine: ``python -m chatplane.dev.observe`` (``make observe``).

It scrapes every metrics endpoint of ``make run`` (or of the ports given), evaluates the alert rules kept in the Helm
chart (``deploy/helm/chatplane/rules/*.yaml``) and serves its UI on 127.0.0.1:9090 until Ctrl-C; its data lives in
a temporary folder removed on exit. The observability test starts the same Prometheus against its test platform.
Prometheus is Debian's ``prometheus`` package (``scripts/install_prometheus.sh``; ``make install`` runs it).
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from chatplane.dev import repository
from chatplane.dev.stack import Ports, inference_replicas_setting

CHART = repository() / "deploy" / "helm" / "chatplane"
RULES_DIR = CHART / "rules"
DASHBOARDS_DIR = CHART / "dashboards"
JOB_PREFIX = "chatplane-"  # job names like the Kubernetes Services' (<release>-chatplane-<component>)


def scrape_targets(
    ports: Ports, *, inference_metrics: int | None = None, inference_replicas: int = 1, host: str = "127.0.0.1"
) -> dict[str, str]:
    """Component -> host:port of its metrics endpoint (path /metrics; each on a port of its own). Inference replicas
    after the first are components of their own (``inference-1``, ...)."""
    targets = {
        "gateway": f"{host}:{ports.gateway_metrics}",
        "auth": f"{host}:{ports.auth_metrics}",
        "usage": f"{host}:{ports.usage_metrics}",
        "conversation": f"{host}:{ports.conversation_metrics}",
        "worker": f"{host}:{ports.worker_metrics}",
        "inference": f"{host}:{inference_metrics if inference_metrics is not None else ports.inference_metrics}",
    }
    for i in range(1, inference_replicas):
        targets[f"inference-{i}"] = f"{host}:{ports.inference_replica(i)[1]}"
    return targets


def rule_files(rules_dir: Path = RULES_DIR) -> list[Path]:
    return sorted(rules_dir.glob("*.yaml"))


def prometheus_config(targets: dict[str, str], *, interval: str = "15s", rules: list[Path] | None = None) -> dict:
    """A Prometheus configuration (as a dict; JSON is valid YAML) scraping ``targets`` every ``interval``."""
    return {
        "global": {"scrape_interval": interval, "evaluation_interval": interval, "scrape_timeout": interval},
        "rule_files": [str(p) for p in (rule_files() if rules is None else rules)],
        "scrape_configs": [
            {
                "job_name": f"{JOB_PREFIX}{component}",
                "metrics_path": "/metrics",
                "static_configs": [{"targets": [address], "labels": {"component": component}}],
            }
            for component, address in targets.items()
        ],
    }


def prometheus_binary(name: str = "prometheus") -> str:
    path = shutil.which(name)
    if path is None:
        raise RuntimeError(f"`{name}` is not installed: run scripts/install_prometheus.sh (Debian's prometheus)")
    return path


class Prometheus:
    """A Prometheus server on ``host:port`` with its configuration and data in a temporary folder."""

    def __init__(self, config: dict, port: int, *, host: str = "127.0.0.1", log_path: Path | None = None) -> None:
        self.config = config
        self.address = f"{host}:{port}"
        self.url = f"http://{self.address}"
        self.log_path = log_path
        self._dir: Path | None = None
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        self._dir = Path(tempfile.mkdtemp(prefix="chatplane-prometheus-"))
        config_file = self._dir / "prometheus.yml"
        config_file.write_text(json.dumps(self.config, indent=2))
        out = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL  # noqa: SIM115
        try:
            self.proc = subprocess.Popen(  # noqa: S603
                [
                    prometheus_binary(),
                    f"--config.file={config_file}",
                    f"--storage.tsdb.path={self._dir / 'data'}",
                    f"--web.listen-address={self.address}",
                    "--web.enable-lifecycle",
                ],
                stdout=out,
                stderr=subprocess.STDOUT if self.log_path else None,
                start_new_session=True,
            )
        finally:
            if out is not subprocess.DEVNULL:
                out.close()

    def wait_ready(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"prometheus exited with {self.proc.returncode} (log: {self.log_path})")
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as resp:  # noqa: S310 - loopback
                    if resp.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.3)
        raise TimeoutError(f"prometheus not ready on {self.address} after {timeout:.0f}s")

    def api(self, path: str, **params: str) -> Any:
        url = f"{self.url}/api/v1/{path}?{urllib.parse.urlencode(params)}"
        with urllib.request.urlopen(url, timeout=30) as resp:  # noqa: S310 - loopback only
            body = json.loads(resp.read())
        if body.get("status") != "success":
            raise RuntimeError(f"{path} {params}: {body}")
        return body["data"]

    def query(self, expr: str) -> list[dict]:
        """An instant query's result (a vector's samples, or [] when nothing matched)."""
        data = self.api("query", query=expr)
        result = data["result"]
        return result if data["resultType"] in ("vector", "matrix") else [{"value": result}]

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Prometheus scraping `make run` on this machine (Ctrl-C stops it).")
    parser.add_argument("--port", type=int, default=9090, help="Prometheus' own port (UI and API)")
    parser.add_argument("--gateway-port", type=int, default=Ports.gateway)
    parser.add_argument("--interval", default="5s", help="scrape and rule evaluation interval")
    args = parser.parse_args(argv)

    targets = scrape_targets(Ports(gateway=args.gateway_port), inference_replicas=inference_replicas_setting())
    prom = Prometheus(prometheus_config(targets, interval=args.interval), args.port)
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    try:
        prom.start()
        prom.wait_ready()
        print(f"Prometheus is scraping {', '.join(f'{k} {v}' for k, v in targets.items())}")
        print(f"open {prom.url} (targets: {prom.url}/targets, alerts: {prom.url}/alerts); Ctrl-C stops it")
        print(f"dashboards to import into a Grafana of your own: {DASHBOARDS_DIR}/*.json", flush=True)
        while prom.proc is not None and prom.proc.poll() is None:
            time.sleep(1)
        print("prometheus exited", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    except (RuntimeError, TimeoutError) as exc:
        print(f"observe: {exc}", file=sys.stderr)
        return 1
    finally:
        prom.stop()


if __name__ == "__main__":
    sys.exit(main())
