"""``coldkeep init``: write a commented coldkeep.toml and initialise the repository."""

from __future__ import annotations

import os
from pathlib import Path

import click

from coldkeep import config as config_mod
from coldkeep.cli.context import AppContext, pass_app
from coldkeep.errors import ConfigExists


@click.command()
@click.option(
    "--repo", "repo_url", default="file:///mnt/hdd/coldkeep", show_default=True, help="repository URL"
)
@click.option("--endpoint-url", default="", help="S3-compatible endpoint for an s3:// repository")
@click.option("--password-file", default="", help="encrypt the repository with the passphrase in this file")
@click.option("--owner", default="postgres", show_default=True, help="OS user owning repository files")
@click.option(
    "--pg-dsn", default="host=/var/run/postgresql port=5432 dbname=iccm user=postgres", show_default=True
)
@click.option("--pg-data-dir", default="/var/lib/postgresql/15/main", show_default=True)
@click.option("--pg-bin-dir", default="", help="empty: discover")
@click.option(
    "--postgres/--no-postgres",
    "postgres",
    default=None,
    help="write [postgres] enabled / disabled (default: enabled only if a server answers at --pg-dsn)",
)
@click.option("--no-repo-init", is_flag=True, help="only write the config file")
@pass_app
def init(
    app: AppContext,
    repo_url: str,
    endpoint_url: str,
    password_file: str,
    owner: str,
    pg_dsn: str,
    pg_data_dir: str,
    pg_bin_dir: str,
    postgres: bool | None,
    no_repo_init: bool,
) -> None:
    """Write a commented coldkeep.toml (never overwrites) and create the repository.

    Asks nothing.  [postgres] is enabled only when a PostgreSQL server answers at --pg-dsn (or
    with --postgres), so `coldkeep doctor` right after `init` is green on a machine without one.
    """
    target = Path(app.config_path or os.environ.get(config_mod.ENV_CONFIG) or "coldkeep.toml")
    if target.exists():
        raise ConfigExists(path=str(target))
    notes: list[str] = []
    if postgres is None:
        problem = _server_problem(pg_dsn)
        postgres = problem is None
        if problem is not None:
            notes.append(f"[postgres] written with enabled = false: {problem}; once a server runs, set its dsn "
                         f"and data_dir and enabled = true in {target}")  # fmt: skip
    template = (Path(config_mod.__file__).parent / "templates" / "coldkeep.toml").read_text(encoding="utf-8")
    text = template.format(
        repo_url=repo_url,
        endpoint_url=endpoint_url,
        password_file=password_file,
        owner=owner,
        pg_enabled="true" if postgres else "false",
        pg_dsn=pg_dsn,
        pg_data_dir=pg_data_dir,
        pg_bin_dir=pg_bin_dir,
        os_user=owner,
    )
    cfg = config_mod.parse_text(text, source=str(target))  # a bad --repo etc. fails before writing
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target, "x", encoding="utf-8") as fh:  # "x": refuse to overwrite, even in a race
        fh.write(text)
    app._config = cfg
    result: dict[str, object] = {"config": str(target), "repository": cfg.repository.url,
                                 "postgres_enabled": postgres, "notes": notes}  # fmt: skip
    for note in notes:
        app.out.info(f"note: {note}")
    if not no_repo_init:
        from coldkeep.repository.setup import init_repository

        result["repository_init"] = init_repository(cfg)
    app.out.emit(result, lambda c: c.print(f"wrote {target}; repository {cfg.repository.url} ready"))


def _server_problem(dsn: str) -> str | None:
    """Why no PostgreSQL server answers at ``dsn`` (``None``: one does), within a few seconds."""
    import psycopg

    try:
        with psycopg.connect(dsn, connect_timeout=3):
            return None
    except psycopg.Error as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return f"could not connect to PostgreSQL at {dsn!r} ({first})"
