"""Run the reward HTTP endpoint: `python -m reward_services.serve --config configs/reward_server.yaml`.

The config (reward_services.http_app.ServerConfig, unknown keys refused) is validated, its critic
names checked against the registry (after importing `extra_critic_modules`) and its auth token
source read once BEFORE Ray starts, so a typo fails here with the field's path, not in a replica log.

Without `--address` (and no RAY_ADDRESS) a private Ray instance is started on 127.0.0.1 and shut
down on exit; with one, the app is deployed on that cluster and deleted on exit unless
`--detach`. The HTTP proxy binds `host:port` from the config (127.0.0.1 by default). Serve has one
HTTP proxy configuration per cluster: if Serve already runs there with another host or port, that
one stays in effect (Serve logs a warning) and the URL printed here is wrong for it.

`--check` validates the config and exits without starting anything.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
from pathlib import Path

import yaml
from pydantic import ValidationError

from reward_services.http_app import ServerConfig, import_critic_modules, resolve_token


class ServerConfigError(ValueError):
    """A server config that failed validation; the message names each bad field by dotted path."""


def parse_server_config(data: dict) -> ServerConfig:
    try:
        return ServerConfig.model_validate(data or {})
    except ValidationError as err:
        lines = [
            f"  {'.'.join(str(p) for p in item['loc']) or '<root>'}: {item['msg']} (got {item.get('input')!r})"
            for item in err.errors()
        ]
        raise ServerConfigError("invalid server config:\n" + "\n".join(lines)) from None


def load_server_config(path: str | Path) -> ServerConfig:
    return parse_server_config(yaml.safe_load(Path(path).read_text()) or {})


def check_server_config(config: ServerConfig) -> None:
    """What can fail in a replica, checked here: critic names and the auth token source."""
    from reward_services.base import available_critics

    try:
        import_critic_modules(config.extra_critic_modules)
    except ImportError as err:
        raise ServerConfigError(f"extra_critic_modules: {err}") from None
    known = available_critics()
    for index, spec in enumerate(config.critics):
        if spec.name not in known:
            raise ServerConfigError(f"critics[{index}].name: unknown critic {spec.name!r}; registered: {known}")
    try:
        resolve_token(config.auth)
    except ValueError as err:
        raise ServerConfigError(str(err)) from None


def start_server(config: ServerConfig) -> str:
    """Deploy the app on the connected Ray cluster and wait until it serves; returns its base URL."""
    from ray import serve

    from reward_services.http_app import reward_app

    serve.start(http_options={"host": config.host, "port": config.port})
    serve.run(reward_app(config), name=config.app_name, route_prefix=config.route_prefix)
    prefix = "" if config.route_prefix == "/" else config.route_prefix
    return f"http://{config.host}:{config.port}{prefix}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="server YAML (see configs/reward_server.yaml)")
    parser.add_argument("--address", default=os.environ.get("RAY_ADDRESS"), help="Ray cluster to deploy on")
    parser.add_argument("--detach", action="store_true", help="with --address: leave the app running on exit")
    parser.add_argument("--check", action="store_true", help="validate the config and exit")
    args = parser.parse_args(argv)

    try:
        config = load_server_config(args.config)
        check_server_config(config)
    except (ServerConfigError, OSError, yaml.YAMLError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.check:
        print(f"config OK: {args.config}")
        return 0

    import ray
    from ray import serve

    if args.address:
        ray.init(address=args.address)
    else:
        ray.init(address="local", _node_ip_address="127.0.0.1", include_dashboard=False)
    url = start_server(config)
    print(json.dumps({"url": url, "docs": f"{url}/docs", "app": config.app_name}), flush=True)
    if args.address and args.detach:
        return 0

    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    stop.wait()
    if args.address:
        serve.delete(config.app_name)
    else:
        serve.shutdown()
        ray.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
