"""`mergeops serve`: the governance service beside an authenticated MLflow server (registry/service.py)."""

from __future__ import annotations

import logging

import click


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=5080, show_default=True, type=click.IntRange(0, 65535),
              help="Port (0 picks a free one and prints it).")
def serve(host: str, port: int) -> None:
    """Run the governance service: the one writer of governed state on a shared MLflow server.

    It needs the MLflow server (MLFLOW_TRACKING_URI, started with --app-name basic-auth), the
    service account's credentials (MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD), and a
    home for the audit log and signing key (MERGEOPS_HOME; MERGEOPS_SIGNING_KEY names a key kept
    elsewhere). People then set service_url and decide as their signed-in MLflow user.

    \b
    Example:
      MLFLOW_TRACKING_URI=http://mlflow:5000 MLFLOW_TRACKING_USERNAME=mergeops-svc \\
      MLFLOW_TRACKING_PASSWORD=... MERGEOPS_HOME=/srv/mergeops mergeops serve --host 0.0.0.0
    """
    import os

    from flows.settings import get_settings
    from merge.errors import UsageError
    from registry.keys import load_signing_key
    from registry.service import Service, encode_basic, make_server

    s = get_settings()
    if not s.tracking_uri.startswith(("http://", "https://")):
        raise UsageError("the governance service runs beside an MLflow server: set MLFLOW_TRACKING_URI to its URL "
                         "(an embedded store needs no service)")
    s.check_servers()
    user, password = os.environ.get("MLFLOW_TRACKING_USERNAME"), os.environ.get("MLFLOW_TRACKING_PASSWORD")
    if not user or not password:
        raise UsageError("set the service account's MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD")
    key = load_signing_key(s.signing_key_path, create=True)
    service = Service(s.tracking_uri, s.home_dir, key)
    me = service.authenticate(encode_basic(user, password))  # fails fast on wrong credentials
    server = make_server(service, host, port)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    click.echo(f"governance service for {s.tracking_uri} on http://{host}:{server.server_address[1]} as {me.id}; "
               f"audit log {service.log_path}; signing key {key.key_id} (public key: {key.path}.pub)", err=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
