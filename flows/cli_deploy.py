"""``mergeops deploy``: the flows as deployments on a Prefect server's work pool (flows/deploy.py)."""

from __future__ import annotations

import click

from flows.cli_options import cron_option


@click.command("deploy")
@click.option("--pool", required=True, help="The process work pool your workers poll.")
@click.option("--name", default="mergeops", show_default=True, help="Deployment name (FLOW/NAME).")
@cron_option("The watch deployment's schedule.")
def deploy(pool: str, name: str, cron: str) -> None:
    """Deploy the pipeline, watch and evolve flows to the Prefect work pool POOL.

    Run it in the project (beside mergeops.yaml) with PREFECT_API_URL set. Flow runs start in the
    project folder and read mergeops.yaml there, as `mergeops run` does; credentials come from each
    worker's environment. The watch deployment runs on CRON and on `mergeops.parent.updated`
    events. A run whose worker dies is marked Crashed once its heartbeats stop.

    \b
    Example:
      prefect work-pool create merges --type process
      mergeops deploy --pool merges
      prefect worker start --pool merges      # on each machine that shares the project folder
      prefect deployment run merge-pipeline/mergeops --param recipe_path=recipes/demo.yaml
    """
    from flows.deploy import deploy as run_deploy
    from flows.deploy import not_carried, project_root
    from flows.settings import get_settings

    settings = get_settings().check_servers()
    deployed = run_deploy(settings, pool, name=name, cron=cron)
    for d in deployed:
        click.echo(f"{d.name} on pool {pool}" + (f" (schedule: {d.schedule})" if d.schedule else ""))
    click.echo(f"runs start in {project_root(settings)} and read "
               f"{settings.config_file or 'no mergeops.yaml (embedded defaults)'}")
    if not_carried():
        click.echo(f"note: {', '.join(not_carried())} set here, not carried: runs read mergeops.yaml and their "
                   "worker's environment", err=True)
    click.echo(f"next: prefect worker start --pool {pool}")
